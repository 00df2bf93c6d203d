"""Is a directory inside a git work tree? The cheap check, with no subprocess, that the
spool makes before it accepts a batch with ``isolation = worktree`` (SPEC 15).

It walks up from the directory looking for a ``.git`` (a directory, or the file of a
linked worktree or submodule), as git's discovery does; git itself has the last word
when the batch's first feature starts (``worktree.record_repo``).

Never: run git, read a file's content, follow the walk past the file system's root.
"""

from __future__ import annotations

import os
import stat


def find_work_tree(path: str) -> str | None:
    """The nearest directory at or above ``path`` holding a ``.git`` (a directory, or the
    file of a linked worktree or submodule); None when there is none. No subprocess."""
    here = os.path.realpath(path)  # git discovers from the physical directory
    while True:
        try:
            st = os.stat(os.path.join(here, ".git"))
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def work_tree_refusal(cwd: str, where: str) -> str | None:
    """Why a batch with ``isolation = worktree`` and this effective cwd is refused (what,
    where, what to do), or None when its cwd is in a git work tree."""
    if not os.path.isdir(cwd):
        return f"{where}: isolation = worktree needs the batch's cwd, and {cwd} does not exist"
    if find_work_tree(cwd) is not None:
        return None
    return (
        f"{where}: isolation = worktree needs the batch's cwd inside a git work tree, and "
        f"{cwd} is not (no .git in it or above it): give the batch the directory of a git "
        "repository ('# batchd: cwd = /path/to/repo' or --cwd), or drop the isolation"
    )


def refusal(where: str, isolation: str | None, cwd: str) -> str | None:
    """Why the spool refuses a batch (``where``: its file): with ``isolation = worktree``,
    an effective ``cwd`` outside a git work tree; None when it is accepted."""
    return work_tree_refusal(cwd, where) if isolation == "worktree" else None
