"""The Slurm engine: each attempt is one ``sbatch`` job (SPEC section 12). The IO shell.

Owns running Slurm's client commands (``sbatch``, ``squeue``, ``scontrol``,
``scancel``) as subprocesses through anyio, so nothing blocks the event loop;
the one poller for all active jobs (a round at each ``poll_interval``, or
sooner when a job has a signal due: one ``squeue`` for all of them, then
``scontrol show job`` for those it no longer lists); re-attaching after a
daemon restart; cancelling unrecorded jobs of this state dir; and the files
of a job (the wrapper script, the attempt log, the exit-status file).

Every decision is made by a pure module and only carried out here: the
words exchanged with Slurm (``slurm_protocol``), each job's phase, its
deadlines and the order of cancellations (``slurm_job``), what a job's
traces mean (``slurm_outcome``). Time comes from the injected clock
(monotonic by default).

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
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from batchd.classify import RawResult, sanitize
from batchd.clock import Clock, MonotonicClock
from batchd.engines import LaunchSpec, RunRef, SpawnError
from batchd.engines.slurm_files import open_log, probe, read_status, read_traces, write_wrapper
from batchd.engines.slurm_job import JobState, SlurmJob, cancel_commands, round_due
from batchd.engines.slurm_outcome import (
    Alive,
    Ended,
    Unasked,
    end_result,
    left_no_trace,
    read_show_job,
    reattach_plan,
)
from batchd.engines.slurm_protocol import (
    ORPHAN_FORMAT,
    SQUEUE_FORMAT,
    SUBMIT_HINT,
    JobInfo,
    Reply,
    log_path_problem,
    orphans,
    parse_sbatch,
    parse_squeue,
    sbatch_argv,
    wrapper_args,
)

if TYPE_CHECKING:
    from batchd.config import Config

log = logging.getLogger("batchd.slurm")

CLIENT_ENV = ("SLURM_CONF",)  # taken from the engine's env even for sbatch: which cluster to ask
# Seconds for one Slurm command: with slurmctld down, sbatch gives up after ~10 s, squeue ~20 s.
CLIENT_TIMEOUT = 120.0


class SlurmRun:
    """One attempt as a Slurm job; see ``batchd.engines.Run``. Its phase is ``job``."""

    def __init__(self, engine: SlurmEngine, spec: LaunchSpec, job_id: str, log_offset: int) -> None:
        self._engine = engine
        self.spec = spec
        self.job_id = job_id
        self.log_offset = log_offset
        self.job = SlurmJob(
            spec.timeout, spec.kill_grace, JobState(log_size=log_offset), spec.stall_timeout
        )
        self.result: RawResult | None = None

    @property
    def ref(self) -> RunRef:
        return RunRef(job_id=self.job_id)

    def describe(self) -> str | None:
        return self.job.state.slurm_state

    def recorded(self) -> None:
        return None  # the wrapper's status file stays, as Slurm's own records do

    def stop(self, reason: str) -> None:
        if self.job.stop():
            log.info("cancelling Slurm job %s: %s", self.job_id, reason)
            self._engine.wake()

    async def wait(self) -> RawResult:
        """Wait until the job has left Slurm's queue; the poller cancels it on stop or timeout."""
        while self.result is None:
            await self._engine.next_round()
        return self.result

    @property
    def done(self) -> bool:
        return self.result is not None


