"""The Slurm engine: each attempt is one ``sbatch`` job (SPEC section 12).

Owns submission (``sbatch --parsable``), the wrapper script that runs the
program without a shell ever evaluating it and records its exit status beside
the attempt log, one poller for all active jobs (``squeue`` once per
``poll_interval``, then ``scontrol show job`` for the jobs that left the queue,
then the exit-status file once Slurm has forgotten the job), cancelling
(``scancel``), re-attaching after a daemon restart and cancelling unrecorded
jobs of this state dir. Every Slurm command runs as a subprocess through anyio:
nothing blocks the event loop.

What it must never do: decide what an outcome means (it hands ``classify`` a
``RawResult`` with the job's end state), cancel a job because the daemon stops
(jobs outlive the daemon by design), or pass feature text through a shell.

Cancellation: cancelling ``Run.wait`` only stops waiting; the job runs on and
a later ``wait`` (or ``reattach`` after a restart) picks it up again.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from batchd import store
from batchd.classify import RawResult, sanitize
from batchd.engines import LaunchSpec, RunRef, SpawnError

if TYPE_CHECKING:
    from batchd.config import Config

log = logging.getLogger("batchd.slurm")

JOB_NAME_PREFIX = "batchd-"  # + the attempt's BATCHD_RUN_ID
WRAPPER_NAME = "slurm-job.sh"
LOG_TAIL = 64 * 1024
CLIENT_ENV = ("SLURM_CONF",)  # taken from the engine's env even for sbatch: which cluster to ask
# Seconds for one Slurm command: with slurmctld down, sbatch gives up after ~10 s, squeue ~20 s.
CLIENT_TIMEOUT = 120.0
# States after which a job runs no more (squeue no longer lists it). COMPLETING is not one.
END_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

# Runs "$@" as it is: the shell never evaluates an argument. The exit status goes to a
# file named after the log and this job's id, so a stale file of another job can never be
# taken for this one's. On scancel Slurm signals every process of the job: the trap keeps
# the wrapper alive until the program has exited, so its status is recorded too.
WRAPPER = """\
#!/bin/sh
# Written by batchd (batchd/engines/slurm.py); rewritten at each start. Do not edit.
# Usage: sbatch ... slurm-job.sh ATTEMPT_LOG PROGRAM [ARG...]
umask 077
log=$1
shift
status="$log.slurm-$SLURM_JOB_ID.exit"
trap 'terminated=1' TERM
"$@" </dev/null
code=$?
printf '%s\\n' "$code" >"$status.tmp" && mv -f "$status.tmp" "$status"
exit "$code"
"""


def status_path(log_path: Path, job_id: str) -> Path:
    """The file where the wrapper records the exit status of job ``job_id``."""
    return log_path.with_name(f"{log_path.name}.slurm-{job_id}.exit")


def time_limit_minutes(timeout: float) -> int | None:
    """``--time`` for an attempt timeout in seconds: whole minutes rounded up; None for none."""
    return max(1, math.ceil(timeout / 60)) if timeout > 0 else None


def parse_duration(text: str) -> float | None:
    """Slurm's ``[days-][hours:]minutes:seconds`` (squeue ``%M``, scontrol ``RunTime``)."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None
    seconds = sum(int(p) * 60**i for i, p in enumerate(reversed(parts)))
    return float(seconds + (int(days) * 86400 if days else 0))


@dataclass(frozen=True)
class JobInfo:
    """What ``scontrol show job`` says of one job."""

    state: str
    name: str
    exit_code: int | None
    signal: int | None
    run_time: float | None


_FIELD_RE = re.compile(r"(?:^|\s)(JobName|JobState|ExitCode|RunTime)=(\S*)")


def parse_show_job(text: str) -> JobInfo | None:
    """The first job of ``scontrol show job -o`` output (first occurrence of each key wins)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD_RE.findall(text):
        fields.setdefault(key, value)
    if "JobState" not in fields:
        return None
    code, _, sig = fields.get("ExitCode", "").partition(":")
    exit_code = int(code) if code.isdigit() else None
    signal = int(sig) if sig.isdigit() and int(sig) != 0 else None
    return JobInfo(
        state=fields["JobState"],
        name=fields.get("JobName", ""),
        exit_code=None if signal is not None else exit_code,
        signal=signal,
        run_time=parse_duration(fields.get("RunTime", "")),
    )


def _read_status(path: Path) -> int | None:
    try:
        text = store.read_nofollow(path, limit=64)
    except (OSError, store.StoreError):
        return None
    value = text.strip()
    return int(value) if value.isdigit() else None


def _read_tail(path: Path, offset: int) -> tuple[bytes, int]:
    """The last LOG_TAIL bytes of the log written after ``offset``, and how many there are."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b"", 0
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        start = max(offset, size - LOG_TAIL)
        f.seek(start)
        return f.read(LOG_TAIL), max(0, size - offset)


