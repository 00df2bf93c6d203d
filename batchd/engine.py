"""The thin driver: asks the pure core what to do, and carries it out.

The engine owns the daemon's in-memory truth (every ``Batch``, the queue
state, the problems, the running features) and is the only writer of state
(through ``journal``). It decides nothing by itself: ``schedule.plan`` says
which batches start a feature, ``Batch`` says what an outcome or a command
does to a batch, ``policy`` says whether to retry, ``classify`` what an
outcome means, ``queue`` what trouble pauses. The engine starts attempts
through a ``RunnerEngine`` (``engines/``), runs hooks (``hooks``), persists,
and wakes watchers. Commands (``commands``) and views (``views``) work on the
engine's state; recovery after a crash is ``recovery``.

Per feature: one durable write after the start (attempt, pid or job id) and
one after the outcome (plus the audit before it, and ``retry_state.json``
when it changed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc

from batchd import failpoints, queue, schedule
from batchd.batch import PAUSE_COST, Batch, BatchError, Settings
from batchd.classify import Classifier, RawResult, Verdict, hook_failed, retry_hint, sanitize
from batchd.clock import Clock, SystemClock
from batchd.config import Config
from batchd.engines import LaunchSpec, Run, RunnerEngine, RunRef, SpawnError
from batchd.hooks import Hooks
from batchd.journal import Journal
from batchd.model import AuditEvent, DaemonState, UserState
from batchd.policy import RetryPolicy, consent, consent_from_dotenv
from batchd.protocol import E_IO
from batchd.store import Problem, Store
from batchd.systemd import child_env
from batchd.template import render
from batchd.views import log_outcome, status_line

log = logging.getLogger("batchd")

WRITE_RETRY_S = 2.0
Notify = Callable[[str], object]


def settings_from(cfg: Config) -> Settings:
    r, b = cfg.retry, cfg.breaker
    return Settings(
        policy=RetryPolicy(
            max_per_feature=r.max_per_feature,
            max_global=r.max_global,
            backoff_initial=float(r.backoff_initial),
            backoff_multiplier=float(r.backoff_multiplier),
            backoff_max=float(r.backoff_max),
            jitter=r.jitter,
            max_hint_wait=float(r.max_hint_wait),
            breaker_threshold=b.threshold,
            breaker_cooldown=float(b.cooldown),
        ),
        breaker_pauses=b.on_open == "pause",
        max_cost_usd=float(cfg.limits.max_cost_usd),
    )


@dataclass(eq=False)
class Slot:
    """A batch that holds a slot: its feature runs (or its before_feature hook does)."""

    batch: Batch
    index: int
    cwd: str  # after realpath: no other feature runs there meanwhile
    spec: LaunchSpec
    run: Run | None = None
    stop_reason: str | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.run is not None:
            self.run.stop(reason)


class Engine:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        runner: RunnerEngine,
        *,
        backend: str,
        env: Mapping[str, str],
        clock: Clock | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.backend = backend
        self.env = dict(env)
        self.clock: Clock = clock or SystemClock()
        self.notify: Notify = notify or (lambda _line: None)
        self.journal = Journal(store)
        self.hooks = Hooks()
        self.started = self.clock.now()
        self.batches: dict[str, Batch] = {}
        self.daemon = DaemonState()
        self.user = UserState()
        self.problems: list[Problem] = []
        self.running: dict[str, Slot] = {}
        self.stopping = False
        self.version = 0
        self.changed = anyio.Event()
        self._wake = anyio.Event()
        self._stopped = anyio.Event()
        self._done_hooks: list[Batch] = []
        self._cwd_keys: dict[str, str] = {}
        self._dotenv_cache: dict[str, tuple[tuple[int, int], bool | None]] = {}
        self._last_status_line = ""
        self.last_id_us = 0  # of the newest batch id (two in one microsecond stay apart)
        self._tg: anyio.abc.TaskGroup | None = None
        # Set by the daemon: re-read the configuration; None, or why the new one is refused.
        self.reload: Callable[[], str | None] = lambda: "this daemon cannot reload"
        self.state_key = hashlib.sha256(os.path.realpath(store.root).encode()).hexdigest()[:12]
        self.config_file_seen = os.path.lexists(cfg.paths.config)
        self.apply_config(cfg)

    # --- configuration ---------------------------------------------------------------

    def apply_config(self, cfg: Config) -> None:
        """Use ``cfg`` from now on (start, or a good reload)."""
        self.cfg = cfg
        self.settings = settings_from(cfg)
        c = cfg.classify
        self.classifier = Classifier.build(
            c.transient_patterns,
            c.permanent_patterns,
            c.transient_exit_codes,
            allow_permission_denials=cfg.runner.allow_permission_denials,
        )
        self.base_env = child_env(self.env)
        self._cwd_keys.clear()
        now = self.clock.now()
        for batch in self.batches.values():
            if batch.enforce_cost_cap(self.settings, now):
                self._cost_paused(batch)
                self.persist(batch)

    @property
    def slots(self) -> int:
        return self.cfg.queue.slots

    def effective_cwd(self, batch: Batch) -> str:
        """Where the batch's features run: its cwd, else runner.cwd, else home."""
        if batch.state.cwd:
            return batch.state.cwd
        if self.cfg.runner.cwd:
            return os.path.expanduser(self.cfg.runner.cwd)
        return os.path.expanduser("~")

    def cwd_key(self, batch: Batch) -> str:
        """The effective cwd after realpath: two batches with one key never run together."""
        key = self._cwd_keys.get(batch.batch_id)
        if key is None:
            key = self._cwd_keys[batch.batch_id] = os.path.realpath(self.effective_cwd(batch))
        return key

    # --- consent -----------------------------------------------------------------------

    def global_consent(self) -> bool:
        return consent(self.env.get("BATCH_RETRY_ENABLED"), None, self.user.batch_retry_enabled)

    def consent_for(self, batch: Batch) -> bool:
        dotenv = self._dotenv(self.effective_cwd(batch))
        return consent(self.env.get("BATCH_RETRY_ENABLED"), dotenv, self.user.batch_retry_enabled)

    def _dotenv(self, cwd: str) -> bool | None:
        """``BATCH_RETRY_ENABLED`` in ``cwd/.env``, read again only when the file changed."""
        path = os.path.join(cwd, ".env")
        try:
            st = os.stat(path)
        except OSError:
            self._dotenv_cache.pop(cwd, None)
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._dotenv_cache.get(cwd)
        if cached is not None and cached[0] == key:
            return cached[1]
        value: bool | None = None
        if st.st_size <= 1024 * 1024:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    value = consent_from_dotenv(f.read())
            except OSError:
                value = None
        self._dotenv_cache[cwd] = (key, value)
        return value

    # --- persistence and notification ----------------------------------------------------

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool:
        if batch.batch_id not in self.batches:
            return True  # pruned meanwhile
        if self.journal.save(batch, events):
            return True
        self._writes_failing()
        return False

    def require_durable(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> None:
        """Persist for a command: its reply must not claim what is not on disk."""
        if not self.persist(batch, events):
            raise BatchError(
                E_IO,
                f"{batch.batch_id}: the change is made but could not be written yet "
                f"({self.journal.failure}); batchd keeps trying",
            )

    def save_queue(self) -> bool:
        if self.journal.save_queue(self.daemon):
            return True
        self._writes_failing()
        return False

    def _writes_failing(self) -> None:
        self.set_problem("state_write", self.journal.failure)

    def set_problem(self, kind: str, message: str | None, batch_id: str | None = None) -> None:
        """Report (or, with None, clear) the one problem of ``kind``."""
        self.problems = [p for p in self.problems if p.kind != kind]
        if message is not None:
            self.problems.append(Problem(kind, message, batch_id))
        self.touch()

    @property
    def queue_pause_reason(self) -> str | None:
        if self.journal.failure:
            return f"{queue.PAUSE_WRITE}: {self.journal.failure}"
        return self.daemon.pause_reason if self.daemon.queue_paused else None

    def touch(self) -> None:
        """Something changed: wake the loop and the watchers."""
        self.version += 1
        self.changed.set()
        self.changed = anyio.Event()
        self._wake.set()
        self._wake = anyio.Event()

    def poke_spool(self) -> None:
        """Replaced by the daemon: make the spool look again."""

    # --- the loop ----------------------------------------------------------------------

    async def run(self, adopted: list[Slot] | None = None) -> None:
        """Start features as the plan says until ``stop()``; returns with nothing running."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for slot in adopted or []:
                self.running[slot.batch.batch_id] = slot
                tg.start_soon(self._follow, slot)
            while not self.stopping:
                wake = self._wake
                if self.journal.failure:
                    await self._retry_writes()
                    continue
                while self._done_hooks:
                    tg.start_soon(self._batch_done, self._done_hooks.pop(0))
                plan = self._plan()
                for batch_id in plan.start:
                    tg.start_soon(self._feature, self._take_slot(self.batches[batch_id]))
                self.notify_status()
                await self.clock.sleep_until(plan.wake_at, wake)
            for slot in self.running.values():
                slot.stop("daemon stopping")
            self.hooks.stop_all()
        self._tg = None

    def _plan(self) -> schedule.Plan:
        now = self.clock.now()
        cooldown = self.settings.policy.breaker_cooldown
        candidates = []
        for batch in self.batches.values():
            c = batch.candidate(now, cooldown, self.cwd_key(batch)) if not batch.finished else None
            if c is not None:
                candidates.append(c)
        running = {bid: slot.cwd for bid, slot in self.running.items()}
        paused = self.daemon.queue_paused or self.journal.failure is not None
        return schedule.plan(candidates, slots=self.slots, running=running, paused=paused, now=now)

    async def _retry_writes(self) -> None:
        if self.journal.flush(self.batches):
            self.set_problem("state_write", None)
            self.poke_spool()
            return
        await self.clock.sleep_until(self.clock.now() + WRITE_RETRY_S, self._stopped)

    def stop(self) -> None:
        """SIGTERM/SIGINT: start nothing more; interrupt every running feature and hook."""
        self.stopping = True
        for slot in self.running.values():
            slot.stop("daemon stopping")
        self.hooks.stop_all()
        self._stopped.set()
        self._wake.set()

    def notify_status(self) -> None:
        """Tell systemd (STATUS=) what the queue is doing, when that changed."""
        line = status_line(self)
        if line != self._last_status_line:
            self._last_status_line = line
            self.notify(line)

    # --- one feature ----------------------------------------------------------------------

    def _take_slot(self, batch: Batch) -> Slot:
        index = batch.state.current_index
        slot = Slot(batch, index, self.cwd_key(batch), self.launch_spec(batch, index))
        self.running[batch.batch_id] = slot
        return slot

    def launch_spec(self, batch: Batch, index: int, run_id: str | None = None) -> LaunchSpec:
        """What to run for feature ``index`` now: argv, environment, cwd, log, limits."""
        s = batch.state
        number = batch.attempt_number(index)
        run_id = run_id or f"{self.run_id_prefix}{batch.batch_id}-{index}-{number}-" + (
            secrets.token_hex(4)
        )
        values = self.placeholders(batch, index, number)
        env = dict(self.base_env)
        env.update(self.cfg.runner.env)
        env.update(
            BATCHD_FEATURE=s.features[index],
            BATCHD_FEATURE_INDEX=str(index),
            BATCHD_BATCH_ID=batch.batch_id,
            BATCHD_ATTEMPT=str(number),
            BATCHD_RUN_ID=run_id,
        )
        return LaunchSpec(
            run_id=run_id,
            argv=render(self.cfg.runner.command, values),
            env=env,
            cwd=self.effective_cwd(batch),
            log_path=self.store.log_path(batch.batch_id, index, number),
            timeout=float(self.cfg.runner.timeout),
            kill_grace=float(self.cfg.runner.kill_grace),
            max_log_bytes=self.cfg.runner.max_log_bytes,
        )

    @property
    def run_id_prefix(self) -> str:
        return f"{self.state_key}-"

    def placeholders(self, batch: Batch, index: int, attempt: int) -> dict[str, str]:
        s = batch.state
        issue = ""
        if s.issue_numbers and index < len(s.issue_numbers):
            issue = str(s.issue_numbers[index])
        return {
            "feature": s.features[index],
            "index": str(index),
            "batch_id": batch.batch_id,
            "attempt": str(attempt),
            "issue": issue,
        }

    async def _feature(self, slot: Slot) -> None:
        """Run one feature of a batch: hook, start, wait, record, hooks; free the slot."""
        try:
            hook_error = await self._hook("before_feature", slot, slot.spec.env)
            if not self._still_wanted(slot):
                return  # stopped, cancelled or paused while the hook ran
            if hook_error is not None:
                self._begin(slot, RunRef())
                await self._finish(slot, hook_failed("before_feature", hook_error), None)
                return
            run = await self._start(slot)
            if run is not None:
                await self._outcome(slot, await run.wait())
        finally:
            self._release(slot)

    async def _follow(self, slot: Slot) -> None:
        """Wait for a run re-attached after a restart, then record it as any other."""
        try:
            assert slot.run is not None
            await self._outcome(slot, await slot.run.wait())
        finally:
            self._release(slot)

    def _release(self, slot: Slot) -> None:
        self.running.pop(slot.batch.batch_id, None)
        slot.done.set()
        self.touch()

    def _still_wanted(self, slot: Slot) -> bool:
        batch = slot.batch
        now = self.clock.now()
        cooldown = self.settings.policy.breaker_cooldown
        return (
            not self.stopping
            and slot.stop_reason is None
            and batch.state.current_index == slot.index
            and batch.runnable(now, cooldown)
        )

    def _begin(self, slot: Slot, ref: RunRef) -> None:
        batch = slot.batch
        batch.begin(
            index=slot.index,
            now=self.clock.now(),
            pid=ref.pid,
            pid_start_time=ref.pid_start_time,
            job_id=ref.job_id,
            run_id=slot.spec.run_id,
        )
        self.persist(batch)

    async def _start(self, slot: Slot) -> Run | None:
        batch, spec = slot.batch, slot.spec
        try:
            spec.log_path.parent.mkdir(mode=0o700, exist_ok=True)
            run = await self.runner.start(spec)
        except SpawnError as e:
            self._trouble(batch, e)
            return None
        except OSError as e:  # the attempt log cannot be opened (a link, a missing dir)
            self._pause_batch(batch, f"log_unavailable: cannot open the attempt log: {e}")
            return None
        failpoints.hit("after_spawn")
        slot.run = run
        self._begin(slot, run.ref)
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
        self.touch()
        return run

    def _trouble(self, batch: Batch, e: SpawnError) -> None:
        """Trouble that is not the feature's fault pauses the batch or the queue, uncharged."""
        trouble = queue.spawn_trouble(
            e.kind,
            e.message,
            batch_id=batch.batch_id,
            batch_has_cwd=bool(batch.state.cwd),
            config_path=str(self.cfg.paths.config),
        )
        if trouble.scope == "batch":
            self._pause_batch(batch, trouble.reason)
            return
        queue.pause(self.daemon, trouble.reason, self.clock.now())
        self.save_queue()
        log.error("queue paused: %s", trouble.reason)
        self.touch()

    def _pause_batch(self, batch: Batch, reason: str) -> None:
        batch.pause(self.clock.now(), reason)
        self.persist(batch)
        log.error("%s: paused: %s", batch.batch_id, reason)
        self.touch()

    async def _outcome(self, slot: Slot, raw: RawResult) -> None:
        failpoints.hit("after_runner_exit")
        batch = slot.batch
        self._log_health(batch, slot.index, raw.log_error)
        if raw.interrupted:
            why = slot.stop_reason or "stopped"
            batch.mark_interrupted(self.clock.now(), f"interrupted: {why}")
            self.persist(batch)
            log.info("%s: feature %d interrupted (%s)", batch.batch_id, slot.index + 1, why)
            return
        verdict = self.classifier.judge(raw, self.cfg.runner.output_format)
        await self._finish(slot, verdict, raw.exit_code, ran=True)

    async def _finish(
        self, slot: Slot, verdict: Verdict, exit_code: int | None, *, ran: bool = False
    ) -> None:
        """Record the outcome (audit first), then the hooks it calls for: after_feature
        (when the runner ran), on_breaker_open, on_batch_done."""
        batch = slot.batch
        now = self.clock.now()
        hint = None
        if verdict.outcome != "completed" and verdict.hint_text:
            hint = retry_hint(verdict.hint_text, now)
        attempt = batch.attempt_number(slot.index)
        step = batch.record(
            verdict,
            exit_code=exit_code,
            consent=self.consent_for(batch),
            hint_s=hint,
            settings=self.settings,
            now=now,
            rand=random.random,
        )
        failpoints.hit("before_outcome_write")
        self.persist(batch, step.events)
        log_outcome(self, batch, slot.index, attempt, verdict, step)
        if step.paused == PAUSE_COST:
            self._cost_paused(batch)
        if ran:
            env = dict(slot.spec.env, BATCHD_OUTCOME=verdict.outcome)
            await self._hook("after_feature", slot, env)
        if step.breaker_opened:
            await self._hook("on_breaker_open", slot, self.batch_hook_env(batch))
        if step.finished:
            await self._batch_done(batch)

    def _cost_paused(self, batch: Batch) -> None:
        log.warning(
            "%s: paused: its cost %.4f USD reached limits.max_cost_usd (%g); raise the limit "
            "and reload, then 'batchctl resume %s'",
            batch.batch_id,
            batch.state.cost_usd,
            self.settings.max_cost_usd,
            batch.batch_id,
        )

    def _log_health(self, batch: Batch, index: int, error: str | None) -> None:
        """An incomplete attempt log is a problem; a complete one clears that problem."""
        if error is None:
            if any(p.kind == "log_write" for p in self.problems):
                log.info("logs: attempt logs are written whole again")
                self.set_problem("log_write", None)
            return
        attempt = batch.attempt_number(index)
        path = self.store.log_path(batch.batch_id, index, attempt)
        message = (
            f"{batch.batch_id}: the log of feature {index + 1} attempt {attempt} is incomplete "
            f"({error}; {path}); the run went on and its outcome is recorded: free space "
            "on the state dir's file system"
        )
        log.error("logs: %s", message)
        self.set_problem("log_write", message, batch.batch_id)

    # --- hooks -------------------------------------------------------------------------

    async def _hook(self, name: str, slot: Slot, env: dict[str, str]) -> str | None:
        batch = slot.batch
        values = self.placeholders(batch, slot.index, batch.attempt_number(slot.index))
        return await self._run_hook(name, batch, values, env)

    async def _run_hook(
        self, name: str, batch: Batch, values: dict[str, str], env: dict[str, str]
    ) -> str | None:
        return await self.hooks.run(
            name,
            getattr(self.cfg.hooks, name),
            values=values,
            env=env,
            cwd=self.effective_cwd(batch),
            timeout=float(self.cfg.hooks.timeout),
            kill_grace=min(5.0, float(self.cfg.runner.kill_grace)),
        )

    def batch_hook_env(self, batch: Batch) -> dict[str, str]:
        s = batch.state
        return dict(
            self.base_env,
            BATCHD_BATCH_ID=batch.batch_id,
            BATCHD_STATUS=s.status,
            BATCHD_COMPLETED=str(len(s.completed_features)),
            BATCHD_FAILED=str(len(s.failed_features)),
            BATCHD_STATE_FILE=str(self.store.batch_dir(batch.batch_id) / "state.json"),
            BATCHD_CONSECUTIVE_FAILURES=str(batch.retry.consecutive_failures),
        )

    def announce_done(self, batch: Batch) -> None:
        """A command ended a batch: its on_batch_done hook runs from the loop, so the
        command's reply does not wait for the hook."""
        self._done_hooks.append(batch)
        self.touch()

    async def _batch_done(self, batch: Batch) -> None:
        s = batch.state
        log.info(
            "%s: %s (%d completed, %d failed, %d skipped of %d)",
            batch.batch_id,
            s.status,
            len(s.completed_features),
            len(s.failed_features),
            len(s.skipped_features),
            s.total_features,
        )
        values = {"batch_id": batch.batch_id}
        await self._run_hook("on_batch_done", batch, values, self.batch_hook_env(batch))

    # --- stopping runs (commands) --------------------------------------------------------

    async def stop_run(self, batch: Batch, reason: str, index: int | None = None) -> bool:
        """Stop the batch's running feature (only ``index``, if given) and wait until its
        outcome is recorded; False when nothing of it was running."""
        slot = self.running.get(batch.batch_id)
        if slot is None or (index is not None and slot.index != index):
            return False
        slot.stop(reason)
        await slot.done.wait()
        return True

    async def stop_all_runs(self, reason: str) -> int:
        slots = list(self.running.values())
        for slot in slots:
            slot.stop(reason)
        for slot in slots:
            await slot.done.wait()
        return len(slots)
