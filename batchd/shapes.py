"""The shapes of the control protocol (SPEC 7), defined once for the daemon and batchctl.

Every request's ``args`` and every reply's ``result`` is a ``TypedDict`` here.
The daemon validates ``args`` against them with msgspec (``server.py``) and
its commands and views are typed to return the replies; batchctl imports this
module only for type checking (``if TYPE_CHECKING``), so it costs batchctl's
start-up nothing. ``tests/test_protocol_shapes.py`` checks live replies
against these shapes. The morning report's shapes are ``reportshapes``'.

A ``BatchRef`` is a batch id, the batch's ``seq`` (an integer), or ``"last"``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec

BatchRef = str | int
Index = Annotated[int, msgspec.Meta(ge=0)]

# --- args -------------------------------------------------------------------------------


class NoArgs(TypedDict):
    pass


class BatchArgs(TypedDict):
    batch_id: BatchRef


class PauseArgs(TypedDict):
    batch_id: NotRequired[BatchRef | None]
    now: NotRequired[bool]


class ResumeArgs(TypedDict):
    batch_id: NotRequired[BatchRef | None]
    all: NotRequired[bool]


class SkipArgs(TypedDict):
    batch_id: BatchRef
    index: Index


class LogsArgs(TypedDict):
    batch_id: BatchRef
    index: NotRequired[Index | None]
    follow: NotRequired[bool]
    all: NotRequired[bool]


class ConsentArgs(TypedDict):
    enabled: bool


class PruneArgs(TypedDict):
    older_than_days: NotRequired[Annotated[int, msgspec.Meta(ge=0)]]
    dry_run: NotRequired[bool]


class LimitArgs(TypedDict):
    clear: NotRequired[bool]
    runner: NotRequired[str | None]  # a profile; None with clear: every profile


# --- replies ----------------------------------------------------------------------------


class Ping(TypedDict):
    pong: bool
    pid: int
    version: str


class DaemonInfo(TypedDict):
    pid: int
    version: str
    backend: str
    engine: str
    uptime_s: float


class ProblemItem(TypedDict):
    kind: str
    message: str
    batch_id: str | None


class RunningItem(TypedDict):
    batch_id: str
    seq: int
    name: str
    feature_index: int
    total_features: int
    feature: str
    attempt: int
    started_at: str | None  # None while its before_feature hook runs
    pid: int | None
    job_id: str | None
    job_state: str | None  # the cluster's state of the job (slurm), else None
    log_path: str
    # A worktree batch's (SPEC 15; always sent by this version): its worktree and branch.
    worktree: NotRequired[str | None]
    branch: NotRequired[str | None]


class BatchItem(TypedDict):
    batch_id: str
    name: str
    seq: int
    status: str
    pause_reason: str | None
    total_features: int
    completed: int
    failed: int
    skipped: int
    current_index: int
    retry_enabled: bool
    circuit_breaker_open: bool
    consecutive_failures: int
    next_attempt_at: str | None
    cost_usd: float
    eta_s: float | None
    created_at: str
    updated_at: str
    cwd: str | None  # as submitted
    workdir: str  # where its features run (cwd, else runner.cwd, else home)
    source_type: str
    runner: str  # its runner profile ("default": [runner])
    limit_until: str | None  # its profile waits for the agent's usage limit until then
    # SPEC 15, always sent by this version: "worktree" or None; its features side by side;
    # its branch batchd/<batch_id> once its first feature ran; its worktree while there
    # (kept: it holds uncommitted changes); what worktree.merge_into_base did, in words.
    isolation: NotRequired[str | None]
    parallel: NotRequired[bool]
    branch: NotRequired[str | None]
    worktree: NotRequired[str | None]
    base_forward: NotRequired[str | None]


class Paths(TypedDict):
    config: str
    spool_dir: str
    state_dir: str
    socket: str


class LimitWaitItem(TypedDict):
    runner: str  # the profile
    until: str  # nothing of it starts before this (ISO 8601 UTC)
    since: str
    message: str  # the agent's words
    in_words: str  # "waiting for claude's usage limit: until ..., in 3 h 12 min"


class RejectedItem(TypedDict):
    name: str  # as it is in spool/rejected/ (sanitized for display)
    reason: str  # its .error sidecar


class Status(TypedDict):
    daemon: DaemonInfo
    queue_paused: bool
    pause_reason: str | None
    problems: list[ProblemItem]
    retry_enabled: bool
    slots: int
    running: list[RunningItem]
    current: RunningItem | None
    next_retry_at: str | None
    finished_total: int
    batches: list[BatchItem]
    total_cost_usd: float
    paths: Paths
    limit_waits: list[LimitWaitItem]
    # The newest rejected spool files still in rejected/ (at most 5), and how many there are.
    # Always sent by this version; a daemon before it (still running after an upgrade) has none.
    rejected: NotRequired[list[RejectedItem]]
    rejected_total: NotRequired[int]


class BatchList(TypedDict):
    batches: list[BatchItem]


class Show(TypedDict):
    batch: BatchItem
    feature_states: list[str]  # completed, failed, skipped, running, pending or cancelled
    running: RunningItem | None  # its running feature (pid, or Slurm job and state)
    running_all: NotRequired[list[RunningItem]]  # every one (several in a parallel batch)
    state: dict[str, Any]  # state.json as stored
    retry: dict[str, Any]  # retry_state.json as stored


class Paused(TypedDict):
    batch_id: str | None
    queue_paused: bool
    status: str | None
    stopped_running: bool  # a running feature was stopped (--now)
    stopped: int  # how many


class Resumed(TypedDict):
    resumed: list[str]
    queue_resumed: bool
    queue_paused: bool
    notes: list[str]  # e.g. a batch that will pause again at once, and why


class Cancelled(TypedDict):
    batch_id: str
    status: str
    stopped_running: bool


class Requeued(TypedDict):
    batch_id: str
    requeued: list[int]
    status: str


class Skipped(TypedDict):
    batch_id: str
    index: int
    status: str
    stopped_running: bool


class BreakerReset(TypedDict):
    batch_id: str
    circuit_breaker_open: bool
    consecutive_failures: int


class AttemptLog(TypedDict):
    index: int
    attempt: int
    path: str
    text: str
    truncated: bool
    session_id: NotRequired[str | None]  # the agent's conversation in that attempt


class Logs(TypedDict):
    batch_id: str
    index: int
    attempt: int
    path: str
    text: str
    truncated: bool
    session_id: NotRequired[str | None]  # the agent's conversation in that attempt
    attempts: NotRequired[list[AttemptLog]]  # with all=true: every attempt of the feature


class Consent(TypedDict):
    retry_enabled: bool
    path: str


class Pruned(TypedDict):
    removed: list[str]
    dry_run: bool


class Reloaded(TypedDict):
    config: str
    slots: int


class Limits(TypedDict):
    limit_waits: list[LimitWaitItem]  # what still waits (after a clear: what is left)
    cleared: list[str]  # the profiles whose wait this command ended


# --- stream events (watch, logs --follow) ------------------------------------------------


class Restarting(TypedDict):
    pid: int  # of the daemon now; after a re-exec the same
    runs_left: int  # features left running, followed again by the next start
    via: Literal["systemd", "exec"]  # systemd starts it again, or it executes itself again


class StatusEvent(TypedDict):
    type: Literal["status"]
    status: Status


class LogEvent(TypedDict):
    type: Literal["log"]
    index: int
    attempt: int
    text: str


class AttemptEvent(TypedDict):
    type: Literal["attempt"]
    index: int
    attempt: int


class WaitingEvent(TypedDict):
    type: Literal["waiting"]
    index: int
    message: str


class FollowEnd(TypedDict):
    batch_id: str
    index: int
    ended: bool
