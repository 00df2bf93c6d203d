"""The thin driver: asks the pure core what to do, and carries it out.

The engine owns the daemon's in-memory truth (``Live``: every ``Batch``, the
queue, the problems, the running features) and the services around it (the
store and its journal, the runner engine, hooks, the clock, the rules of the
current configuration). It decides nothing by itself: ``startplan`` (over
``schedule.plan``) says which batches start a feature, ``Batch`` says what an
outcome or a command does to a batch, ``policy`` says whether to retry,
``classify`` what an outcome means, ``queue`` what trouble pauses. Where a
feature runs and what it is launched with is ``placement``'s; what each hook
is given is ``hookcalls``'.

The parts it drives never import it: each declares what it needs as a
protocol (``feature.Host``, ``commands.Control``, ``views.Reader``,
``recovery.Recovering``, ``intake.Intake``) and the engine implements them.
The daemon wiring (``daemon``) hands in the two controls that live outside
it: looking at the spool again, and reloading the configuration.

Per feature: one durable write after the start (attempt, pid or job id) and
one after the outcome (plus the audit before it, and ``retry_state.json``
when it changed).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc

from batchd import (
    feature,
    hookcalls,
    limitwait,
    queue,
    reportfile,
    waiting,
    wording,
    worktreeend,
)
from batchd.batch import Batch
from batchd.checkconfig import daemon_user, start_warnings
from batchd.clock import Clock, SystemClock
from batchd.config import Config
from batchd.dotenv import DotenvConsent
from batchd.engines import LaunchSpec, Run, RunnerEngine
from batchd.errors import NotDurable
from batchd.hooks import Hooks
from batchd.journal import Journal
from batchd.live import Live, Slot
from batchd.model import AuditEvent, LimitWait
from batchd.placement import Placement
from batchd.policy import consent
from batchd.rules import Rules, missing_profile
from batchd.startplan import plan_now
from batchd.store import Store
from batchd.transitions import Settings

log = logging.getLogger("batchd")

WRITE_RETRY_S = 2.0
Notify = Callable[[str], object]


def _no_reload() -> str | None:
    return "this daemon cannot reload"


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
        poke_spool: Callable[[], None] | None = None,
        reload: Callable[[], str | None] = _no_reload,
    ) -> None:
        """``notify`` receives systemd's STATUS= text when it changes (None: nobody listens);
        ``poke_spool`` makes the spool look again; ``reload`` re-reads the configuration
        (None, or why the new one is refused)."""
        self.live = Live()
        self.store = store
        self.runner = runner
        self.backend = backend
        self.env = dict(env)
        self.clock: Clock = clock or SystemClock()
        self.journal = Journal(store)
        self.hooks = Hooks()
        self.started = self.clock.now()
        self.pid = os.getpid()
        self._user = daemon_user()
        self.last_id_us = 0  # of the newest batch id (two in one microsecond stay apart)
        self.state_key = hashlib.sha256(os.path.realpath(store.root).encode()).hexdigest()[:12]
        self.config_file_seen = os.path.lexists(cfg.paths.config)
        self._notify = notify
        self._poke_spool = poke_spool
        self._reload = reload
        self._stopped = anyio.Event()
        self.leaving = False  # the stop leaves the runs running (restart, on_stop = "leave")
        self.restart_requested = False
        self._done_hooks: list[Batch] = []
        self._dotenv = DotenvConsent()
        self._last_status_line = ""
        self.apply_config(cfg)

    # --- configuration ---------------------------------------------------------------

    @property
    def rules(self) -> Rules:
        return self._rules

    @property
    def cfg(self) -> Config:
        return self._rules.cfg

    @property
    def settings(self) -> Settings:
        return self._rules.settings

    @property
    def engine_name(self) -> str:
        return self.runner.name

    def apply_config(self, cfg: Config) -> None:
        """Use ``cfg`` from now on (start, or a good reload)."""
        self._rules = Rules.make(cfg, self.env, self._user)
        self.place = Placement(
            self._rules, self.store, state_key=self.state_key, runs_checks=self.runner.runs_checks
        )
        self.check_batches()
        self.check_runners()

    def check_runners(self) -> None:
        """Say at start (and after a reload) what check-config would warn about: a runner
        program that cannot be found is a ``runner`` problem in ``status`` and the log,
        not a silent "ready" (its batches would pause at their first feature)."""
        warnings = start_warnings(self.cfg, self.env)
        for warning in warnings:
            log.warning("%s", warning)
        self.live.set_problem("runner", "; ".join(warnings) if warnings else None)

    def check_batches(self) -> None:
        """Pause what the configuration no longer allows: a batch over its cost cap, a
        batch on a runner profile that is gone (at start and after each reload)."""
        now = self.clock.now()
        for batch in self.live.batches.values():
            missing = missing_profile(batch, self.cfg)
            if missing is not None and batch.state.status != "paused":
                batch.pause(now, missing)
                log.error("%s: paused: %s", batch.batch_id, missing)
                self.persist(batch)
            elif batch.enforce_cost_cap(self.settings, now):
                log.warning("%s", wording.cost_paused(batch, self.settings))
                self.persist(batch)

    def reload(self) -> str | None:
        return self._reload()

    def poke_spool(self) -> None:
        if self._poke_spool is not None:
            self._poke_spool()

    def effective_cwd(self, batch: Batch) -> str:
        return self._rules.effective_cwd(batch)

    def cwd_key(self, batch: Batch, index: int | None = None) -> str:
        return self.place.cwd_key(batch, index)

    def worktree_root(self) -> str:
        return self.place.worktree_root()

    # --- consent -----------------------------------------------------------------------

    def global_consent(self) -> bool:
        saved = self.live.user.batch_retry_enabled
        return consent(self.env.get("BATCH_RETRY_ENABLED"), None, saved)

    def consent_for(self, batch: Batch) -> bool:
        """The consent that decides a retry of this batch (its ``.env`` read now)."""
        return self._consent(batch, fresh=True)

    def consent_shown(self, batch: Batch) -> bool:
        """The consent ``status`` shows (the ``.env`` looked at once a second at most)."""
        return self._consent(batch, fresh=False)

    def _consent(self, batch: Batch, *, fresh: bool) -> bool:
        dotenv = self._dotenv.lookup(self.effective_cwd(batch), self.clock.now(), fresh=fresh)
        saved = self.live.user.batch_retry_enabled
        return consent(self.env.get("BATCH_RETRY_ENABLED"), dotenv, saved)

    # --- persistence -----------------------------------------------------------------------

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool:
        if batch.batch_id not in self.live.batches:
            return True  # pruned meanwhile
        if self.journal.save(batch, events):
            return True
        self._writes_failing()
        return False

    def require_durable(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> None:
        """Persist for a command: its reply must not claim what is not on disk."""
        if not self.persist(batch, events):
            raise NotDurable(
                f"{batch.batch_id}: the change is made but could not be written yet "
                f"({self.journal.failure}); batchd keeps trying"
            )

    def save_queue(self) -> bool:
        if self.journal.save_queue(self.live.queue):
            return True
        self._writes_failing()
        return False

    def forget(self, batch_id: str) -> None:
        """A pruned batch: gone from memory and from the journal."""
        self.live.batches.pop(batch_id, None)
        self.live.git_locks.pop(batch_id, None)
        self.journal.forget(batch_id)
        self.place.forget(batch_id)

    @property
    def write_failure(self) -> str | None:
        return self.journal.failure

    def _writes_failing(self) -> None:
        self.live.set_problem("state_write", self.journal.failure)

    @property
    def queue_pause_reason(self) -> str | None:
        if self.journal.failure:
            return f"{queue.PAUSE_WRITE}: {self.journal.failure}"
        q = self.live.queue
        return q.pause_reason if q.queue_paused else None

    def log_path(self, batch: Batch, index: int, attempt: int) -> Path:
        return self.store.log_path(batch.batch_id, index, attempt)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, adopted: list[Slot] | None = None) -> None:
        """Start features as the plan says until ``stop()``; returns with nothing running."""
        live = self.live
        async with anyio.create_task_group() as tg:
            for slot in adopted or []:
                live.running[slot.key] = slot
                tg.start_soon(feature.follow, self, slot)
            while not live.stopping:
                wake = live.wake
                if self.journal.failure:
                    await self._retry_writes()
                    continue
                while self._done_hooks:
                    tg.start_soon(self.batch_hook, "on_batch_done", self._done_hooks.pop(0))
                plan, candidates = plan_now(
                    live,
                    now=self.clock.now(),
                    slots=self.cfg.queue.slots,
                    cooldown=self.settings.policy.breaker_cooldown,
                    cwd_key=self.cwd_key,
                    writes_failing=self.journal.failure is not None,
                )
                for key in plan.start:
                    c = candidates[key]
                    slot = self._take_slot(live.batches[c.batch_id], c.index)
                    tg.start_soon(feature.run, self, slot)
                self.notify_status()
                await self.clock.sleep_until(plan.wake_at, wake)
            self._stop_runs(tg)

    def _stop_runs(self, tg: anyio.abc.TaskGroup) -> None:
        """At a daemon stop: local runs are stopped (and recorded interrupted), unless the
        stop leaves them (``leaving``); Slurm jobs are always left. A run left running is
        only no longer waited for: the next start re-attaches to it (SPEC 16)."""
        self.hooks.stop_all()
        if self.runner.keeps_runs or self.leaving:
            if self.live.running:
                log.info("leaving %d running features running", len(self.live.running))
            tg.cancel_scope.cancel()
            return
        for slot in self.live.running.values():
            slot.stop("daemon stopping")

    async def _retry_writes(self) -> None:
        if self.journal.flush(self.live.batches):
            self.live.set_problem("state_write", None)
            self.poke_spool()
            return
        await self.clock.sleep_until(self.clock.now() + WRITE_RETRY_S, self._stopped)

    def stop(self, leave: bool = False) -> None:
        """SIGTERM/SIGINT: start nothing more; the loop then ends what runs (``_stop_runs``),
        or with ``leave`` leaves it running."""
        self.leaving = self.leaving or leave
        self.live.stopping = True
        self._stopped.set()
        self.live.wake.set()

    def restart(self) -> None:
        """``batchctl restart``: stop, leaving the runs running; ``daemon.run`` comes back."""
        self.restart_requested = True
        self.stop(leave=True)

    @property
    def restart_via(self) -> Literal["systemd", "exec"]:
        """How this daemon comes back: systemd starts it again, or it executes itself."""
        return (
            "systemd" if self.env.get("NOTIFY_SOCKET") or self.env.get("INVOCATION_ID") else "exec"
        )

    def notify_status(self) -> None:
        """Tell systemd (STATUS=) what the queue is doing, when that changed."""
        if self._notify is None:
            return
        line = wording.status_line(self.live, self.cfg.queue.slots, self.queue_pause_reason)
        if line != self._last_status_line:
            self._last_status_line = line
            self._notify(line)

    # --- one feature ----------------------------------------------------------------------

    def _take_slot(self, batch: Batch, index: int | None = None) -> Slot:
        index = batch.state.current_index if index is None else index
        slot = Slot(batch, index, self.cwd_key(batch, index), self.launch_spec(batch, index))
        self.live.running[slot.key] = slot
        return slot

    def launch_spec(self, batch: Batch, index: int, run_id: str | None = None) -> LaunchSpec:
        return self.place.launch_spec(batch, index, run_id)

    @property
    def run_id_prefix(self) -> str:
        return self.place.run_id_prefix

    def adopt(
        self, batch: Batch, index: int, spec: LaunchSpec, run: Run | None, *, remerge: bool = False
    ) -> Slot:
        """A run recovery found again (None: an attempt found in its check, whose check runs
        again; ``remerge``: in its merge, which is finished): it holds its slot from the start."""
        cwd = self.cwd_key(batch, index)
        recheck = run is None and not remerge
        return Slot(batch, index, cwd, spec, run=run, recheck=recheck, remerge=remerge)

    # --- hooks -------------------------------------------------------------------------

    async def feature_hook(self, name: str, slot: Slot, env: dict[str, str]) -> str | None:
        return await hookcalls.feature(self.hooks, self._rules, name, slot, env)

    async def batch_hook(self, name: str, batch: Batch) -> None:
        """``on_batch_done``/``on_breaker_open``; at the end of a batch, its worktrees are
        removed (and its base moved) and its report written before ``on_batch_done``."""
        report = None
        if name == "on_batch_done":
            await worktreeend.end(self, batch)
            log.info("%s", wording.batch_done(batch))
            report = reportfile.write(self, self.store, batch)
        state_file = self.store.batch_dir(batch.batch_id) / "state.json"
        await hookcalls.batch_end(self.hooks, self._rules, name, batch, state_file, report)

    async def limit_hook(self, batch: Batch, profile: str, wait: LimitWait) -> None:
        await hookcalls.limit(self.hooks, self._rules, batch, profile, wait)

    def end_limit_wait(self, profile: str) -> None:
        """``batchctl limit --clear``: the wait ends now, audited as cleared."""
        waiting.end(self, profile, limitwait.END_CLEARED)

    async def discard_worktrees(self, batch: Batch) -> None:
        """``prune``: the batch's worktrees go, kept ones too (its branches stay)."""
        await worktreeend.discard(self, batch)

    def announce_done(self, batch: Batch) -> None:
        """A command ended a batch: its on_batch_done hook runs from the loop, so the
        command's reply does not wait for the hook."""
        self._done_hooks.append(batch)
        self.live.touch()
