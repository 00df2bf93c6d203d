"""One feature's life, top to bottom: hook, start, wait, judge, record, hooks, free the slot.

``run`` is started by the engine's loop for every batch the plan starts;
``follow`` waits for a run that recovery re-attached after a restart. Both
free the slot at the end, whatever happened. A feature's life is handed what
it needs (``Host``: the live state, the clock, the runner engine, durable
records, hooks, the rules of the current configuration) and never reaches
back into the engine. The decisions come from the core: ``Batch.begin`` and
``record`` (what the outcome does), ``classify`` (what it means),
``queue.spawn_trouble`` (what a failed start pauses); the words from
``wording``.

Per feature: one durable write after the start (attempt with pid or job id)
and one after the outcome (the audit first).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path
from typing import Protocol

import anyio

from batchd import attempts, checking, failpoints, queue, waiting, wording, worktreelife
from batchd.attempts import Evidence
from batchd.batch import Batch
from batchd.batchquery import UNCHARGED
from batchd.classify import RawResult, Verdict, hook_failed, retry_hint
from batchd.clock import Clock
from batchd.engines import Run, RunnerEngine, RunRef, SpawnError
from batchd.live import Live, Slot
from batchd.model import AuditEvent, LimitWait, utc_iso
from batchd.rules import Rules
from batchd.transitions import Step
from batchd.worktreeplan import Problem
from batchd.worktreerecord import place

log = logging.getLogger("batchd")


class Host(Protocol):
    """What a feature's life is given by the daemon (the engine implements it)."""

    live: Live
    clock: Clock
    runner: RunnerEngine

    @property
    def rules(self) -> Rules: ...

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool: ...

    def save_queue(self) -> bool: ...

    def consent_for(self, batch: Batch) -> bool: ...

    async def feature_hook(self, name: str, slot: Slot, env: dict[str, str]) -> str | None: ...

    async def batch_hook(self, name: str, batch: Batch) -> None: ...

    async def limit_hook(self, batch: Batch, profile: str, wait: LimitWait) -> None: ...

    def log_path(self, batch: Batch, index: int, attempt: int) -> Path: ...

    def worktree_root(self) -> str: ...


async def run(host: Host, slot: Slot) -> None:
    """Run one feature of a batch: hook, start, wait, record, hooks; free the slot.

    An unexpected error is never fatal to the daemon: it pauses that batch with the
    error as its reason (and is logged with its traceback).
    """
    try:
        await _run(host, slot)
    except Exception as e:
        log.exception("%s: internal error while running a feature", slot.batch.batch_id)
        if not slot.batch.finished:
            _pause_batch(host, slot.batch, f"internal_error: {e!r}; please report it")
    finally:
        _release(host.live, slot)


async def _run(host: Host, slot: Slot) -> None:
    """The body of ``run``: nothing here frees the slot."""
    if slot.batch.state.isolation == "worktree" and not await _in_worktree(host, slot):
        return
    hook_error = await host.feature_hook("before_feature", slot, slot.spec.env)
    if not _still_wanted(host, slot):
        return  # stopped, cancelled or paused while the hook ran
    if hook_error is not None:
        _begin(host, slot, RunRef())
        await _finish(host, slot, hook_failed("before_feature", hook_error), None)
        return
    started = await _start(host, slot)
    if started is not None:
        await _outcome(host, slot, await started.wait())


async def _in_worktree(host: Host, slot: Slot) -> bool:
    """A worktree batch's feature runs in batchd's worktree (SPEC 15): made ready first.
    Git trouble is not the feature's fault: the batch pauses, uncharged, with the reason."""
    try:
        where = await worktreelife.prepare(host, slot)
    except (Problem, OSError) as e:
        why = e.message if isinstance(e, Problem) else str(e)
        if not slot.batch.finished:
            _pause_batch(host, slot.batch, f"worktree: {why}")
        return False
    slot.spec = dataclasses.replace(slot.spec, cwd=where.cwd)
    return _still_wanted(host, slot)


async def follow(host: Host, slot: Slot) -> None:
    """Wait for a run re-attached after a restart (or run its check or its merge again,
    when the restart came during them), then record it as any other."""
    try:
        if slot.remerge:
            verdict, evidence, exit_code = await worktreelife.merge_again(host, slot)
            await _finish(host, slot, verdict, exit_code, ran=True, evidence=evidence)
        elif slot.recheck:
            await _recheck(host, slot)
        else:
            assert slot.run is not None
            await _outcome(host, slot, await slot.run.wait())
    except Exception as e:
        log.exception("%s: internal error while following a feature", slot.batch.batch_id)
        if not slot.batch.finished:
            _pause_batch(host, slot.batch, f"internal_error: {e!r}; please report it")
    finally:
        _release(host.live, slot)


def _release(live: Live, slot: Slot) -> None:
    live.running.pop(slot.key, None)
    slot.done.set()
    live.touch()


