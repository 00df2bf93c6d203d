"""Where an attempt runs: the boundary between the queue and a runner engine.

The queue, the policy and the state never know which engine runs an attempt.
An engine starts an attempt from a ``LaunchSpec``, hands back a ``Run`` to
wait on or stop, finds its runs again after a daemon restart, and stops the
runs of this state dir that nobody recorded. Two engines exist: ``local``
(a process group on this machine, ``engines/local.py``) and ``slurm`` (a
batch job, ``engines/slurm.py``). A third one (Kubernetes Jobs, HTCondor) is a
new module implementing ``RunnerEngine``; see docs/engines.md for the mapping.

What an engine must never do: decide what an outcome means (that is
``classify``), write state files, or pass feature text through a shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from batchd.classify import RawResult

if TYPE_CHECKING:
    from batchd.config import Config

SpawnKind = Literal["cwd", "runner", "submit"]


class SpawnError(Exception):
    """The attempt could not be started, and it is not the feature's fault.

    ``kind`` says what to fix: ``cwd`` (the working directory is missing),
    ``runner`` (the program cannot be started), ``submit`` (the cluster
    refused the job: controller down, bad ``slurm.sbatch_args``). No attempt
    is charged; the queue (or the batch, for its own cwd) is paused.
    """

    def __init__(self, kind: SpawnKind, message: str) -> None:
        super().__init__(message)
        self.kind: SpawnKind = kind
        self.message = message


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """Everything an engine needs to start one attempt."""

    run_id: str  # BATCHD_RUN_ID: "<state key>-<batch id>-<index>-<attempt>-<random>"
    argv: list[str]  # runner.command, rendered; one element per argument, never a shell
    env: dict[str, str]  # the whole environment of the program
    cwd: str
    log_path: Path  # the attempt log; a re-run of an interrupted attempt appends to it
    timeout: float = 0.0  # seconds; 0 = none
    stall_timeout: float = 0.0  # seconds without output before the run is stopped; 0 = none
    kill_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    max_log_bytes: int = 10 * 1024 * 1024
    # The check after the agent, for an engine that runs it itself (``runs_checks``: Slurm runs
    # it inside the job, SPEC 14): its argv (empty: none) and verify.timeout (0 = none).
    check_argv: tuple[str, ...] = ()
    check_timeout: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RunRef:
    """What the attempt records durably so that the run can be found after a restart."""

    pid: int | None = None  # local: the process group leader
    pid_start_time: int | None = None  # local: its start time (clock ticks since boot)
    job_id: str | None = None  # slurm: the job id


class Run(Protocol):
    """One started attempt.

    ``wait`` returns once the attempt has ended: it exited, timed out
    (``timed_out``), or was stopped by ``stop`` (``interrupted``). Runs outlive
    the daemon (SPEC 12, 16): a local run is held by the keeper, a Slurm job by
    the cluster. Cancellation: cancelling ``wait`` only stops the waiting; the
    run goes on, and ``reattach`` finds it again after a restart.
    """

    @property
    def ref(self) -> RunRef: ...

    def describe(self) -> str | None:
        """A short live state for ``status`` (a Slurm job state such as ``RUNNING``), or None."""
        ...

    def stop(self, reason: str) -> None:
        """End the attempt now; ``wait`` then returns with ``interrupted``. Idempotent."""
        ...

    def recorded(self) -> None:
        """The outcome ``wait`` returned is durable in the state: what the engine kept to
        judge the run after a restart may go."""
        ...

    async def wait(self) -> RawResult: ...


class RunnerEngine(Protocol):
    """Starts attempts, and finds them again after a restart."""

    name: str
    # True (Slurm): a daemon stop always leaves the runs running. False (local): a daemon
    # stop stops them (recorded interrupted), unless it leaves them on purpose
    # (``batchctl restart``, ``runner.on_stop = "leave"``). Either way the next start
    # re-attaches to what runs.
    keeps_runs: bool
    # True (Slurm): the check after the agent runs inside the run itself, where the work is
    # (``LaunchSpec.check_argv``), and ``RawResult.check`` says how it ended. False (local):
    # the daemon runs the check after the run (``batchd.checking``).
    runs_checks: bool

    async def start(self, spec: LaunchSpec) -> Run:
        """Start the attempt; ``SpawnError`` when it cannot be started."""
        ...

    async def reattach(self, ref: RunRef, spec: LaunchSpec) -> Run | None:
        """After a daemon restart: the run recorded as ``ref``, to wait on again.

        A run that ended meanwhile comes back as a ``Run`` whose ``wait`` returns
        at once with what it left behind. None when it cannot be waited on (a
        local run nothing holds any more, which the engine then has stopped; a
        Slurm job that left no trace): the attempt is recorded ``interrupted``
        and runs again.
        """
        ...

    async def stop_orphans(self, run_id_prefix: str, known: set[str]) -> list[str]:
        """Stop every run of this state dir (its run id starts with ``run_id_prefix``)
        whose run id is not in ``known``; say what was stopped, one line each."""
        ...

    def reconfigure(self, cfg: Config) -> None:
        """A good reload: take the engine's own settings (``[slurm]``) from ``cfg``."""
        ...

    async def aclose(self) -> None:
        """Release what the engine holds (pollers, helper files); runs are left as they are."""
        ...
