"""The queue loop: picks the next feature, runs it, applies the policy, persists.

The engine owns the daemon's in-memory truth (every ``Batch``, the queue
state, the problems) and is the only writer of state files. Decisions come from
the pure core (``batch.Batch``, ``policy``, ``classify``); this module carries
them out: spawns through ``runner``, writes through ``store``, runs hooks,
wakes watchers. Commands from the control socket call the public methods
below; they return after the change is durable.

Durability per feature: one state write after the spawn (with pid and start
time) and one after the outcome (plus ``retry_state.json`` when a counter
moved). A failed write pauses the queue, is reported under ``problems`` and is
retried until it succeeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from batchd import __version__, failpoints, runner
from batchd.batch import PAUSE_COST, Batch, BatchError, Settings, new_batch
from batchd.classify import Classifier, Verdict, retry_hint, sanitize
from batchd.config import Config
from batchd.model import (
    FINISHED,
    Attempt,
    AuditEvent,
    DaemonState,
    UserState,
    batch_id_for,
    parse_iso,
    utc_iso,
)
from batchd.parse import Limits
from batchd.policy import RetryPolicy, consent_from_dotenv, parse_consent
from batchd.protocol import E_IO, E_UNKNOWN_BATCH, is_batch_id
from batchd.spool import Accepted
from batchd.store import Problem, Store, StoreError, ensure_dir

log = logging.getLogger("batchd")

PAUSE_RUNNER = "runner_unavailable"
PAUSE_CWD = "cwd_unavailable"
PAUSE_WRITE = "state_write_failed"
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment minus what belongs to systemd and the daemon itself."""
    return {k: v for k, v in env.items() if not k.startswith(_CHILD_ENV_DROP)}


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


def limits_from(cfg: Config) -> Limits:
    s = cfg.spool
    return Limits(
        max_file_bytes=s.max_file_bytes,
        max_features=s.max_features,
        max_line_chars=s.max_line_chars,
    )


@dataclass
class Current:
    """The feature that is running now."""

    batch: Batch
    index: int
    attempt: Attempt
    proc: runner.RunningProcess
    done: anyio.Event = field(default_factory=anyio.Event)


Notify = Callable[[str], object]