def _still_wanted(host: Host, slot: Slot) -> bool:
    batch = slot.batch
    cooldown = host.rules.settings.policy.breaker_cooldown
    return (
        not host.live.stopping
        and slot.stop_reason is None
        and batch.may_start(slot.index, host.clock.now(), cooldown)
    )


def _begin(host: Host, slot: Slot, ref: RunRef, git_head: str | None = None) -> None:
    batch = slot.batch
    where = place(batch.state, slot.index, batch.attempt_number(slot.index))
    batch.begin(
        index=slot.index,
        now=host.clock.now(),
        pid=ref.pid,
        pid_start_time=ref.pid_start_time,
        job_id=ref.job_id,
        run_id=slot.spec.run_id,
        git_head=git_head,
        where=(where.worktree, where.branch) if where is not None else None,
    )
    host.persist(batch)


async def _start(host: Host, slot: Slot) -> Run | None:
    """Start the attempt and record it (with its pid or job id); None when it did not start."""
    batch, spec = slot.batch, slot.spec
    git_head = await checking.head_before(spec.cwd, spec.env)
    try:
        if not spec.log_path.parent.is_dir():  # a batch dir of an older version, or removed
            spec.log_path.parent.mkdir(mode=0o700)
        last = batch.last_attempt.get(slot.index, (0, None))[1]
        if last in UNCHARGED:
            _mark_rerun(spec.log_path, host.clock.now(), last == "limited")
        with anyio.CancelScope(shield=True):  # a run that starts is recorded (a restart waits)
            run = await host.runner.start(spec)
    except SpawnError as e:
        _trouble(host, batch, e)
        return None
    except OSError as e:  # the attempt log cannot be opened (a link, a missing dir)
        _pause_batch(host, batch, f"log_unavailable: cannot open the attempt log: {e}")
        return None
    failpoints.hit("after_spawn")
    slot.run = run
    if batch.finished:  # cancelled (or ended by a skip) while it was being started
        run.stop(slot.stop_reason or "the batch ended")
        await run.wait()
        return None
    _begin(host, slot, run.ref, git_head)
    failpoints.hit("after_attempt_record")
    if slot.stop_reason is not None:
        run.stop(slot.stop_reason)
    where = f"pid {run.ref.pid}" if run.ref.job_id is None else f"job {run.ref.job_id}"
    log.info("%s", wording.started(batch, slot.index, where))
    host.live.touch()
    return run


def _mark_rerun(path: Path, now: float, limited: bool) -> None:
    """An interrupted (or limited) attempt runs again into the same log: a line tells the
    runs apart."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the first run of this attempt
    try:
        if os.fstat(fd).st_size:
            what = "attempt stopped at the usage limit" if limited else "interrupted attempt"
            line = f"\n[batchd: {utc_iso(now)}: the {what} runs again from here]\n"
            os.write(fd, line.encode())
    except OSError:
        pass  # a full disk: the runner's own output reports it (log_write)
    finally:
        os.close(fd)


def _trouble(host: Host, batch: Batch, e: SpawnError) -> None:
    """Trouble that is not the feature's fault pauses the batch or the queue, uncharged."""
    trouble = queue.spawn_trouble(
        e.kind,
        e.message,
        batch_id=batch.batch_id,
        batch_has_cwd=bool(batch.state.cwd),
        config_path=str(host.rules.cfg.paths.config),
    )
    if trouble.scope == "batch":
        _pause_batch(host, batch, trouble.reason)
        return
    queue.pause(host.live.queue, trouble.reason, host.clock.now())
    host.save_queue()
    log.error("queue paused: %s", trouble.reason)
    host.live.touch()


def _pause_batch(host: Host, batch: Batch, reason: str) -> None:
    batch.pause(host.clock.now(), reason)
    host.persist(batch)
    log.error("%s: paused: %s", batch.batch_id, reason)
    host.live.touch()


async def _outcome(host: Host, slot: Slot, raw: RawResult) -> None:
    """The run ended: an interruption is recorded as such, anything else is judged."""
    failpoints.hit("after_runner_exit")
    batch = slot.batch
    _log_health(host, batch, slot.index, raw.log_error)
    if raw.interrupted:
        why = slot.stop_reason or "stopped"
        batch.mark_interrupted(host.clock.now(), f"interrupted: {why}", slot.index)
        _durable(host, slot)
        log.info("%s: feature %d interrupted (%s)", batch.batch_id, slot.index + 1, why)
        await worktreelife.release(host, batch, slot.index)  # a skipped feature's goes
        return
    rules = host.rules
    verdict = rules.classifier.judge(raw, rules.traits_for(batch), now=host.clock.now())
    for note in verdict.notes:
        log.warning("%s: feature %d: %s", batch.batch_id, slot.index + 1, note)
    if verdict.trouble == "agent_login":
        _login_trouble(host, batch, slot.index, verdict)
        return
    checked = await checking.after_agent(host, slot, verdict, raw.exit_code, raw.check)
    await _judged(host, slot, checked, raw.exit_code, raw.stderr_tail)


