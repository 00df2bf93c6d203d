"""The local engine: each attempt is a process group on this machine, held by the keeper.

The runner is not the daemon's child: the daemon starts one keeper
(``batchd/keeper.py``) and asks it to start each attempt; the keeper holds the
pipes, writes the capped log, enforces the timeouts and records the outcome
in the run file next to the attempt log (``runfile``). So a run outlives the
daemon (SPEC 16): kill -9, a crash, ``batchctl restart``, a stop with
``runner.on_stop = "leave"``.

After a restart, ``reattach`` reads the run file: a keeper still holds the
run (its pid and start time check out) -> wait for it; the run has ended ->
judge what it recorded; nothing holds it (a reboot, a killed keeper, a run of
a daemon before this version) -> its group is ended if anything of it is
left, and the attempt is interrupted. A process of this user whose
``BATCHD_RUN_ID`` is of this state dir and of no known run (a kill between
the start and the record) is stopped.

What it must never do: decide what an outcome means (``classify`` does), or
pass feature text through a shell. Stopping a run it re-attached ends its
whole group from here (SIGTERM, ``kill_grace``, SIGKILL); the keeper that
holds it then records it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from batchd import procfs, runfile
from batchd.agents import CodexFacts
from batchd.classify import RawResult
from batchd.engines import LaunchSpec, Run, RunRef, SpawnError
from batchd.engines.keeperlink import KeeperGone, KeeperLink, exited_child
from batchd.engines.process import kill_group

if TYPE_CHECKING:
    from batchd.config import Config

log = logging.getLogger("batchd")

RECORD_POLL_S = 0.02  # a re-attached run that has exited: its record is looked for
START_TIMEOUT_S = 30.0  # a keeper that does not answer a start in this time is stuck
SETTLE_TIMEOUT_S = 10.0  # at start: the longest wait for earlier keepers' run files
KEEPERS_LOCK = "keepers.lock"


def order(spec: LaunchSpec) -> dict[str, Any]:
    """The keeper's ``start`` message for ``spec``."""
    return {
        "run": spec.run_id,
        "argv": spec.argv,
        "env": spec.env,
        "cwd": spec.cwd,
        "log": str(spec.log_path),
        "run_file": str(runfile.path_for(spec.log_path, spec.run_id)),
        "timeout": spec.timeout,
        "stall_timeout": spec.stall_timeout,
        "kill_grace": spec.kill_grace,
        "max_log_bytes": spec.max_log_bytes,
    }


def raw_result(ended: runfile.Ended | None, stopped_here: bool) -> RawResult:
    """What the classifier is given; an unknown end (nothing recorded) is an interruption."""
    if ended is None:
        return RawResult(exit_code=None, interrupted=True)
    return RawResult(
        exit_code=ended.exit_code,
        signal=ended.signal,
        timed_out=ended.timed_out,
        stalled=ended.stalled,
        interrupted=stopped_here or ended.stopped,
        stdout_tail=ended.stdout_tail,
        stderr_tail=ended.stderr_tail,
        output_bytes=ended.output_bytes,
        log_error=ended.log_error,
        codex=CodexFacts(**ended.codex) if ended.codex else None,
    )


def _start_error(reply: dict[str, Any], spec: LaunchSpec) -> Exception:
    kind, message = reply.get("kind"), str(reply.get("message"))
    if kind == "cwd":
        return SpawnError("cwd", message)
    if kind == "log":
        return OSError(reply.get("errno") or 0, message, str(spec.log_path))
    return SpawnError("runner", message)


class _Followed:
    """What the two kinds of local run share: the spec, the recorded ref, the stop reason."""

    def __init__(self, spec: LaunchSpec, ref: RunRef) -> None:
        self.spec = spec
        self._ref = ref
        self.stop_reason: str | None = None

    @property
    def ref(self) -> RunRef:
        return self._ref

    def describe(self) -> str | None:
        return None

    def recorded(self) -> None:
        return None


