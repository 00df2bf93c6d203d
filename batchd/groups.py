"""Process groups and the children that come back to us: signal, look, reap, subreaper.

The synchronous pieces of ending a runner's process group, shared by the
daemon's hooks (``engines/process.py``, async) and the keeper that holds the
local runs (``keeper.py``, a plain loop). A leaf over the standard library
and ``procfs``: the keeper imports it and must start fast. Nothing here waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Mapping, Sequence

from batchd import procfs

_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int | bytes) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants of our children are re-parented to us."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_name(name: str) -> bool:
    """The process's name in ``ps`` and ``/proc/PID/comm`` (15 bytes at most)."""
    return _prctl(_PR_SET_NAME, name.encode()[:15])


class NotStarted(Exception):
    """The process could not start; ``kind`` says what to fix: ``cwd`` or ``runner``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def start_in_session(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    stdout: int,
    stderr: int,
    what: str = "runner",
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (never through a shell) in a new session, stdin /dev/null; what
    ``what`` is names it in a ``NotStarted`` error (a missing cwd, a missing program)."""
    if not os.path.isdir(cwd):
        raise NotStarted("cwd", f"working directory {cwd} does not exist")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        if e.filename == cwd and not os.path.isdir(cwd):
            raise NotStarted("cwd", f"working directory {cwd} does not exist") from None
        program = argv[0] if argv else "?"
        why = e.strerror or str(e)
        raise NotStarted("runner", f"cannot start {what} {program!r}: {why}") from None


def group_alive(pgid: int) -> bool:
    """Some process (a zombie counts) is still in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def members_left(pgid: int) -> bool:
    """A live (not zombie) member is left in group ``pgid``. Reap your own zombies first."""
    return group_alive(pgid) and bool(procfs.group_members(pgid))


def reap_children(keep: set[int]) -> int:
    """Reap the exited children of this process, except those in ``keep``; how many."""
    reaped = 0
    for pid in procfs.children(os.getpid()):
        if pid in keep:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped
