"""One feature of a batch, from its slot to its outcome: hook, start, wait, record, hooks.

``run`` is started by the engine's loop for every batch the plan starts;
``follow`` waits for a run that recovery re-attached after a restart. Both
free the slot at the end, whatever happened. The decisions come from the
core: ``Batch.begin``/``record`` (what the outcome does), ``classify`` (what
it means), ``queue.spawn_trouble`` (what a failed start pauses).

Per feature: one durable write after the start (attempt with pid or job id)
and one after the outcome (the audit first).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

from batchd import failpoints, launch, queue, views
from batchd.batch import Batch
from batchd.classify import RawResult, Verdict, hook_failed, retry_hint, sanitize
from batchd.engines import Run, RunRef, SpawnError
from batchd.model import utc_iso

if TYPE_CHECKING:
    from batchd.engine import Engine, Slot

log = logging.getLogger("batchd")


async def run(engine: Engine, slot: Slot) -> None:
    """Run one feature of a batch: hook, start, wait, record, hooks; free the slot.

    An unexpected error is never fatal to the daemon: it pauses that batch with the
    error as its reason (and is logged with its traceback).
    """
    try:
        await _run(engine, slot)
    except Exception as e:
        log.exception("%s: internal error while running a feature", slot.batch.batch_id)
        if not slot.batch.finished:
            _pause_batch(engine, slot.batch, f"internal_error: {e!r}; please report it")
    finally:
        _release(engine, slot)


async def _run(engine: Engine, slot: Slot) -> None:
    """The body of ``run``: nothing here frees the slot."""
    hook_error = await _hook(engine, "before_feature", slot, slot.spec.env)
    if not _still_wanted(engine, slot):
        return  # stopped, cancelled or paused while the hook ran
    if hook_error is not None:
        _begin(engine, slot, RunRef())
        await _finish(engine, slot, hook_failed("before_feature", hook_error), None)
        return
    started = await _start(engine, slot)
    if started is not None:
        await _outcome(engine, slot, await started.wait())


async def follow(engine: Engine, slot: Slot) -> None:
    """Wait for a run re-attached after a restart, then record it as any other."""
    try:
        assert slot.run is not None
        await _outcome(engine, slot, await slot.run.wait())
    finally:
        _release(engine, slot)


def _release(engine: Engine, slot: Slot) -> None:
    engine.running.pop(slot.batch.batch_id, None)
    slot.done.set()
    engine.touch()


def _still_wanted(engine: Engine, slot: Slot) -> bool:
    batch = slot.batch
    now = engine.clock.now()
    cooldown = engine.settings.policy.breaker_cooldown
    return (
        not engine.stopping
        and slot.stop_reason is None
        and batch.state.current_index == slot.index
        and batch.runnable(now, cooldown)
    )


def _begin(engine: Engine, slot: Slot, ref: RunRef) -> None:
    batch = slot.batch
    batch.begin(
        index=slot.index,
        now=engine.clock.now(),
        pid=ref.pid,
        pid_start_time=ref.pid_start_time,
        job_id=ref.job_id,
        run_id=slot.spec.run_id,
    )
    engine.persist(batch)


async def _start(engine: Engine, slot: Slot) -> Run | None:
    batch, spec = slot.batch, slot.spec
    try:
        if not spec.log_path.parent.is_dir():  # a batch dir of an older version, or removed
            spec.log_path.parent.mkdir(mode=0o700)
        if batch.last_attempt.get(slot.index, (0, None))[1] == "interrupted":
            _mark_rerun(spec.log_path, engine.clock.now())
        run = await engine.runner.start(spec)
    except SpawnError as e:
        _trouble(engine, batch, e)
        return None
    except OSError as e:  # the attempt log cannot be opened (a link, a missing dir)
        _pause_batch(engine, batch, f"log_unavailable: cannot open the attempt log: {e}")
        return None
    failpoints.hit("after_spawn")
    slot.run = run
    if batch.finished:  # cancelled (or ended by a skip) while it was being started
        run.stop(slot.stop_reason or "the batch ended")
        await run.wait()
        return None
    _begin(engine, slot, run.ref)
    failpoints.hit("after_attempt_record")
    if slot.stop_reason is not None:
        run.stop(slot.stop_reason)
    s = batch.state
    where = f"pid {run.ref.pid}" if run.ref.job_id is None else f"job {run.ref.job_id}"
    log.info(
        "%s: feature %d/%d attempt %d started (%s): %s",
        batch.batch_id,
        slot.index + 1,
        s.total_features,
        batch.attempt_number(slot.index),
        where,
        sanitize(s.features[slot.index], 200),
    )
    engine.touch()
    return run


def _mark_rerun(path: Path, now: float) -> None:
    """An interrupted attempt runs again into the same log: a line tells the runs apart."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the first run of this attempt
    try:
        if os.fstat(fd).st_size:
            line = f"\n[batchd: {utc_iso(now)}: the interrupted attempt runs again from here]\n"
            os.write(fd, line.encode())
    except OSError:
        pass  # a full disk: the runner's own output reports it (log_write)
    finally:
        os.close(fd)