class LocalRun(_Followed):
    """A run this daemon's keeper started; see ``batchd.engines.Run``."""

    def __init__(self, keeper: KeeperLink, spec: LaunchSpec, pid: int, start: int | None) -> None:
        super().__init__(spec, RunRef(pid=pid, pid_start_time=start))
        self._keeper = keeper

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._keeper.stop(self.spec.run_id)

    def recorded(self) -> None:
        self._keeper.recorded(self.spec.run_id)

    async def wait(self) -> RawResult:
        msg = await self._keeper.ended(self.spec.run_id)
        ended = runfile.from_dict(msg.get("record")) if msg is not None else None
        if not isinstance(ended, runfile.Ended):
            ended = await _unheld(self.spec, self._ref)  # the keeper went away
        return raw_result(ended, self.stop_reason is not None)


class FoundRun(_Followed):
    """A run found again after a restart, held by the keeper of an earlier daemon."""

    def __init__(
        self,
        spec: LaunchSpec,
        ref: RunRef,
        held: runfile.Held | None = None,
        ended: runfile.Ended | None = None,
    ) -> None:
        super().__init__(spec, ref)
        self._held = held
        self._ended = ended
        self._path = runfile.path_for(spec.log_path, spec.run_id)
        self._scope: anyio.CancelScope | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def wait(self) -> RawResult:
        if self._ended is None:
            await self._runner_gone()
            self._ended = await self._recorded()
        return raw_result(self._ended, self.stop_reason is not None)

    async def _runner_gone(self) -> None:
        """Until the runner exits; a stop ends its group from here meanwhile."""
        pid, start = self._ref.pid, self._ref.pid_start_time
        pidfd = _pidfd(pid, start)
        if pidfd is not None:
            try:
                with anyio.CancelScope() as self._scope:
                    if self.stop_reason is None:
                        await anyio.wait_readable(pidfd)
            finally:
                self._scope = None
                os.close(pidfd)
        if self.stop_reason is not None and pid is not None and procfs.is_alive(pid, start):
            with anyio.CancelScope(shield=True):
                await kill_group(pid, self.spec.kill_grace)

    async def _recorded(self) -> runfile.Ended | None:
        """The keeper's record of the end, once written; None if it went away without one."""
        held = self._held
        while True:
            record = runfile.read(self._path)
            if isinstance(record, runfile.Ended):
                return record
            if held is None or not procfs.is_alive(held.keeper_pid, held.keeper_start):
                if held is not None:
                    exited_child(held.keeper_pid)  # after a re-exec it is our child: reap it
                record = runfile.read(self._path)  # written just before it went
                return record if isinstance(record, runfile.Ended) else None
            await anyio.sleep(RECORD_POLL_S)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _pidfd(pid: int | None, start: int | None) -> int | None:
    """A pidfd of the live process ``pid`` that started at ``start``; None if it is gone."""
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if not procfs.is_alive(pid, start):  # checked after the open: the fd is of this process
        os.close(fd)
        return None
    return fd


async def _unheld(spec: LaunchSpec, ref: RunRef) -> runfile.Ended | None:
    """A run no keeper holds any more: what it recorded, else its group is ended (None)."""
    path = runfile.path_for(spec.log_path, spec.run_id)
    record = runfile.read(path)
    runfile.discard_temp(path)  # no keeper writes it any more
    if isinstance(record, runfile.Ended):
        return record
    if ref.pid is not None and procfs.is_alive(ref.pid, ref.pid_start_time):
        with anyio.CancelScope(shield=True):
            await kill_group(ref.pid, spec.kill_grace)
    return None


