"""Settling batchd's worktree before git works in it (SPEC 15): nothing still works
there, and a stale ``index.lock`` is gone.

A kill -9 of batchd leaves its git running on (each git is in a session of its own),
and a git killed outright (at a time limit, with its agent) leaves its ``index.lock``,
after which every git in that worktree fails. Each git call of the worktree modules
carries ``BATCHD_GIT_WORKTREE=<the worktree>`` in its environment, so a later batchd
finds a git an earlier one left (``busy``), waits for it (``quiet``), and only then
removes a lock that is still there (``settle``).

Never: remove a lock in a work tree batchd did not make, or while any process works in
that worktree (a git of batchd's, an agent's git, a runner's leftover).
"""

from __future__ import annotations

import logging
import os
import stat

import anyio
import anyio.to_thread

from batchd import procfs
from batchd.worktreeplan import Problem, is_ours

log = logging.getLogger("batchd.worktree")

MARK = "BATCHD_GIT_WORKTREE"
TIMEOUT_S = 120.0  # one step in all (a checkout of a large repository takes a while)
_POLL_S = 0.1


def guard(root: str, path: str) -> None:
    """``Problem`` unless ``path`` is a worktree directory of batchd's under ``root``."""
    if not is_ours(root, path):
        raise Problem(f"{path} is not a worktree of batchd under {root}: batchd leaves it")


def busy(path: str) -> list[int]:
    """Processes working in ``path``: a git of batchd (marked), or anything whose cwd is in
    it (an agent's git, a leftover of a runner)."""
    marked = procfs.with_env(f"{MARK}={path}\0".encode())
    return sorted(set(marked) | set(procfs.with_cwd_under(path)))


async def quiet(path: str, timeout: float) -> None:
    """Wait until nothing works in ``path`` (a git an earlier batchd left runs on after a
    kill -9: it is in a session of its own); ``Problem`` after ``timeout``."""
    deadline = anyio.current_time() + timeout
    while pids := await anyio.to_thread.run_sync(busy, path):
        if anyio.current_time() >= deadline:
            raise Problem(
                f"processes {pids} still work in batchd's worktree {path} after "
                f"{timeout:g} s: batchd waits for them; resume when they have ended"
            )
        await anyio.sleep(_POLL_S)


def git_dir_of(path: str) -> str | None:
    """The git dir a linked worktree's ``.git`` file names (no symlink followed)."""
    try:
        fd = os.open(os.path.join(path, ".git"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 4096).decode("utf-8", "surrogateescape").strip()
    finally:
        os.close(fd)
    if not text.startswith("gitdir: "):
        return None
    return os.path.join(path, text[len("gitdir: ") :])


async def settle(root: str, path: str, *, timeout: float = TIMEOUT_S) -> bool:
    """Before batchd's own git work in its worktree ``path``, and before an attempt runs
    there (an agent's git killed at a timeout leaves its lock): when an ``index.lock`` is
    there, wait until nothing works in ``path`` any more, then remove the lock if it is
    still there (a git killed outright left it). True when a lock was removed. Without a
    lock it costs a read of ``.git`` and a ``stat``, no subprocess."""
    guard(root, path)
    git_dir = git_dir_of(path)
    if git_dir is None:
        return False
    lock = os.path.join(git_dir, "index.lock")
    if not os.path.lexists(lock):
        return False
    await quiet(path, timeout)
    try:
        os.unlink(lock)
    except FileNotFoundError:
        return False
    log.warning("removed a stale %s (no git was running in %s)", lock, path)
    return True