class SlurmEngine:
    """Runs attempts as Slurm batch jobs (``runner.engine = "slurm"``).

    ``state_dir`` holds the wrapper script and must be on a file system that
    the compute nodes share (so do the attempt logs). ``env`` is the
    environment of the Slurm commands (``PATH``, ``SLURM_CONF``); a job's own
    environment is ``LaunchSpec.env``. ``clock`` times the polls and every
    deadline (monotonic seconds; tests pass a ``ManualClock``).
    """

    name = "slurm"
    keeps_runs = True  # a daemon stop never cancels jobs: the next start re-attaches
    runs_checks = True  # the check runs inside the job, after the agent (SPEC 14)

    def __init__(
        self,
        state_dir: Path,
        sbatch_args: Sequence[str],
        poll_interval: float,
        env: Mapping[str, str],
        clock: Clock | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.sbatch_args = list(sbatch_args)
        self.poll_interval = poll_interval
        self.env = dict(env)
        self.clock: Clock = clock if clock is not None else MonotonicClock()
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
        problem = log_path_problem(spec.log_path)
        if problem is not None:
            raise SpawnError("submit", problem)
        wrapper = await self._ensure_wrapper()
        offset = await anyio.to_thread.run_sync(open_log, spec.log_path)
        job_id = await self._submit([*self.sbatch_argv(spec), str(wrapper)], spec)
        run = SlurmRun(self, spec, job_id, offset)
        self._active[job_id] = run
        return run

    async def _submit(self, options: list[str], spec: LaunchSpec) -> str:
        """Run sbatch with ``options`` and the program; the job id, or ``SpawnError``."""
        path = self.env.get("PATH", os.defpath)
        sbatch = shutil.which("sbatch", path=path)
        if sbatch is None:
            raise SpawnError(
                "submit",
                f"sbatch not found in PATH ({path}): "
                "install Slurm's client commands or set PATH in batchd's environment",
            )
        argv = [sbatch, *options, *wrapper_args(spec)]
        reply = await self._run(argv, self._submit_env(spec))
        job_id = parse_sbatch(reply)
        if job_id is not None:
            return job_id
        if reply.returncode == -1:
            why = f"sbatch could not be run: {reply.stderr}"
        else:
            output = reply.stderr or sanitize(f"output {reply.stdout.strip()!r}")
            why = f"sbatch failed (exit {reply.returncode}): {output}"
        raise SpawnError("submit", f"{why}; {SUBMIT_HINT}")

    def _submit_env(self, spec: LaunchSpec) -> dict[str, str]:
        """sbatch's environment, which becomes the job's: the spec's, but our cluster's config."""
        client = {k: self.env[k] for k in CLIENT_ENV if k in self.env}
        return {**spec.env, **client}

    def sbatch_argv(self, spec: LaunchSpec) -> list[str]:
        """The options of ``sbatch`` for one attempt (see ``slurm_protocol.sbatch_argv``)."""
        return sbatch_argv(self.sbatch_args, spec)

    async def reattach(self, ref: RunRef, spec: LaunchSpec) -> SlurmRun | None:
        """The job ``ref.job_id`` again after a restart (``spec`` as recorded for it).

        Still known to Slurm as this attempt's job and not ended: a run that
        keeps waiting. Ended: a run whose ``wait`` returns at once, judged from
        Slurm's end state, else from the exit status the wrapper recorded. No
        trace at all: None. When Slurm cannot be asked, the job is assumed
        alive and the poller decides once it can.
        """
        if ref.job_id is None:
            return None
        job_id = ref.job_id
        reply = await self._client("scontrol", "show", "job", "-o", job_id)
        sighting = read_show_job(reply, spec.run_id)
        status = await anyio.to_thread.run_sync(read_status, spec.log_path, job_id)
        if reattach_plan(sighting, status) == "gone":
            return None
        run = SlurmRun(self, spec, job_id, 0)
        match sighting:
            case Unasked(why):
                log.warning("cannot ask Slurm about job %s (%s); waiting for it", job_id, why)
                self._active[job_id] = run
            case Alive(state, run_time):
                run.job.seen(state, run_time, self.clock.now())
                self._active[job_id] = run
            case Ended(info):
                await self._finish(run, info)
        return run

    async def stop_orphans(self, run_id_prefix: str, known: set[str]) -> list[str]:
        """Cancel this user's jobs named for a run of this state dir that is not in ``known``."""
        res = await self._client("squeue", "-h", "--me", "-o", ORPHAN_FORMAT)
        if res.returncode != 0:
            log.warning("cannot list Slurm jobs to find orphans: %s", res.stderr)
            return []
        stopped = []
        for job_id, name in orphans(res.stdout, run_id_prefix, known):
            if (await self._client("scancel", job_id)).returncode == 0:
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

    async def next_round(self) -> None:
        """Return after the next round of the poller, or a ``wake()``.

        The first waiter that finds no round in progress runs it, for every
        active job at once; the others wait for it. When that waiter is
        cancelled, the next one takes over. A round starts at the next poll
        or when a job has a signal due, whichever is first (a stop wakes it).
        """
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if self._polling:
            await changed.wait()
            return
        self._polling = True
        try:
            dues = (run.job.due() for run in self._active.values())
            await self.clock.sleep_until(
                round_due(self._last_poll, self.poll_interval, dues), changed
            )
            await self._probe()
            now = self.clock.now()
            await self._signal_due(now)
            if now >= self._last_poll + self.poll_interval:
                self._last_poll = now
                await self._poll()
        finally:
            self._polling = False
            self.wake()

    async def _probe(self) -> None:
        """Look at the log's size and the program's exit status of each job a timer of the
        program's may still stop (timeout, stall), so that ``tick`` judges on fresh facts."""
        watched = [run for run in self._active.values() if run.job.probe_wanted()]
        if not watched:
            return
        where = [(run.spec.log_path, run.job_id) for run in watched]
        found = await anyio.to_thread.run_sync(lambda: [probe(*w) for w in where])
        now = self.clock.now()
        for run, (size, program_ended) in zip(watched, found, strict=True):
            if not run.done:
                run.job.probed(size, program_ended, now)

    async def _signal_due(self, now: float) -> None:
        """Send every signal due at ``now``, pending jobs first (``cancel_commands``)."""
        due = [(run.job_id, sig) for run in self._active.values() if (sig := run.job.tick(now))]
        for scancel in cancel_commands(due):
            reply = await self._client("scancel", *scancel.args)
            run = self._active.get(scancel.job_id or "")
            if run is None:
                continue
            if reply.answered:  # a job Slurm no longer knows has ended already
                run.job.sent(now)
            else:
                log.warning(
                    "cannot signal Slurm job %s (%s): %s", run.job_id, scancel.args[0], reply.stderr
                )
                run.job.send_failed(now, self.poll_interval)

    async def _poll(self) -> None:
        """One ``squeue`` for all active jobs; ``scontrol`` for those it no longer lists."""
        runs = list(self._active.values())
        if not runs:
            return
        ids = ",".join(r.job_id for r in runs)
        res = await self._client("squeue", "-h", "-j", ids, "-o", SQUEUE_FORMAT)
        if not res.answered:
            log.warning("squeue failed, job states unknown until the next poll: %s", res.stderr)
            return
        listed = parse_squeue(res.stdout)
        for run in runs:
            seen = listed.get(run.job_id)
            if seen is not None and seen.alive:
                run.job.seen(seen.state, seen.run_time, self.clock.now())
            elif not run.done:
                await self._settle(run)

    async def _settle(self, run: SlurmRun) -> None:
        """A job squeue no longer lists: ended, or not quite yet (Slurm says which)."""
        reply = await self._client("scontrol", "show", "job", "-o", run.job_id)
        match read_show_job(reply, run.spec.run_id):
            case Unasked(why):
                log.warning("scontrol show job %s failed: %s", run.job_id, why)
            case Alive(state, run_time):  # left squeue a moment ago; not ended yet
                run.job.seen(state, run_time, self.clock.now())
            case Ended(info):
                await self._finish(run, info)

    # -- results ----------------------------------------------------------------------

    async def _finish(self, run: SlurmRun, info: JobInfo | None) -> None:
        """The job has ended (``info``) or Slurm forgot it (None): record what it left."""
        log_path, job_id, offset = run.spec.log_path, run.job_id, run.log_offset
        traces = await anyio.to_thread.run_sync(read_traces, log_path, job_id, offset)
        if left_no_trace(info, traces.status):
            log.warning("Slurm job %s ended and was forgotten without an exit status", run.job_id)
        run.job.ended(info.state if info is not None else None)
        run.result = end_result(
            info, traces, cause=run.job.state.cause, check_timeout=run.spec.check_timeout
        )
        self._active.pop(run.job_id, None)

    # -- helpers ----------------------------------------------------------------------

    async def _client(self, name: str, *args: str) -> Reply:
        """Run one Slurm client command (found in the engine's PATH) with the engine's env."""
        found = shutil.which(name, path=self.env.get("PATH", os.defpath)) or name
        reply = await self._run([found, *args], self.env)
        if reply.returncode == -1:
            return Reply(-1, "", f"{name}: {reply.stderr}")
        return reply

    async def _run(self, argv: list[str], env: Mapping[str, str]) -> Reply:
        """Run ``argv``; a ``Reply`` with stderr sanitised, -1 when it could not be run."""
        try:
            with anyio.fail_after(CLIENT_TIMEOUT):
                res = await anyio.run_process(argv, env=env, check=False)
        except (OSError, TimeoutError) as e:
            return Reply(-1, "", str(e))
        err = sanitize(res.stderr.decode(errors="replace").strip())
        return Reply(res.returncode, res.stdout.decode(errors="replace"), err)

    async def _ensure_wrapper(self) -> Path:
        if self._wrapper is None:
            self._wrapper = await anyio.to_thread.run_sync(write_wrapper, self.state_dir)
        return self._wrapper
