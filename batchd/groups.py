"""Process groups and the children that come back to us: signal, look, reap, subreaper.

The synchronous pieces of ending a runner's process group, shared by the
daemon's hooks (``engines/process.py``, async) and the keeper that holds the
local runs (``keeper.py``, a plain loop). A leaf over the standard library
and ``procfs``: the keeper imports it and must start fast. Nothing here waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
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


# Signals Python ignores that a program expects at their default (as Popen's restore_signals).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _program(argv0: str, env: Mapping[str, str], what: str) -> str:
    """The file ``argv0`` names: a path as is, else the first executable on the env's PATH."""
    if "/" in argv0:
        return argv0
    for directory in os.get_exec_path(dict(env)):
        path = os.path.join(directory, argv0)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NotStarted("runner", f"cannot start {what} {argv0!r}: {os.strerror(errno.ENOENT)}")


def spawn_in_session(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, stdout: int, stderr: int
) -> int:
    """``start_in_session`` through ``posix_spawn``: no Python runs between fork and exec,
    a fraction of ``Popen``'s cost; the pid. For a single-threaded caller whose fds are all
    close-on-exec but 0-2 (the keeper): the child starts in the caller's cwd, set here."""
    program = _program(argv[0], env, "runner")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    try:
        os.chdir(cwd)  # posix_spawn (3.11) has no cwd of its own: the child inherits ours
    except OSError as e:
        kind = "runner" if os.path.isdir(cwd) else "cwd"
        raise NotStarted(kind, f"cannot enter working directory {cwd}: {e.strerror}") from None
    try:
        return os.posix_spawn(
            program, list(argv), env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS
        )
    except OSError as e:
        why = e.strerror or str(e)
        raise NotStarted("runner", f"cannot start runner {argv[0]!r}: {why}") from None
    finally:
        os.chdir("/")


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
