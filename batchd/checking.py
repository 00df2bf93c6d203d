"""Checking the agent's work, a stage of a feature's life (SPEC 14).

After an attempt the agent calls completed: what it changed in git (the
evidence), whether it changed anything at all (``verify.require_change``),
and the check command (the batch's own, else its runner profile's, else
``[verify]``), recorded as ``verifying`` before it starts so that a restart
runs the check again, never the agent. An engine that runs the check itself
(Slurm: inside the job, where the work is) is given it in the ``LaunchSpec``
(``in_run``); its result is judged here the same way (``judged``). And after any failed attempt: the
feedback file the next attempt gets as ``BATCHD_LAST_ERROR_FILE``.

What it must never do: decide what a failure means for the batch (that is
``Batch.record`` and the retry policy), or run anything through a shell.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from batchd import feedback, gitinfo, launch, template, verify
from batchd.attempts import Evidence
from batchd.batch import Batch
from batchd.classify import JobCheck, Verdict, sanitize
from batchd.clock import Clock
from batchd.engines import LaunchSpec, SpawnError
from batchd.live import Slot
from batchd.model import AuditEvent, FailureType, GitEvidence
from batchd.rules import Rules

log = logging.getLogger("batchd")


class CheckHost(Protocol):
    """What the check stage is given (a part of ``feature.Host``)."""

    clock: Clock

    @property
    def rules(self) -> Rules: ...

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool: ...


@dataclass(frozen=True)
class Checked:
    """The attempt's verdict after its check, the evidence, and what to feed back."""

    verdict: Verdict
    evidence: Evidence
    output: bytes | None = None  # the failed check's output, for the feedback file


def check_argv(rules: Rules, batch: Batch) -> list[str]:
    """The batch's own check, over its runner profile's, over ``[verify]``."""
    if batch.state.verify:
        return list(batch.state.verify)
    runner = rules.runner(batch)
    if runner is not None and runner.verify:
        return list(runner.verify)
    return list(rules.cfg.verify.command)


def in_git(cwd: str) -> bool:
    """A cheap look, with no subprocess: is ``cwd`` inside a git work tree (a ``.git``
    file or directory in it or above)?"""
    path = os.path.abspath(cwd)
    while True:
        if os.path.lexists(os.path.join(path, ".git")):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


async def head_before(cwd: str, env: dict[str, str]) -> str | None:
    """The commit the feature's work tree is at before the attempt (None outside git)."""
    return await gitinfo.head(cwd, env=env) if in_git(cwd) else None


def in_run(spec: LaunchSpec, rules: Rules, batch: Batch) -> LaunchSpec:
    """``spec`` for an engine that runs the check itself, inside the run (Slurm, SPEC 14):
    with the check's argv and ``verify.timeout``."""
    argv = tuple(check_argv(rules, batch))
    return replace(spec, check_argv=argv, check_timeout=float(rules.cfg.verify.timeout))


async def after_agent(
    host: CheckHost,
    slot: Slot,
    verdict: Verdict,
    exit_code: int | None,
    in_job: JobCheck | None = None,
) -> Checked:
    """The agent's attempt ended with ``verdict``: gather the evidence, and for a completed
    one decide ``require_change``, then judge by the check the run ran itself (``in_job``,
    a Slurm job's) or run the check here."""
    batch, spec = slot.batch, slot.spec
    attempt = batch.open_attempt(slot.index)
    before = attempt.git.head_before if attempt is not None and attempt.git else None
    git = await gitinfo.evidence(spec.cwd, before, env=spec.env) if in_git(spec.cwd) else None
    if verdict.outcome != "completed":
        return Checked(verdict, Evidence(git=git))
    rules = host.rules
    if rules.cfg.verify.require_change and git is not None and gitinfo.changed_nothing(git):
        failed = _failed(verdict, "permanent", verify.CHANGED_NOTHING)
        return Checked(failed, Evidence(git=git, verified=False))
    if in_job is not None:
        result = verify.from_job(in_job)
        how = "passed" if result.passed else verify.failure_message(result)
        log.info(
            "%s: feature %d: its check ran in the job: %s", batch.batch_id, slot.index + 1, how
        )
        return judged(rules, verdict, git, result)
    argv = check_argv(rules, batch)
    if not argv:
        return Checked(verdict, Evidence(git=git))
    batch.start_verifying(verdict, exit_code, git, host.clock.now(), slot.index)
    host.persist(batch)
    return await run(host, slot, verdict, git, argv)


