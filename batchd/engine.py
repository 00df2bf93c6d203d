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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc

from batchd import feature, launch, queue, schedule, views
from batchd.batch import Batch, BatchError, settings_from
from batchd.classify import Classifier
from batchd.clock import Clock, SystemClock
from batchd.config import Config
from batchd.dotenv import DotenvConsent
from batchd.engines import LaunchSpec, Run, RunnerEngine
from batchd.hooks import Hooks
from batchd.journal import Journal
from batchd.model import AuditEvent, DaemonState, UserState
from batchd.policy import consent
from batchd.protocol import E_IO
from batchd.spoolrules import SpoolReport
from batchd.store import Problem, Store
from batchd.systemd import child_env

log = logging.getLogger("batchd")

WRITE_RETRY_S = 2.0
Notify = Callable[[str], object]


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
        """``notify`` receives systemd's STATUS= text when it changes (None: nobody listens)."""
        self.store = store
        self.runner = runner
        self.backend = backend
        self.env = dict(env)
        self.clock: Clock = clock or SystemClock()
        self.notify: Notify | None = notify
        self.journal = Journal(store)
        self.hooks = Hooks()
        self.started = self.clock.now()
        self.batches: dict[str, Batch] = {}
        self.daemon = DaemonState()
        self.user = UserState()
        self.problems: list[Problem] = []
        self.spool_report = SpoolReport()  # kept current by the spool: rejected files
        self.running: dict[str, Slot] = {}
        self.stopping = False
        self.version = 0
        self.changed = anyio.Event()
        self._wake = anyio.Event()
        self._stopped = anyio.Event()
        self._done_hooks: list[Batch] = []
        self._cwd_keys: dict[str, str] = {}
        self.dotenv = DotenvConsent()
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
            timeout_s=float(cfg.runner.timeout),
        )
        self.base_env = child_env(self.env)
        self._cwd_keys.clear()
        now = self.clock.now()
        for batch in self.batches.values():
            if batch.enforce_cost_cap(self.settings, now):
                log.warning("%s", views.cost_paused(batch, self.settings))
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
        dotenv = self.dotenv.lookup(self.effective_cwd(batch))
        return consent(self.env.get("BATCH_RETRY_ENABLED"), dotenv, self.user.batch_retry_enabled)

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
                tg.start_soon(feature.follow, self, slot)
            while not self.stopping:
                wake = self._wake
                if self.journal.failure:
                    await self._retry_writes()
                    continue
                while self._done_hooks:
                    tg.start_soon(self._batch_done, self._done_hooks.pop(0))
                plan = self._plan()
                for batch_id in plan.start:
                    tg.start_soon(feature.run, self, self._take_slot(self.batches[batch_id]))
                self.notify_status()
                await self.clock.sleep_until(plan.wake_at, wake)
            self._stop_runs(tg)
        self._tg = None

    def _stop_runs(self, tg: anyio.abc.TaskGroup) -> None:
        """At a daemon stop: local runs are stopped (and recorded interrupted); runs that
        outlive the daemon (Slurm jobs) are left running, and only the waiting stops: the
        next start re-attaches to them."""
        self.hooks.stop_all()
        if self.runner.keeps_runs:
            tg.cancel_scope.cancel()
            return
        for slot in self.running.values():
            slot.stop("daemon stopping")

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
        """SIGTERM/SIGINT: start nothing more; the loop then ends what runs (``_stop_runs``)."""
        self.stopping = True
        self._stopped.set()
        self._wake.set()

    def notify_status(self) -> None:
        """Tell systemd (STATUS=) what the queue is doing, when that changed."""
        if self.notify is None:
            return
        line = views.status_line(self)
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
        """What to run for feature ``index`` now (``run_id``: the recorded one, after a restart)."""
        number = batch.attempt_number(index)
        return launch.spec(
            self.cfg.runner,
            self.base_env,
            batch,
            index,
            cwd=self.effective_cwd(batch),
            log_path=self.store.log_path(batch.batch_id, index, number),
            run_id=run_id or launch.new_run_id(self.run_id_prefix, batch, index, number),
        )

    @property
    def run_id_prefix(self) -> str:
        return f"{self.state_key}-"

    # --- hooks -------------------------------------------------------------------------

    async def run_hook(
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
        state_file = self.store.batch_dir(batch.batch_id) / "state.json"
        return launch.batch_hook_env(self.base_env, batch, state_file)

    def announce_done(self, batch: Batch) -> None:
        """A command ended a batch: its on_batch_done hook runs from the loop, so the
        command's reply does not wait for the hook."""
        self._done_hooks.append(batch)
        self.touch()

    async def _batch_done(self, batch: Batch) -> None:
        log.info("%s", views.batch_done(batch))
        values = {"batch_id": batch.batch_id}
        await self.run_hook("on_batch_done", batch, values, self.batch_hook_env(batch))

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