def _open_log(path: Path) -> int:
    """Create the attempt log 0600 if missing (Slurm then appends); its size before the job."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class SlurmRun:
    """One attempt as a Slurm job; see ``batchd.engines.Run``."""

    def __init__(self, engine: SlurmEngine, spec: LaunchSpec, job_id: str, log_offset: int) -> None:
        self._engine = engine
        self.spec = spec
        self.job_id = job_id
        self._log_offset = log_offset
        self._state = "PENDING"
        self._deadline: float | None = None  # monotonic; set once the job is seen running
        self._stop_reason: str | None = None
        self._timed_out = False
        self._cancelled_at: float | None = None
        self._killed = False
        self._retry_at = 0.0  # after a failed scancel, not before this
        self._result: RawResult | None = None

    @property
    def ref(self) -> RunRef:
        return RunRef(job_id=self.job_id)

    def describe(self) -> str | None:
        return self._state

    def recorded(self) -> None:
        return None  # the wrapper's status file stays, as Slurm's own records do

    def stop(self, reason: str) -> None:
        if self._result is None and self._stop_reason is None:
            self._stop_reason = reason
            self._engine.wake()

    async def wait(self) -> RawResult:
        """Wait until the job has left Slurm's queue; cancel it on stop or timeout."""
        while self._result is None:
            await self._act()
            if self._result is None:
                await self._engine.next_round(self._due())
        return self._result

    # -- called by the engine's poller ----------------------------------------------

    def observe(self, state: str, run_time: float | None) -> None:
        """The job is still known to Slurm in ``state``; it has run ``run_time`` seconds."""
        self._state = state
        if (
            self._deadline is None
            and self.spec.timeout > 0
            and run_time is not None
            and state not in ("PENDING", "CONFIGURING")
        ):
            # batchd's timeout counts from the job's start, not from the time it queued.
            # Slurm counts whole seconds, rounded down: take one off so as never to end early.
            self._deadline = time.monotonic() - max(0.0, run_time - 1) + self.spec.timeout

    async def finish(self, info: JobInfo | None) -> None:
        """The job has ended (``info``) or Slurm forgot it (None): build its result."""
        self._result = await self._engine.result_of(
            self.spec,
            self.job_id,
            info,
            self._log_offset,
            timed_out=self._timed_out,
            interrupted=self._stop_reason is not None and not self._timed_out,
        )
        if info is not None:
            self._state = info.state
        self._engine.forget(self)

    @property
    def done(self) -> bool:
        return self._result is not None

    def _due(self) -> float | None:
        """When ``_act`` has something to do (monotonic time), or None."""
        if self._cancelled_at is None:
            if self._stop_reason is not None:
                due = 0.0
            elif self._deadline is not None:
                due = self._deadline
            else:
                return None
        elif not self._killed:
            due = self._cancelled_at + self.spec.kill_grace
        else:
            return None
        return max(due, self._retry_at)

    async def _act(self) -> None:
        """Cancel the job when asked or when its time is up: TERM, then KILL after kill_grace."""
        due = self._due()
        now = time.monotonic()
        if due is None or now < due:
            return
        if self._cancelled_at is None:
            self._timed_out = self._stop_reason is None
            if await self._engine.cancel(self.job_id, "TERM", pending=self._state == "PENDING"):
                self._cancelled_at = now
                return
        elif await self._engine.cancel(self.job_id, "KILL"):
            self._killed = True
            return
        self._retry_at = now + self._engine.poll_interval