async def run(
    host: CheckHost, slot: Slot, agent: Verdict, git: GitEvidence | None, argv: list[str]
) -> Checked:
    """Run the check (again, after a restart) and judge the attempt by it. Its argv has the
    runner's placeholders (``{feature}``, ``{index}``...; ``{{`` for a brace), as check-config
    expects of it."""
    spec, cfg = slot.spec, host.rules.cfg
    batch = slot.batch
    values = launch.placeholders(batch, slot.index, batch.attempt_number(slot.index))
    argv = template.render(argv, values)
    log.info(
        "%s: feature %d: checking: %s",
        slot.batch.batch_id,
        slot.index + 1,
        sanitize(" ".join(argv), 200),
    )
    try:
        result = await verify.run_check(
            argv,
            cwd=spec.cwd,
            env=spec.env,
            log_path=spec.log_path,
            timeout=float(cfg.verify.timeout),
            kill_grace=spec.kill_grace,
            max_log_bytes=spec.max_log_bytes,
            on_start=slot.attach_check,
        )
    except SpawnError as e:
        why = f"verify could not start: {e.message}; fix verify.command (or the batch's verify)"
        return Checked(_failed(agent, "permanent", why), Evidence(git=git, verified=False))
    finally:
        slot.attach_check(None)
    if result.stopped:
        stopped = Verdict("interrupted", None, f"interrupted: {slot.stop_reason or 'stopped'}")
        return Checked(stopped, Evidence(git=git))
    return judged(host.rules, agent, git, result)


def judged(
    rules: Rules, agent: Verdict, git: GitEvidence | None, result: verify.CheckResult
) -> Checked:
    """The attempt judged by its check's ``result``: passed, the agent's verdict stands;
    failed, ``verify.failure`` says how (a check cut short by its job's end: transient)."""
    evidence = Evidence(git=git, verify=result.verify_result(), verified=result.passed)
    if result.passed:
        return Checked(agent, evidence)
    how = "transient" if result.cut_short is not None else rules.cfg.verify.failure
    failed = _failed(agent, how, verify.failure_message(result))
    return Checked(failed, evidence, result.output_tail)


def _failed(agent: Verdict, failure_type: str, message: str) -> Verdict:
    """A check that says no: the attempt failed, with what the agent reported kept."""
    ftype: FailureType = "permanent" if failure_type == "permanent" else "transient"
    return Verdict(
        "failed",
        ftype,
        sanitize(message),
        tokens=agent.tokens,
        cost_usd=agent.cost_usd,
        hint_text="",
        tokens_estimated=agent.tokens_estimated,
        session_id=agent.session_id,
    )


def feedback_name(index: int, attempt: int) -> str:
    return f"{index}.{attempt}.last-error"


def write_feedback(
    logs_dir: Path, index: int, attempt: int, message: str, output: bytes | None, stderr: bytes
) -> None:
    """After a failed attempt: the file the next attempt gets (``BATCHD_LAST_ERROR_FILE``).
    A file that cannot be written is logged; the next attempt then goes without it."""
    text = feedback.feedback_text(message, check_output=output, stderr=stderr or None)
    try:
        feedback.write_feedback_file(logs_dir, feedback_name(index, attempt), text)
    except (OSError, ValueError) as e:
        log.warning("feedback: cannot write %s: %s", logs_dir / feedback_name(index, attempt), e)