async def _judged(
    host: Host, slot: Slot, checked: checking.Checked, exit_code: int | None, stderr: bytes
) -> None:
    """The attempt is judged (and checked): a completed feature of a parallel batch is
    merged into the batch branch first (SPEC 15); then the outcome is recorded."""
    verdict = checked.verdict
    if slot.batch.state.parallel and verdict.outcome == "completed":
        verdict = await worktreelife.merge(host, slot, verdict, exit_code, checked.evidence)
    await _finish(
        host,
        slot,
        verdict,
        exit_code,
        ran=True,
        evidence=checked.evidence,
        feedback=(checked.output, stderr),
    )


def _login_trouble(host: Host, batch: Batch, index: int, verdict: Verdict) -> None:
    """The agent is not logged in: nobody's feature failed. The attempt is recorded
    interrupted (uncharged) and the profile's batches pause until the user logs in."""
    profile = batch.state.runner
    reason = waiting.login_pause_reason(verdict, profile)
    batch.mark_interrupted(host.clock.now(), f"interrupted: {reason}", index)
    host.persist(batch)
    log.error("%s: feature %d: %s", batch.batch_id, index + 1, reason)
    waiting.pause_profile(host, profile, reason)


async def _recheck(host: Host, slot: Slot) -> None:
    """The daemon stopped during the check: the agent's completed is on record; run the
    check again (never the agent) and record the attempt by it."""
    attempt = slot.batch.open_attempt(slot.index)
    assert attempt is not None and attempt.phase == "verifying"
    agent = attempts.agent_verdict(attempt)
    argv = checking.check_argv(host.rules, slot.batch)
    if argv:
        checked = await checking.run(host, slot, agent, attempt.git, argv)
    else:  # the check was removed from the configuration meanwhile
        checked = checking.Checked(agent, Evidence(git=attempt.git))
    await _judged(host, slot, checked, attempt.exit_code, b"")


async def _finish(
    host: Host,
    slot: Slot,
    verdict: Verdict,
    exit_code: int | None,
    *,
    ran: bool = False,
    evidence: Evidence | None = None,
    feedback: tuple[bytes | None, bytes] = (None, b""),
) -> None:
    """Record the outcome (audit first), then the hooks it calls for: after_feature
    (when the runner ran), on_breaker_open, on_batch_done. A failed attempt leaves the
    feedback file for the next one first (SPEC 14)."""
    batch, rules = slot.batch, host.rules
    if verdict.outcome in ("failed", "timed_out"):
        checking.write_feedback(
            slot.spec.log_path.parent,
            slot.index,
            batch.attempt_number(slot.index),
            verdict.message or verdict.outcome,
            *feedback,
        )
    attempt = batch.attempt_number(slot.index)
    step = _record(host, slot, verdict, exit_code, evidence)
    probe_end = waiting.probe_end(host, batch, slot.index, verdict)
    failpoints.hit("before_outcome_write")
    _durable(host, slot, step.events + ((probe_end,) if probe_end else ()))
    level, line = wording.outcome_message(batch, slot.index, attempt, verdict, step, rules.settings)
    log.log(level, "%s", line)
    await waiting.after_outcome(host, batch, slot.index, verdict, probe_end is not None)
    if ran:
        env = dict(slot.spec.env, BATCHD_OUTCOME=verdict.outcome)
        await host.feature_hook("after_feature", slot, env)
    await worktreelife.release(host, batch, slot.index)
    if step.breaker_opened:
        await host.batch_hook("on_breaker_open", batch)
    if step.finished:
        await host.batch_hook("on_batch_done", batch)


def _record(
    host: Host, slot: Slot, verdict: Verdict, exit_code: int | None, evidence: Evidence | None
) -> Step:
    """Apply the outcome to the batch, in memory: complete, retry or fail the feature, with
    the wait its failure text asks for and the retry consent as it is now."""
    batch, now = slot.batch, host.clock.now()
    hint = None
    if verdict.outcome != "completed" and verdict.hint_text:
        hint = retry_hint(verdict.hint_text, now)
    return batch.record(
        verdict,
        exit_code=exit_code,
        consent=host.consent_for(batch) if verdict.outcome != "completed" else False,
        hint_s=hint,
        settings=host.rules.settings,
        now=now,
        rand=random.random,
        evidence=evidence,
        index=slot.index,
    )


def _durable(host: Host, slot: Slot, events: tuple[AuditEvent, ...] = ()) -> None:
    """Persist the outcome; once it is on disk, the engine may forget what it kept."""
    if host.persist(slot.batch, events) and slot.run is not None:
        slot.run.recorded()


def _log_health(host: Host, batch: Batch, index: int, error: str | None) -> None:
    """An incomplete attempt log is a problem; a complete one clears that problem."""
    live = host.live
    if error is None:
        if live.has_problem("log_write"):
            log.info("logs: attempt logs are written whole again")
            live.set_problem("log_write", None)
        return
    attempt = batch.attempt_number(index)
    path = host.log_path(batch, index, attempt)
    message = wording.log_incomplete(batch, index, attempt, error, path)
    log.error("logs: %s", message)
    live.set_problem("log_write", message, batch.batch_id)