class LocalEngine:
    name = "local"
    keeps_runs = False  # a plain stop stops them (runner.on_stop = "stop"); they can be left
    runs_checks = False  # the daemon runs the check after the run (batchd.checking)

    def __init__(self, env: Mapping[str, str] | None = None, state_dir: Path | None = None) -> None:
        """``env``: the keeper's environment (the runner's own is in each ``LaunchSpec``);
        ``state_dir``: where ``keepers.lock`` is (None: no lock, for a test's engine)."""
        self._lock = state_dir / KEEPERS_LOCK if state_dir is not None else None
        self._settled = False
        self._env = {
            k: v
            for k, v in (os.environ if env is None else env).items()
            if k != "NOTIFY_SOCKET" and not k.startswith(("LISTEN_", "WATCHDOG_"))
        }
        self._keeper: KeeperLink | None = None
        self._old_keepers: set[int] = set()  # keepers of earlier daemons that are our children

    def _keeper_now(self) -> KeeperLink:
        if self._keeper is None or self._keeper.lost:
            self._settled = True  # from its own first keeper on, nothing earlier to wait for
            try:
                self._keeper = KeeperLink(self._env, self._lock)
            except OSError as e:
                raise SpawnError("runner", f"cannot start the keeper of local runs: {e}") from None
        return self._keeper

    async def start(self, spec: LaunchSpec) -> Run:
        self._reap_old_keepers()
        for _ in range(2):
            keeper = self._keeper_now()
            try:
                with anyio.fail_after(START_TIMEOUT_S):
                    reply = await keeper.start(order(spec))
            except TimeoutError:
                why = f"the keeper of local runs (pid {keeper.pid}) did not answer a start"
                raise SpawnError("runner", why) from None
            except KeeperGone:
                # Gone with our order: what it may have started runs unheld. Stop it, and
                # try once more with a new keeper.
                await self.stop_orphans(spec.run_id, set())
                continue
            if reply.get("op") != "started":
                raise _start_error(reply, spec)
            return LocalRun(keeper, spec, int(reply["pid"]), reply.get("start"))
        raise SpawnError("runner", "the keeper of local runs exited twice while starting a run")

    async def reattach(self, ref: RunRef, spec: LaunchSpec) -> Run | None:
        """The run recorded as ``ref``, found again through its run file (module docstring)."""
        await self._keepers_settled()
        path = runfile.path_for(spec.log_path, spec.run_id)
        record = runfile.read(path)
        if isinstance(record, runfile.Held):
            if procfs.is_alive(record.keeper_pid, record.keeper_start):
                if procfs.parent(record.keeper_pid) == os.getpid():
                    self._old_keepers.add(record.keeper_pid)  # after a re-exec: ours to reap
                return FoundRun(spec, ref, held=record)
            record = runfile.read(path)  # it may have ended just now
        if isinstance(record, runfile.Ended):
            runfile.discard_temp(path)  # final: nothing writes it any more
            return FoundRun(spec, ref, ended=record)
        await _unheld(spec, ref)
        return None

    async def stop_orphans(self, run_id_prefix: str, known: set[str]) -> list[str]:
        """Stop every live process whose ``BATCHD_RUN_ID`` starts with the prefix and names
        no run in ``known``."""
        await self._keepers_settled()
        stopped = []
        for pid in procfs.with_env(f"BATCHD_RUN_ID={run_id_prefix}".encode()):
            if procfs.env_value(pid, "BATCHD_RUN_ID") in known:
                continue
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            with anyio.CancelScope(shield=True):
                if pgid == os.getpgid(0):  # in our own group: never signal the group
                    os.kill(pid, 9)
                else:
                    await kill_group(pgid, 5.0)
            stopped.append(f"process {pid} (group {pgid})")
        return stopped

    def reconfigure(self, cfg: Config) -> None:
        return None  # nothing of its own to configure

    async def aclose(self) -> None:
        """Let go of the keeper: it goes on with the runs left to it, or exits."""
        if self._keeper is not None:
            await self._keeper.aclose()
        self._reap_old_keepers()

    async def _keepers_settled(self) -> None:
        """Once, before looking for runs (recovery, before any keeper of this daemon):
        until every keeper of an earlier daemon has written its run files (it holds
        ``keepers.lock`` shared until then)."""
        if self._settled or self._lock is None:
            return
        self._settled = True
        try:
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warning("cannot open %s (%s): not waiting for earlier keepers", self._lock, e)
            return
        try:
            with anyio.move_on_after(SETTLE_TIMEOUT_S) as scope:
                while not _try_lock(fd):
                    await anyio.sleep(RECORD_POLL_S)
            if scope.cancelled_caught:
                log.warning("a keeper of local runs did not write its run files in time")
        finally:
            os.close(fd)  # the exclusive lock, if taken, goes with it

    def _reap_old_keepers(self) -> None:
        self._old_keepers = {pid for pid in self._old_keepers if not exited_child(pid)}