def _trouble(engine: Engine, batch: Batch, e: SpawnError) -> None:
    """Trouble that is not the feature's fault pauses the batch or the queue, uncharged."""
    trouble = queue.spawn_trouble(
        e.kind,
        e.message,
        batch_id=batch.batch_id,
        batch_has_cwd=bool(batch.state.cwd),
        config_path=str(engine.cfg.paths.config),
    )
    if trouble.scope == "batch":
        _pause_batch(engine, batch, trouble.reason)
        return
    queue.pause(engine.daemon, trouble.reason, engine.clock.now())
    engine.save_queue()
    log.error("queue paused: %s", trouble.reason)
    engine.touch()


def _pause_batch(engine: Engine, batch: Batch, reason: str) -> None:
    batch.pause(engine.clock.now(), reason)
    engine.persist(batch)
    log.error("%s: paused: %s", batch.batch_id, reason)
    engine.touch()


async def _outcome(engine: Engine, slot: Slot, raw: RawResult) -> None:
    failpoints.hit("after_runner_exit")
    batch = slot.batch
    _log_health(engine, batch, slot.index, raw.log_error)
    if raw.interrupted:
        why = slot.stop_reason or "stopped"
        batch.mark_interrupted(engine.clock.now(), f"interrupted: {why}")
        engine.persist(batch)
        log.info("%s: feature %d interrupted (%s)", batch.batch_id, slot.index + 1, why)
        return
    verdict = engine.classifier.judge(raw, engine.cfg.runner.output_format)
    await _finish(engine, slot, verdict, raw.exit_code, ran=True)


async def _finish(
    engine: Engine, slot: Slot, verdict: Verdict, exit_code: int | None, *, ran: bool = False
) -> None:
    """Record the outcome (audit first), then the hooks it calls for: after_feature
    (when the runner ran), on_breaker_open, on_batch_done."""
    batch = slot.batch
    now = engine.clock.now()
    hint = None
    if verdict.outcome != "completed" and verdict.hint_text:
        hint = retry_hint(verdict.hint_text, now)
    attempt = batch.attempt_number(slot.index)
    step = batch.record(
        verdict,
        exit_code=exit_code,
        consent=engine.consent_for(batch) if verdict.outcome != "completed" else False,
        hint_s=hint,
        settings=engine.settings,
        now=now,
        rand=random.random,
    )
    failpoints.hit("before_outcome_write")
    engine.persist(batch, step.events)
    level, line = views.outcome_message(batch, slot.index, attempt, verdict, step, engine.settings)
    log.log(level, "%s", line)
    if ran:
        env = dict(slot.spec.env, BATCHD_OUTCOME=verdict.outcome)
        await _hook(engine, "after_feature", slot, env)
    if step.breaker_opened:
        await _hook(engine, "on_breaker_open", slot, engine.batch_hook_env(batch))
    if step.finished:
        await engine._batch_done(batch)


def _log_health(engine: Engine, batch: Batch, index: int, error: str | None) -> None:
    """An incomplete attempt log is a problem; a complete one clears that problem."""
    if error is None:
        if any(p.kind == "log_write" for p in engine.problems):
            log.info("logs: attempt logs are written whole again")
            engine.set_problem("log_write", None)
        return
    attempt = batch.attempt_number(index)
    path = engine.store.log_path(batch.batch_id, index, attempt)
    message = views.log_incomplete(batch, index, attempt, error, path)
    log.error("logs: %s", message)
    engine.set_problem("log_write", message, batch.batch_id)


async def _hook(engine: Engine, name: str, slot: Slot, env: dict[str, str]) -> str | None:
    batch = slot.batch
    values = launch.placeholders(batch, slot.index, batch.attempt_number(slot.index))
    return await engine.run_hook(name, batch, values, env)