class Engine:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        *,
        backend: str,
        env: Mapping[str, str],
        notify: Notify | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.env = dict(env)
        self._notify: Notify = notify or (lambda _line: None)
        self._last_status_line = ""
        self.started = time.time()
        self.batches: dict[str, Batch] = {}
        self.daemon = DaemonState()
        self.user = UserState()
        self.problems: list[Problem] = []
        self.current: Current | None = None
        self._hook_proc: runner.RunningProcess | None = None
        self._done_queue: list[Batch] = []
        self.stopping = False
        self.version = 0
        self.changed = anyio.Event()
        self._wake = anyio.Event()
        self._dirty: dict[str, tuple[bool, bool]] = {}  # batch id -> (state, retry) unwritten
        self._unwritten_audit: dict[str, tuple[AuditEvent, ...]] = {}
        self._daemon_dirty = False
        self._write_error: str | None = None
        self._last_id_us = 0
        self._dotenv_cache: dict[str, tuple[tuple[int, int], bool | None]] = {}
        self.state_key = hashlib.sha256(os.path.realpath(store.root).encode()).hexdigest()[:12]
        self.config_file_seen = os.path.lexists(cfg.paths.config)
        self.apply_config(cfg)

    def apply_config(self, cfg: Config) -> None:
        self.cfg = cfg
        self.settings = settings_from(cfg)
        self.limits = limits_from(cfg)
        c = cfg.classify
        self.classifier = Classifier.build(
            c.transient_patterns,
            c.permanent_patterns,
            c.transient_exit_codes,
            allow_permission_denials=cfg.runner.allow_permission_denials,
        )
        self.base_env = child_env(self.env)

    # --- start-up ---------------------------------------------------------------

    def load(self) -> None:
        """Read every state file (quarantining unreadable ones)."""
        self.daemon = self.store.load_daemon()
        self.user = self.store.load_user()
        loaded, problems = self.store.load_batches()
        self.problems.extend(problems)
        for p in problems:
            log.error("state: %s", p.message)
        for state, retry in loaded:
            self.batches[state.batch_id] = Batch(state, retry)
        if self.store.temp_files_removed:
            log.info(
                "state: removed %d temp files left by an interrupted write (harmless)",
                self.store.temp_files_removed,
            )
        top = max((b.state.seq for b in self.batches.values()), default=0)
        if self.daemon.next_seq <= top:
            self.daemon.next_seq = top + 1
        if self.daemon.queue_paused and (self.daemon.pause_reason or "").startswith(PAUSE_RUNNER):
            # A restart usually follows a fix; the next spawn pauses again if not.
            self.daemon.queue_paused = False
            self.daemon.pause_reason = None
            self._save_daemon()

    async def recover(self) -> None:
        """Stop runners left by a daemon killed outright, then close their attempts."""
        grace = float(self.cfg.runner.kill_grace)
        for batch in self.batches.values():
            attempt = batch.open_attempt()
            if attempt is None or attempt.pid is None:
                continue
            if runner.is_alive_process(attempt.pid, attempt.pid_start_time):
                log.warning(
                    "recovery: stopping the runner left running by the previous daemon "
                    "(%s feature %d, pid %d)",
                    batch.batch_id,
                    attempt.feature_index,
                    attempt.pid,
                )
                with anyio.CancelScope(shield=True):
                    await runner.kill_group(attempt.pid, grace)
        marker = f"BATCHD_RUN_ID={self.state_key}-".encode()
        for pid in runner.processes_with_env(marker):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            log.warning("recovery: stopping orphaned runner process %d (group %d)", pid, pgid)
            with anyio.CancelScope(shield=True):
                if pgid == os.getpgid(0):
                    os.kill(pid, 9)
                else:
                    await runner.kill_group(pgid, grace)
        now = time.time()
        for batch in self.batches.values():
            attempt = batch.mark_interrupted(now, "interrupted: the daemon stopped during the run")
            if attempt is not None:
                log.info(
                    "recovery: %s feature %d attempt %d was interrupted; it runs again",
                    batch.batch_id,
                    attempt.feature_index,
                    attempt.attempt,
                )
                self._persist(batch, retry=False)

    # --- ingestion (called by the spool) ------------------------------------------

    def ingest(self, acc: Accepted) -> None:
        """Turn an accepted spool file into a batch: state first, then move the file."""
        for batch in self.batches.values():
            s = batch.state
            if (
                s.features_file == acc.name
                and s.source_sha256 == acc.sha256
                and not self.store.has_source(s.batch_id)
            ):
                log.info(
                    "spool: %s is %s (recovered after a crash); moving it", acc.name, s.batch_id
                )
                self._move_source(acc, s.batch_id)
                return
        if self._write_error:
            return  # the disk is failing; the file stays in the spool until it recovers
        now = time.time()
        batch_id = self._new_batch_id(now)
        seq = self.daemon.next_seq
        parsed = acc.parsed
        if parsed.name == acc.name:  # named after the file: a name may hold anything
            parsed = dataclasses.replace(parsed, name=sanitize(acc.name, 200))
        batch = new_batch(
            batch_id=batch_id,
            seq=seq,
            parsed=parsed,
            features_file=acc.name,
            source_sha256=acc.sha256,
            now=now,
        )
        try:
            self.daemon.next_seq = seq + 1
            self.daemon.updated_at = utc_iso(now)
            self.store.save_daemon(self.daemon)
            self.store.create_batch(batch.state, batch.retry)
        except OSError as e:
            self.daemon.next_seq = seq
            what = f"cannot write the new batch for {sanitize(acc.name)}: {e}"
            self._write_failed(what, None)
            return
        failpoints.hit("after_batch_write")
        self.batches[batch_id] = batch
        self._move_source(acc, batch_id)
        log.info(
            "spool: accepted %s as %s (seq %d, %d features)",
            sanitize(acc.name),
            batch_id,
            seq,
            batch.state.total_features,
        )
        self.touch()

    def _move_source(self, acc: Accepted, batch_id: str) -> None:
        try:
            self.store.move_in_source(acc.path, batch_id)
        except OSError as e:
            log.error("spool: cannot move %s into %s: %s", sanitize(acc.name), batch_id, e)

    def _new_batch_id(self, now: float) -> str:
        us = max(int(now * 1_000_000), self._last_id_us + 1)
        while True:
            batch_id = batch_id_for(us / 1_000_000)
            if batch_id not in self.batches and not os.path.lexists(self.store.batches / batch_id):
                break
            us += 1
        self._last_id_us = us
        return batch_id

    # --- persistence ------------------------------------------------------------------

    def _persist(self, batch: Batch, *, retry: bool, events: tuple[AuditEvent, ...] = ()) -> bool:
        bid = batch.batch_id
        if bid not in self.batches:
            return True  # pruned meanwhile
        old = self._dirty.pop(bid, (False, False))
        want_state, want_retry = True, retry or old[1]
        pending = self._unwritten_audit.pop(bid, ()) + events
        try:
            # The audit record of a decision is durable before the state shows it.
            if pending:
                self.store.append_audit(bid, pending)
                pending = ()
                failpoints.hit("after_audit_write")
            if want_retry:
                self.store.save_retry(batch.retry)
            self.store.save_state(batch.state)
        except (OSError, StoreError) as e:
            self._dirty[bid] = (want_state, want_retry)
            if pending:
                self._unwritten_audit[bid] = pending
            self._write_failed(f"cannot write the state of {bid}: {e}", bid)
            return False
        return True

    def _save_daemon(self) -> bool:
        self.daemon.updated_at = utc_iso(time.time())
        try:
            self.store.save_daemon(self.daemon)
        except (OSError, StoreError) as e:
            self._daemon_dirty = True
            self._write_failed(f"cannot write daemon.json: {e}", None)
            return False
        self._daemon_dirty = False
        return True

    def persist_daemon(self) -> bool:
        return self._save_daemon()

    def _write_failed(self, message: str, batch_id: str | None) -> None:
        if self._write_error is None:
            log.error("state: %s; the queue is paused until the write succeeds", message)
        self._write_error = message
        self.problems = [p for p in self.problems if p.kind != "state_write"]
        self.problems.append(Problem("state_write", message, batch_id))
        self.touch()

    def _flush(self) -> bool:
        """Retry the writes that failed; True when everything is on disk again."""
        if self._daemon_dirty and not self._save_daemon():
            return False
        for bid, (_, want_retry) in list(self._dirty.items()):
            batch = self.batches.get(bid)
            if batch is None:
                self._dirty.pop(bid, None)
                continue
            if not self._persist(batch, retry=want_retry):
                return False
        if self._write_error:
            log.info("state: writes succeed again; the queue continues")
        self._write_error = None
        self.problems = [p for p in self.problems if p.kind != "state_write"]
        self.touch()
        self.poke_spool()
        return True

    def poke_spool(self) -> None:
        """Overridden by the daemon: make the spool look again."""

    def _require_durable(
        self, batch: Batch, *, retry: bool, events: tuple[AuditEvent, ...] = ()
    ) -> None:
        if not self._persist(batch, retry=retry, events=events):
            raise BatchError(
                E_IO,
                f"{batch.batch_id}: the change is made but could not be written yet "
                f"({self._write_error}); batchd keeps trying",
            )

    # --- the loop ---------------------------------------------------------------------

    def touch(self) -> None:
        """Something changed: wake the loop and the watchers."""
        self.version += 1
        self.changed.set()
        self.changed = anyio.Event()
        self._wake.set()
        self._wake = anyio.Event()

    async def _sleep(self, wake: anyio.Event, until: float | None) -> None:
        if until is None:
            await wake.wait()
            return
        with anyio.move_on_after(max(0.0, until - time.time())):
            await wake.wait()

    def pick(self, now: float) -> tuple[Batch | None, float | None]:
        """The batch whose feature runs next (lowest seq runnable) and when it may start."""
        cooldown = self.settings.policy.breaker_cooldown
        soonest: float | None = None
        for batch in self.batches.values():
            if batch.finished:
                continue
            cap = self.settings.max_cost_usd
            s = batch.state
            if cap > 0 and s.cost_usd >= cap and s.status != "paused":
                batch.pause(now, PAUSE_COST)
                log.warning(
                    "%s: cost %.4f USD reached limits.max_cost_usd; paused", s.batch_id, s.cost_usd
                )
                self._persist(batch, retry=False)
                self.touch()
                continue
            if batch.runnable(now, cooldown):
                return batch, batch.wait_until()
            opened = batch.retry.breaker_opened_at
            if (
                s.status == "paused"
                and cooldown > 0
                and opened
                and batch.retry.circuit_breaker_open
            ):
                at = parse_iso(opened) + cooldown
                soonest = at if soonest is None else min(soonest, at)
        return None, soonest

    @property
    def queue_pause_reason(self) -> str | None:
        if self._write_error:
            return f"{PAUSE_WRITE}: {self._write_error}"
        return self.daemon.pause_reason if self.daemon.queue_paused else None

    async def run(self) -> None:
        """Run features until ``stop()``; returns with nothing running."""
        while not self.stopping:
            wake = self._wake
            while self._done_queue and not self.stopping:
                await self._batch_done(self._done_queue.pop(0))
            if self._write_error:
                if not self._flush():
                    await self._sleep(wake, time.time() + 2.0)
                continue
            if self.daemon.queue_paused:
                self._status_line()
                await self._sleep(wake, None)
                continue
            now = time.time()
            batch, at = self.pick(now)
            if batch is None:
                self._status_line()
                await self._sleep(wake, at)
                continue
            if at is not None and at > now:
                self._status_line(waiting=batch)
                await self._sleep(wake, at)
                continue
            await self.run_feature(batch)

    def notify_status(self, line: str) -> None:
        """Tell systemd (STATUS=) what the queue is doing, when that changed."""
        if line != self._last_status_line:
            self._last_status_line = line
            self._notify(line)

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop starting features; interrupt the running one."""
        self.stopping = True
        if self.current is not None:
            self.current.proc.stop("daemon stopping")
        if self._hook_proc is not None:  # a hook must not hold up the stop past TimeoutStopSec
            self._hook_proc.stop("daemon stopping")
        self._wake.set()

    def _status_line(self, waiting: Batch | None = None) -> None:
        if waiting is not None:
            self.notify_status(
                f"{waiting.batch_id}: waiting to retry feature {waiting.state.current_index} "
                f"until {waiting.retry.next_attempt_at}"
            )
        elif self.queue_pause_reason:
            self.notify_status(f"queue paused: {self.queue_pause_reason}")
        else:
            self.notify_status("idle")

    # --- one feature --------------------------------------------------------------------

    def effective_cwd(self, batch: Batch) -> str:
        if batch.state.cwd:
            return batch.state.cwd
        if self.cfg.runner.cwd:
            return os.path.expanduser(self.cfg.runner.cwd)
        return os.path.expanduser("~")

    def _feature_env(self, batch: Batch, index: int, attempt: int, run_id: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(self.cfg.runner.env)
        env.update(
            BATCHD_FEATURE=batch.state.features[index],
            BATCHD_FEATURE_INDEX=str(index),
            BATCHD_BATCH_ID=batch.batch_id,
            BATCHD_ATTEMPT=str(attempt),
            BATCHD_RUN_ID=run_id,
        )
        return env

    async def run_feature(self, batch: Batch) -> None:
        s = batch.state
        index = s.current_index
        number = batch.attempt_number(index)
        cwd = self.effective_cwd(batch)
        run_id = f"{self.state_key}-{batch.batch_id}-{index}-{number}-{secrets.token_hex(4)}"
        env = self._feature_env(batch, index, number, run_id)
        issue = ""
        if s.issue_numbers and index < len(s.issue_numbers):
            issue = str(s.issue_numbers[index])
        argv = runner.render_argv(
            self.cfg.runner.command,
            {
                "feature": s.features[index],
                "index": str(index),
                "batch_id": batch.batch_id,
                "attempt": str(number),
                "issue": issue,
            },
        )
        hook_error = await self._hook("before_feature", env, cwd)
        if (
            self.stopping
            or batch.finished
            or not batch.runnable(time.time(), self.settings.policy.breaker_cooldown)
        ):
            return  # stopped, cancelled or paused while the hook ran
        now = time.time()
        retry_changed = batch.retry.next_attempt_at is not None
        batch.clear_retry_wait(now)
        if hook_error is not None:
            batch.begin(index=index, now=now, pid=None, pid_start_time=None)
            verdict = Verdict(
                "failed", "transient", sanitize(f"before_feature hook failed: {hook_error}")
            )
            await self._record(batch, verdict, None, retry_changed)
            return
        try:
            logs = self.store.batch_dir(batch.batch_id) / "logs"
            if not logs.is_dir():
                ensure_dir(logs)
            proc = runner.spawn(
                runner.Launch(
                    argv=argv,
                    env=env,
                    cwd=cwd,
                    log_path=self.store.log_path(batch.batch_id, index, number),
                    timeout=float(self.cfg.runner.timeout),
                    kill_grace=float(self.cfg.runner.kill_grace),
                    max_log_bytes=self.cfg.runner.max_log_bytes,
                )
            )
        except runner.SpawnError as e:
            self._spawn_failed(batch, e, now)
            if retry_changed:
                self._persist(batch, retry=True)
            return
        except (OSError, StoreError) as e:  # the attempt log cannot be opened
            reason = f"log_unavailable: cannot open the attempt log: {e}"
            batch.pause(now, reason)
            self._persist(batch, retry=retry_changed)
            log.error("%s: paused: %s; fix it, then resume the batch", batch.batch_id, reason)
            self.touch()
            return
        failpoints.hit("after_spawn")
        attempt = batch.begin(index=index, now=now, pid=proc.pid, pid_start_time=proc.start_time)
        current = Current(batch, index, attempt, proc)
        self.current = current
        self._persist(batch, retry=retry_changed)
        failpoints.hit("after_attempt_record")
        log.info(
            "%s: feature %d/%d attempt %d started (pid %d): %s",
            batch.batch_id,
            index + 1,
            s.total_features,
            number,
            proc.pid,
            s.features[index],
        )
        self.notify_status(f"{batch.batch_id} {index + 1}/{s.total_features}: {s.features[index]}")
        self.touch()
        try:
            raw = await proc.wait()
            failpoints.hit("after_runner_exit")
            self._log_health(batch, index, number, raw.log_error)
            if raw.interrupted:
                batch.mark_interrupted(time.time(), f"interrupted: {proc.stop_reason}")
                self._persist(batch, retry=False)
                log.info("%s: feature %d interrupted (%s)", batch.batch_id, index, proc.stop_reason)
                return
            verdict = self.classifier.judge(raw, self.cfg.runner.output_format)
            await self._record(batch, verdict, raw.exit_code, False, env=env, cwd=cwd)
        finally:
            self.current = None
            current.done.set()
            self.touch()

    def set_problem(self, kind: str, message: str | None, batch_id: str | None = None) -> None:
        """Report (or, with None, clear) the one problem of ``kind``."""
        self.problems = [p for p in self.problems if p.kind != kind]
        if message is not None:
            self.problems.append(Problem(kind, message, batch_id))
        self.touch()

    def _log_health(self, batch: Batch, index: int, attempt: int, error: str | None) -> None:
        """Report an incomplete attempt log under ``problems``; a complete one clears that."""
        had = any(p.kind == "log_write" for p in self.problems)
        self.problems = [p for p in self.problems if p.kind != "log_write"]
        if error is None:
            if had:
                log.info("logs: attempt logs are written again")
            return
        path = self.store.log_path(batch.batch_id, index, attempt)
        message = (
            f"{batch.batch_id}: the log of feature {index + 1} attempt {attempt} is incomplete "
            f"({error}; {path}); the run went on and its outcome is recorded: free space "
            "on the state dir's file system"
        )
        self.problems.append(Problem("log_write", message, batch.batch_id))
        log.error("logs: %s", message)

    def _spawn_failed(self, batch: Batch, e: runner.SpawnError, now: float) -> None:
        if e.kind == "cwd" and batch.state.cwd:
            reason = (
                f"{PAUSE_CWD}: {e.message}; create it (or submit the batch again with "
                f"another --cwd), then run 'batchctl resume {batch.batch_id}'"
            )
            batch.pause(now, reason)
            self._persist(batch, retry=False)
            log.error("%s: paused: %s", batch.batch_id, reason)
        else:
            where = "runner.cwd" if e.kind == "cwd" else "runner.command"
            reason = (
                f"{PAUSE_RUNNER}: {e.message}; fix {where} in {self.cfg.paths.config} "
                "(or the PATH in the daemon's environment), then reload with SIGHUP "
                "('systemctl --user reload batchd') or run 'batchctl resume --all'"
            )
            self.daemon.queue_paused = True
            self.daemon.pause_reason = reason
            self._save_daemon()
            log.error("queue paused: %s", reason)
        self.touch()

    async def _record(
        self,
        batch: Batch,
        verdict: Verdict,
        exit_code: int | None,
        retry_changed: bool,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        now = time.time()
        hint = None
        if verdict.outcome != "completed" and verdict.hint_text:
            hint = retry_hint(verdict.hint_text, now)
        open_attempt = batch.open_attempt()
        assert open_attempt is not None
        index, attempt_no = open_attempt.feature_index, open_attempt.attempt
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
        self._persist(batch, retry=retry_changed or step.retry_changed, events=step.events)
        self._log_outcome(batch, index, attempt_no, verdict, step.retry_delay)
        if env is not None and cwd is not None:
            hook_env = dict(env, BATCHD_OUTCOME=verdict.outcome)
            await self._hook("after_feature", hook_env, cwd)
        if step.breaker_opened:
            await self._hook(
                "on_breaker_open",
                self._batch_hook_env(batch),
                self.effective_cwd(batch),
            )
        if step.finished:
            await self._batch_done(batch)

    def _log_outcome(
        self, batch: Batch, index: int, attempt: int, verdict: Verdict, delay: float | None
    ) -> None:
        where = f"{batch.batch_id}: feature {index + 1}/{batch.state.total_features}"
        if verdict.outcome == "completed":
            log.info("%s completed (attempt %d)", where, attempt)
            return
        what = f"{where} attempt {attempt} {verdict.outcome} ({verdict.failure_type})"
        if delay is not None:
            log.warning("%s: %s; retry at %s", what, verdict.message, batch.retry.next_attempt_at)
        else:
            log.warning("%s: %s; not retried", what, verdict.message)

    def _batch_hook_env(self, batch: Batch) -> dict[str, str]:
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

    def _announce_done(self, batch: Batch) -> None:
        """A command ended a batch: its on_batch_done hook runs from the queue loop, so the
        command's reply does not wait for the hook."""
        self._done_queue.append(batch)
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
        await self._hook("on_batch_done", self._batch_hook_env(batch), self.effective_cwd(batch))

    async def _hook(self, name: str, env: dict[str, str], cwd: str) -> str | None:
        """Run one hook; None when it succeeded (or there is none), else why it failed."""
        argv: list[str] = getattr(self.cfg.hooks, name)
        if not argv:
            return None
        if not os.path.isdir(cwd):
            cwd = os.path.expanduser("~")
        timeout = float(self.cfg.hooks.timeout)
        try:
            proc = runner.spawn(
                runner.Launch(
                    argv=list(argv),
                    env=env,
                    cwd=cwd,
                    log_path=None,
                    timeout=timeout,
                    kill_grace=min(5.0, float(self.cfg.runner.kill_grace)),
                    tail_caps=(4096, 4096),
                )
            )
        except runner.SpawnError as e:
            log.error("hook %s: %s", name, e.message)
            return e.message
        self._hook_proc = proc
        if self.stopping:
            proc.stop("daemon stopping")
        try:
            raw = await proc.wait()
        finally:
            self._hook_proc = None
        if raw.interrupted:
            log.warning("hook %s: stopped because the daemon is stopping", name)
            return "stopped because the daemon is stopping"
        if raw.exit_code == 0:
            log.debug("hook %s: ok", name)
            return None
        if raw.timed_out:
            why = f"timed out after {timeout:g}s (hooks.timeout)"
        elif raw.exit_code is None:
            why = f"killed by signal {raw.signal}"
        else:
            why = f"exit code {raw.exit_code}"
        detail = sanitize(raw.stderr_tail.decode("utf-8", "replace").strip(), 300)
        message = f"{why}: {detail}" if detail else why
        log.error("hook %s failed: %s", name, message)
        return message

    # --- consent ------------------------------------------------------------------------

    def global_consent(self) -> bool:
        env = parse_consent(self.env.get("BATCH_RETRY_ENABLED"))
        if env is not None:
            return env
        return bool(self.user.batch_retry_enabled)

    def consent_for(self, batch: Batch) -> bool:
        """Environment, then ``.env`` in the batch's effective cwd, then user_state.json."""
        env = parse_consent(self.env.get("BATCH_RETRY_ENABLED"))
        if env is not None:
            return env
        dot = self._dotenv(self.effective_cwd(batch))
        if dot is not None:
            return dot
        return bool(self.user.batch_retry_enabled)

    def _dotenv(self, cwd: str) -> bool | None:
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

    # --- commands (called by the server; each returns after the change is durable) ------

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id) if is_batch_id(batch_id) else None
        if batch is None:
            raise BatchError(E_UNKNOWN_BATCH, f"no batch {batch_id!r}; 'batchctl list' shows them")
        return batch

    async def _stop_current(self, reason: str, batch: Batch | None = None) -> bool:
        cur = self.current
        if cur is None or (batch is not None and cur.batch is not batch):
            return False
        cur.proc.stop(reason)
        await cur.done.wait()
        return True

    async def pause(self, batch_id: str | None, now_flag: bool) -> dict[str, Any]:
        if batch_id is None:
            self.daemon.queue_paused = True
            self.daemon.pause_reason = "user"
            if not self._save_daemon():
                raise BatchError(E_IO, f"the queue is paused but {self._write_error}")
            log.info(
                "queue paused by the user%s", " (stopping the running feature)" if now_flag else ""
            )
            self.touch()
            stopped = await self._stop_current("paused by the user") if now_flag else False
            return {
                "batch_id": None,
                "queue_paused": True,
                "status": None,
                "stopped_running": stopped,
            }
        batch = self.get(batch_id)
        batch.pause(time.time())
        self._require_durable(batch, retry=False)
        log.info("%s: paused by the user", batch_id)
        self.touch()
        stopped = await self._stop_current("paused by the user", batch) if now_flag else False
        return {
            "batch_id": batch_id,
            "queue_paused": self.daemon.queue_paused,
            "status": batch.state.status,
            "stopped_running": stopped,
        }

    def resume(self, batch_id: str | None, all_: bool) -> dict[str, Any]:
        now = time.time()
        resumed = []
        if all_:
            for batch in self.batches.values():
                if batch.state.status == "paused":
                    batch.resume(now)
                    self._require_durable(batch, retry=False)
                    resumed.append(batch.batch_id)
            if self.daemon.queue_paused:
                self.daemon.queue_paused = False
                self.daemon.pause_reason = None
                if not self._save_daemon():
                    raise BatchError(E_IO, f"resumed, but {self._write_error}")
        elif batch_id is not None:
            batch = self.get(batch_id)
            if batch.resume(now):
                self._require_durable(batch, retry=False)
                resumed.append(batch_id)
        log.info(
            "resumed: %s", ", ".join(resumed) if resumed else ("the queue" if all_ else "nothing")
        )
        self.touch()
        return {"resumed": resumed, "queue_paused": self.daemon.queue_paused}

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self.get(batch_id)
        batch.cancel(time.time())
        self._require_durable(batch, retry=True)
        log.info("%s: cancelled by the user", batch_id)
        self.touch()
        stopped = await self._stop_current("cancelled by the user", batch)
        self._announce_done(batch)
        return {"batch_id": batch_id, "status": batch.state.status, "stopped_running": stopped}

    def retry(self, batch_id: str) -> dict[str, Any]:
        batch = self.get(batch_id)
        indices = batch.retry_failed(time.time())
        self._require_durable(batch, retry=True)
        log.info("%s: failed features %s queued again", batch_id, indices)
        self.touch()
        return {"batch_id": batch_id, "requeued": indices, "status": batch.state.status}

    async def skip(self, batch_id: str, index: int) -> dict[str, Any]:
        batch = self.get(batch_id)
        cur = self.current
        running = cur is not None and cur.batch is batch and cur.index == index
        finished = batch.skip(index, time.time(), running)
        self._require_durable(batch, retry=True)
        log.info("%s: feature %d skipped by the user", batch_id, index)
        self.touch()
        if finished:
            self._announce_done(batch)
        return {"batch_id": batch_id, "index": index, "status": batch.state.status}

    def reset_breaker(self, batch_id: str) -> dict[str, Any]:
        batch = self.get(batch_id)
        event = batch.reset_breaker(time.time())
        self._require_durable(batch, retry=True, events=(event,))
        log.info("%s: circuit breaker reset by the user", batch_id)
        self.touch()
        return {
            "batch_id": batch_id,
            "circuit_breaker_open": batch.retry.circuit_breaker_open,
            "consecutive_failures": batch.retry.consecutive_failures,
        }

    def set_consent(self, enabled: bool) -> dict[str, Any]:
        user = msgspec.structs.replace(
            self.user, batch_retry_enabled=enabled, updated_at=utc_iso(time.time())
        )
        try:
            self.store.save_user(user)
        except (OSError, StoreError) as e:
            raise BatchError(
                E_IO, f"cannot save {self.store.root / 'user_state.json'}: {e}"
            ) from None
        self.user = user
        log.info("retry consent set to %s", "enabled" if enabled else "disabled")
        self.touch()
        return {"retry_enabled": enabled, "path": str(self.store.root / "user_state.json")}

    def prune(self, older_than_days: int) -> dict[str, Any]:
        cut = time.time() - older_than_days * 86400
        removed = []
        for bid, batch in list(self.batches.items()):
            if batch.state.status in FINISHED and parse_iso(batch.state.updated_at) < cut:
                try:
                    self.store.remove_batch(bid)
                except (OSError, StoreError) as e:
                    raise BatchError(E_IO, f"cannot remove {bid}: {e}") from None
                del self.batches[bid]
                removed.append(bid)
        if removed:
            log.info("pruned %d finished batches: %s", len(removed), ", ".join(removed))
            self.touch()
        return {"removed": removed}

    # --- views -----------------------------------------------------------------------

    def _mean_duration(self, batch: Batch | None) -> float | None:
        total, n = 0.0, 0
        pool = [batch] if batch is not None else list(self.batches.values())
        for b in pool:
            for a in b.state.processing_history:
                if a.outcome in ("completed", "failed", "timed_out") and a.duration_s is not None:
                    total += a.duration_s
                    n += 1
        return total / n if n else None

    def batch_item(self, batch: Batch, global_mean: float | None) -> dict[str, Any]:
        s, r = batch.state, batch.retry
        left = s.total_features - len(batch.settled)
        mean = self._mean_duration(batch) if s.processing_history else None
        mean = mean if mean is not None else global_mean
        eta = None
        if batch.finished:
            eta = 0.0
        elif mean is not None:
            eta = round(mean * left, 3)
        return {
            "batch_id": s.batch_id,
            "name": s.name,
            "seq": s.seq,
            "status": s.status,
            "pause_reason": s.pause_reason,
            "total_features": s.total_features,
            "completed": len(s.completed_features),
            "failed": len(s.failed_features),
            "skipped": len(s.skipped_features),
            "current_index": s.current_index,
            "retry_enabled": self.consent_for(batch),
            "circuit_breaker_open": r.circuit_breaker_open,
            "consecutive_failures": r.consecutive_failures,
            "next_attempt_at": r.next_attempt_at,
            "cost_usd": s.cost_usd,
            "eta_s": eta,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "cwd": s.cwd,
            "source_type": s.source_type,
        }

    def status(self) -> dict[str, Any]:
        global_mean = self._mean_duration(None)
        cur = self.current
        current = None
        if cur is not None:
            current = {
                "batch_id": cur.batch.batch_id,
                "feature_index": cur.index,
                "feature": cur.batch.state.features[cur.index],
                "attempt": cur.attempt.attempt,
                "started_at": cur.attempt.started_at,
                "total_features": cur.batch.state.total_features,
                "pid": cur.proc.pid,
            }
        waiting = None
        next_retry = None
        if cur is None and not self.daemon.queue_paused:
            batch, at = self.pick(time.time())
            if batch is not None and at is not None:
                next_retry = batch.retry.next_attempt_at
                waiting = {
                    "batch_id": batch.batch_id,
                    "feature_index": batch.state.current_index,
                    "attempt": batch.attempt_number(batch.state.current_index),
                }
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "backend": self.backend,
                "uptime_s": round(time.time() - self.started, 3),
            },
            "queue_paused": self.daemon.queue_paused or self._write_error is not None,
            "pause_reason": self.queue_pause_reason,
            "problems": [p.to_dict() for p in self.problems],
            "retry_enabled": self.global_consent(),
            "current": current,
            "next_retry_at": next_retry,
            "waiting": waiting,
            "batches": [self.batch_item(b, global_mean) for b in self.batches.values()],
            "total_cost_usd": round(sum(b.state.cost_usd for b in self.batches.values()), 6),
            "paths": {
                "spool_dir": str(self.cfg.paths.spool_dir),
                "state_dir": str(self.cfg.paths.state_dir),
                "socket": str(self.cfg.paths.socket),
            },
        }

    def list_batches(self) -> dict[str, Any]:
        mean = self._mean_duration(None)
        return {"batches": [self.batch_item(b, mean) for b in self.batches.values()]}

    def show(self, batch_id: str) -> dict[str, Any]:
        batch = self.get(batch_id)
        return {
            "batch": self.batch_item(batch, self._mean_duration(None)),
            "state": msgspec.to_builtins(batch.state),
            "retry": msgspec.to_builtins(batch.retry),
        }

    def log_target(self, batch_id: str, index: int | None) -> tuple[int, int, Path]:
        """The log of the latest attempt of ``index`` (default: running, else last run)."""
        batch = self.get(batch_id)
        s = batch.state
        if index is None:
            cur = self.current
            if cur is not None and cur.batch is batch:
                index = cur.index
            elif s.processing_history:
                index = s.processing_history[-1].feature_index
            else:
                raise BatchError("bad_state", f"{batch_id}: no feature has run yet")
        if not 0 <= index < s.total_features:
            raise BatchError(
                "bad_args", f"{batch_id} has features 0..{s.total_features - 1}; no {index}"
            )
        last = batch.last_attempt.get(index)
        if last is None:
            raise BatchError("bad_state", f"{batch_id}: feature {index} has not run yet")
        return index, last[0], self.store.log_path(batch_id, index, last[0])
