"""Test-only crash and fault switch: ``BATCHD_FAILPOINTS``.

Not a feature: the torture tests use it to kill the daemon at named points and
to make state writes fail as on a full disk. Unset (always, in production) it
costs one dict lookup per point. Syntax, comma separated:

- ``NAME``: ``SIGKILL`` this process the first time point NAME is reached;
- ``NAME@N``: ... the N-th time (1-based);
- ``NAME:pause`` (or ``NAME@N:pause``): instead of dying, create
  ``$BATCHD_FAILPOINT_DIR/NAME.hit`` and block until ``NAME.go`` appears there
  (at most 60 s), so that a test can act inside a window and then let go;
- ``enospc=PATH``: while the file PATH exists, every durable state write fails
  with ``ENOSPC`` (delete PATH and the disk has "space" again).

Points: ``before_claim`` (spool: a file read and found acceptable, not yet
claimed), ``after_claim`` (claimed into ``.claimed/``, no batch yet),
``after_batch_write`` (batch state written, source not moved),
``after_spawn`` (runner started, its attempt and pid not yet written),
``after_attempt_record`` (attempt with pid written, runner running),
``after_runner_exit`` (runner ended, nothing recorded), ``before_outcome_write``
(outcome computed, not yet written), ``after_audit_write`` (a decision's audit
record written, the state that applies it not yet), ``inside_state_write``
(``store.write_durable``, every durable write of any state file: the temp file
written and fsynced and still open, not yet renamed over the file; a kill here
leaves the temp file behind, and ``@N`` picks the N-th write since the start).
The git steps of worktree batches (SPEC 15; ``worktreelife``, ``worktreeend``), each
between the durable record that the step begins and git, and between git and the
record of its end: ``before_worktree_create``, ``after_worktree_create`` (the batch's
worktree or a feature attempt's), ``before_merge``, ``after_merge``,
``before_worktree_remove``, ``after_worktree_remove``, ``before_forward``,
``after_forward`` (``worktree.merge_into_base``).
"""

from __future__ import annotations

import errno
import os
import signal
import time

_POINTS: dict[str, tuple[int, bool]] = {}  # name -> (nth hit, pause instead of kill)
_HITS: dict[str, int] = {}
_ENOSPC_FLAG: str | None = None


def configure(spec: str | None) -> None:
    global _ENOSPC_FLAG
    _POINTS.clear()
    _HITS.clear()
    _ENOSPC_FLAG = None
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("enospc="):
            _ENOSPC_FLAG = item.removeprefix("enospc=")
            continue
        item, _, action = item.partition(":")
        name, _, nth = item.partition("@")
        _POINTS[name] = (int(nth) if nth else 1, action == "pause")


def hit(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when the switch names this point."""
    if not _POINTS or name not in _POINTS:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    nth, pause = _POINTS[name]
    if _HITS[name] != nth:
        return
    if not pause:
        os.kill(os.getpid(), signal.SIGKILL)
    where = os.environ.get("BATCHD_FAILPOINT_DIR", ".")
    with open(os.path.join(where, f"{name}.hit"), "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(where, f"{name}.go")) and time.monotonic() < deadline:
        time.sleep(0.01)


def check_write() -> None:
    """Raise ENOSPC as a full disk would, while the flag file exists."""
    if _ENOSPC_FLAG is not None and os.path.exists(_ENOSPC_FLAG):
        raise OSError(errno.ENOSPC, "No space left on device (injected by BATCHD_FAILPOINTS)")


configure(os.environ.get("BATCHD_FAILPOINTS"))