class SlurmEngine:
    """Runs attempts as Slurm batch jobs (``runner.engine = "slurm"``).

    ``state_dir`` holds the wrapper script and must be on a file system that
    the compute nodes share (so do the attempt logs). ``env`` is the
    environment of the Slurm commands (``PATH``, ``SLURM_CONF``); a job's own
    environment is ``LaunchSpec.env``.
    """

    name = "slurm"
    keeps_runs = True  # a daemon stop never cancels jobs: the next start re-attaches

    def __init__(
        self,
        state_dir: Path,
        sbatch_args: Sequence[str],
        poll_interval: float,
        env: Mapping[str, str],
    ) -> None:
        self.state_dir = state_dir
        self.sbatch_args = list(sbatch_args)
        self.poll_interval = poll_interval
        self.env = dict(env)
        self._active: dict[str, SlurmRun] = {}
        self._polling = False
        self._last_poll = -math.inf
        self._changed: anyio.Event | None = None
        self._wrapper: Path | None = None

    # -- the RunnerEngine interface -------------------------------------------------

    async def start(self, spec: LaunchSpec) -> SlurmRun:
        """Submit the attempt; ``SpawnError`` when the cwd is missing or sbatch refuses it."""
        if not await anyio.to_thread.run_sync(os.path.isdir, spec.cwd):
            raise SpawnError(
                "cwd",
                f"working directory {spec.cwd} does not exist (or is not a directory): "
                "create it, or fix the batch's cwd or runner.cwd",
            )
        if "%" in str(spec.log_path):
            raise SpawnError(
                "submit",
                f"the attempt log {spec.log_path} contains '%', which sbatch would expand: "
                "choose a state_dir without '%'",
            )
        wrapper = await self._ensure_wrapper()
        offset = await anyio.to_thread.run_sync(_open_log, spec.log_path)
        sbatch = shutil.which("sbatch", path=self.env.get("PATH", os.defpath))
        if sbatch is None:
            raise SpawnError(
                "submit",
                f"sbatch not found in PATH ({self.env.get('PATH', os.defpath)}): "
                "install Slurm's client commands or set PATH in batchd's environment",
            )
        argv = [sbatch, *self.sbatch_argv(spec), str(wrapper)]
        argv += [str(spec.log_path), *spec.argv]
        try:
            with anyio.fail_after(CLIENT_TIMEOUT):
                res = await anyio.run_process(argv, env=self._submit_env(spec), check=False)
        except (OSError, TimeoutError) as e:
            raise SpawnError("submit", f"sbatch could not be run: {e}; {_SUBMIT_HINT}") from None
        job_id = res.stdout.decode(errors="replace").strip().split(";")[0]
        if res.returncode != 0 or not job_id.isdigit():
            why = sanitize(res.stderr.decode(errors="replace").strip() or f"output {job_id!r}")
            raise SpawnError(
                "submit", f"sbatch failed (exit {res.returncode}): {why}; {_SUBMIT_HINT}"
            )
        run = SlurmRun(self, spec, job_id, offset)
        self._active[job_id] = run
        return run

    def _submit_env(self, spec: LaunchSpec) -> dict[str, str]:
        """sbatch's environment, which becomes the job's: the spec's, but our cluster's config."""
        client = {k: self.env[k] for k in CLIENT_ENV if k in self.env}
        return {**spec.env, **client}

    def sbatch_argv(self, spec: LaunchSpec) -> list[str]:
        """The options of ``sbatch`` for one attempt (the wrapper and the program follow).

        ``slurm.sbatch_args`` come first: where they name an option of ours
        (``--job-name``, ``--output``, ...), ours wins (sbatch keeps the last).
        """
        argv = [
            "--parsable",
            *self.sbatch_args,
            f"--job-name={JOB_NAME_PREFIX}{spec.run_id}",
            f"--chdir={spec.cwd}",
            f"--output={spec.log_path}",
            "--open-mode=append",
            "--export=ALL",  # the job's environment is sbatch's: LaunchSpec.env
        ]
        minutes = time_limit_minutes(spec.timeout)
        if minutes is not None:
            argv.append(f"--time={minutes}")
        return argv

    async def reattach(self, ref: RunRef, spec: LaunchSpec) -> SlurmRun | None:
        """The job ``ref.job_id`` again after a restart (``spec`` as recorded for it).

        Still known to Slurm as this attempt's job (its name carries
        ``spec.run_id``) and not ended: a run that keeps waiting. Ended: a run
        whose ``wait`` returns at once, judged from Slurm's end state, else
        from the exit status the wrapper recorded. No trace at all: None.
        When Slurm cannot be asked, the job is assumed alive and the poller
        decides once it can.
        """
        if ref.job_id is None:
            return None
        job_id = ref.job_id
        res = await self._run_client("scontrol", "show", "job", "-o", job_id)
        info = parse_show_job(res.stdout) if res.returncode == 0 else None
        if res.returncode != 0 and not _unknown_job(res.stderr):
            log.warning("cannot ask Slurm about job %s (%s); waiting for it", job_id, res.stderr)
            return self._adopt(spec, job_id)
        if info is not None and info.name != JOB_NAME_PREFIX + spec.run_id:
            info = None  # the id now belongs to another job: ours is gone from Slurm
        if info is not None and info.state not in END_STATES:
            run = self._adopt(spec, job_id)
            run.observe(info.state, info.run_time)
            return run
        if info is None and await self._status(spec.log_path, job_id) is None:
            return None
        run = SlurmRun(self, spec, job_id, 0)
        await run.finish(info)
        return run

    async def stop_orphans(self, run_id_prefix: str, known: set[str]) -> list[str]:
        """Cancel this user's jobs named for a run of this state dir that is not in ``known``."""
        res = await self._run_client("squeue", "-h", "--me", "-o", "%i|%j")
        if res.returncode != 0:
            log.warning("cannot list Slurm jobs to find orphans: %s", res.stderr)
            return []
        stopped = []
        for line in res.stdout.splitlines():
            job_id, _, name = line.partition("|")
            run_id = name.removeprefix(JOB_NAME_PREFIX)
            if name == run_id or not run_id.startswith(run_id_prefix) or run_id in known:
                continue
            if await self.scancel(job_id):
                stopped.append(f"cancelled Slurm job {job_id} ({name}): no attempt records it")
            else:
                log.warning("cannot cancel unrecorded Slurm job %s (%s)", job_id, name)
        return stopped

    def reconfigure(self, cfg: Config) -> None:
        """A reload: new ``slurm.sbatch_args`` and ``poll_interval`` apply to the next jobs."""
        self.sbatch_args = list(cfg.slurm.sbatch_args)
        self.poll_interval = float(cfg.slurm.poll_interval)

    async def aclose(self) -> None:
        """Nothing to release: the poller lives in the waiters, and jobs run on by design."""

    # -- the poller -------------------------------------------------------------------

    def wake(self) -> None:
        """Wake every waiter (a stop was asked, or a poll round ended)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def next_round(self, deadline: float | None) -> None:
        """Return after the next poll round, a ``wake()``, or ``deadline`` (monotonic).

        The first waiter that finds no round in progress runs it, for every
        active job at once; the others wait for it. When that waiter is
        cancelled, the next one takes over.
        """
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        limit = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
        if self._polling:
            with anyio.move_on_after(limit):
                await changed.wait()
            return
        self._polling = True
        try:
            due = self._last_poll + self.poll_interval
            with anyio.move_on_after(min(limit, max(0.0, due - time.monotonic()))):
                await changed.wait()
            if not changed.is_set() and time.monotonic() >= due:
                self._last_poll = time.monotonic()
                await self._poll()
        finally:
            self._polling = False
            self.wake()

    async def _poll(self) -> None:
        """One ``squeue`` for all active jobs; ``scontrol`` for those it no longer lists."""
        runs = list(self._active.values())
        if not runs:
            return
        ids = ",".join(r.job_id for r in runs)
        res = await self._run_client("squeue", "-h", "-j", ids, "-o", "%i|%T|%M")
        if res.returncode != 0 and not _unknown_job(res.stderr):
            log.warning("squeue failed, job states unknown until the next poll: %s", res.stderr)
            return
        queued: dict[str, tuple[str, float | None]] = {}
        for line in res.stdout.splitlines():
            job_id, _, rest = line.partition("|")
            state, _, used = rest.partition("|")
            queued[job_id] = (state, parse_duration(used))
        for run in runs:
            listed, run_time = queued.get(run.job_id, ("", None))
            if listed and listed not in END_STATES:
                run.observe(listed, run_time)
            elif not run.done:
                await self._settle(run)

    async def _settle(self, run: SlurmRun) -> None:
        res = await self._run_client("scontrol", "show", "job", "-o", run.job_id)
        if res.returncode != 0 and not _unknown_job(res.stderr):
            log.warning("scontrol show job %s failed: %s", run.job_id, res.stderr)
            return
        info = parse_show_job(res.stdout) if res.returncode == 0 else None
        if info is not None and info.state not in END_STATES:
            run.observe(info.state, info.run_time)  # left squeue a moment ago; not ended yet
            return
        if info is None and await self._status(run.spec.log_path, run.job_id) is None:
            log.warning("Slurm job %s ended and was forgotten without an exit status", run.job_id)
        await run.finish(info)

    # -- results ----------------------------------------------------------------------

    async def result_of(
        self,
        spec: LaunchSpec,
        job_id: str,
        info: JobInfo | None,
        log_offset: int,
        *,
        timed_out: bool,
        interrupted: bool,
    ) -> RawResult:
        """What job ``job_id`` left: its end state, exit status and the attempt log's tail."""
        status = await self._status(spec.log_path, job_id)
        tail, size = await anyio.to_thread.run_sync(_read_tail, spec.log_path, log_offset)
        exit_code = status if status is not None else info.exit_code if info else None
        signal = info.signal if info is not None and status is None else None
        if info is None and status is None and not timed_out:
            interrupted = True  # no trace of how it ended: run it again
        return RawResult(
            exit_code=exit_code,
            signal=signal,
            timed_out=timed_out,
            interrupted=interrupted,
            stdout_tail=tail,
            stderr_tail=tail,
            output_bytes=size,
            cluster_state=info.state if info is not None else None,
        )

    async def _status(self, log_path: Path, job_id: str) -> int | None:
        return await anyio.to_thread.run_sync(_read_status, status_path(log_path, job_id))

    # -- helpers ----------------------------------------------------------------------

    def forget(self, run: SlurmRun) -> None:
        self._active.pop(run.job_id, None)

    def _adopt(self, spec: LaunchSpec, job_id: str) -> SlurmRun:
        run = SlurmRun(self, spec, job_id, 0)
        self._active[job_id] = run
        return run

    async def cancel(self, job_id: str, signal: str, pending: bool = False) -> bool:
        """Send ``signal`` to every process of the job (``pending``: first remove it if queued).

        ``scancel --signal --full`` reaches the wrapper and the program (the
        wrapper then records the program's status). Slurm makes a signal to a
        job that has not started wait until it starts, so a job last seen
        pending is first cancelled outright if it still is. A job Slurm no
        longer lets us signal has ended already. False when Slurm could not be
        asked (slurmctld unreachable): try again later. Slurm turns a KILL into
        its own end of the job (TERM again, KILL after max(KillWait, 5 s)), so
        a program that ignores TERM is gone kill_grace + 5 s or more after stop.
        """
        if pending:
            await self._run_client("scancel", "--state=PENDING", job_id)
        res = await self._run_client("scancel", f"--signal={signal}", "--full", job_id)
        if res.returncode == 0 or _unknown_job(res.stderr):
            return True
        log.warning("cannot signal Slurm job %s (%s): %s", job_id, signal, res.stderr)
        return False

    async def scancel(self, job_id: str) -> bool:
        """Cancel a job the Slurm way (TERM, then KILL after Slurm's KillWait)."""
        res = await self._run_client("scancel", job_id)
        if res.returncode != 0:
            log.debug("scancel %s: %s", job_id, res.stderr)
        return res.returncode == 0

    def _client(self, name: str) -> str:
        return shutil.which(name, path=self.env.get("PATH", os.defpath)) or name

    async def _run_client(self, name: str, *args: str) -> _Reply:
        argv = [self._client(name), *args]
        try:
            with anyio.fail_after(CLIENT_TIMEOUT):
                res = await anyio.run_process(argv, env=self.env, check=False)
        except (OSError, TimeoutError) as e:
            return _Reply(-1, "", f"{name}: {e}")
        err = sanitize(res.stderr.decode(errors="replace").strip())
        return _Reply(res.returncode, res.stdout.decode(errors="replace"), err)

    async def _ensure_wrapper(self) -> Path:
        if self._wrapper is None:
            self._wrapper = await anyio.to_thread.run_sync(self._write_wrapper)
        return self._wrapper

    def _write_wrapper(self) -> Path:
        store.ensure_dir(self.state_dir)
        store.write_durable(self.state_dir, WRAPPER_NAME, WRAPPER.encode())
        path = self.state_dir / WRAPPER_NAME
        os.chmod(path, 0o700)
        return path


@dataclass(frozen=True)
class _Reply:
    returncode: int
    stdout: str
    stderr: str


_SUBMIT_HINT = "check slurm.sbatch_args and that slurmctld answers (sinfo), then resume"


def _unknown_job(stderr: str) -> bool:
    """Slurm's answer for a job id it does not know (never submitted, or forgotten)."""
    return "Invalid job id" in stderr
