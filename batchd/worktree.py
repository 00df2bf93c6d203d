"""Worktrees of batchd in the user's repository (SPEC 15): record, make, remove.

Owns the git work of a worktree's life: the batch's record at its first feature
(``record_repo``), a branch with its worktree made whole whatever a killed earlier run
left (``ensure_worktree``), the removal at the end, keeping a worktree with changes no
commit holds (``remove_worktree``), and git's stale records of batchd's worktrees
forgotten (``forget_stale``). Waiting for an earlier git and a stale ``index.lock``
are ``worktreesettle``'s. Each step is safe to repeat after a kill -9 at any point:
the design note is in ``worktreesteps``. What to do is decided by ``worktreeplan``;
this module observes and carries it out.

git runs through ``gitinfo.Git`` (argv, ``-C DIR``, a time limit, its own process
group, no ``GIT_DIR`` and the like), each call with ``BATCHD_GIT_WORKTREE`` naming the
worktree it works on, so that a later batchd finds a git an earlier one left running.

Never: a checkout, stash, reset, commit or merge in a work tree batchd did not make; a
branch outside ``batchd/`` moved; the user's config written; ``git worktree prune``
(it would drop the user's own stale records too: batchd removes its records one by
one); a directory deleted that is not its own under ``worktree.dir``; a symlink followed.

Cancellation: a cancelled call stops its git (``gitinfo.Git``); the step is then
half-done, which is what repeating it is for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread

from batchd.gitinfo import Git, GitFailed, GitResult
from batchd.worktreeplan import (
    HALF_MADE,
    HEADS,
    TRASH_SUFFIX,
    DirState,
    Problem,
    RepoRecord,
    Seen,
    WorktreeEntry,
    changed_paths,
    is_commit_id,
    is_ours,
    parse_worktree_list,
    plan_ensure,
)
from batchd.worktreesettle import MARK, TIMEOUT_S, guard, quiet, settle

log = logging.getLogger("batchd.worktree")

SHOWN_FILES = 20  # changed files named when a worktree is kept


@dataclass(frozen=True)
class Worktree:
    path: str
    branch: str
    head: str | None  # the commit checked out


@dataclass(frozen=True)
class Removed:
    path: str


@dataclass(frozen=True)
class Kept:
    """Not removed: ``why`` in words, and the first of the changed files."""

    path: str
    why: str
    files: tuple[str, ...] = ()


# --- the batch's record ------------------------------------------------------------------


async def record_repo(
    cwd: str, *, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S
) -> RepoRecord:
    """What a worktree batch records at its first feature: the top level of ``cwd``'s work
    tree (real path), the branch checked out there (None when detached), its commit, and
    ``cwd``'s place in it. Read only. ``Problem`` outside a work tree, before the first
    commit, or when ``cwd`` is a directory the commit does not hold."""
    git = Git(cwd, env, timeout)
    try:
        top = await git.call("rev-parse", "--show-toplevel")
        if top.code != 0:
            raise Problem(
                f"the batch's cwd {cwd} is not inside a git work tree ({top.why()}): "
                "isolation = worktree needs one"
            )
        repo = os.path.realpath(os.fsdecode(top.stdout[:-1]))
        prefix = os.fsdecode((await git.ok("rev-parse", "--show-prefix"))[:-1]).rstrip("/")
        commit = await git.call("rev-parse", "--verify", "-q", "HEAD^{commit}")
        base_commit = commit.stdout.decode("ascii", "replace").strip()
        if commit.code != 0 or not is_commit_id(base_commit):
            raise Problem(
                f"the repository {repo} has no commit yet: a worktree batch branches "
                "from one; make a first commit and resume the batch"
            )
        sym = await git.call("symbolic-ref", "-q", "HEAD")
        ref = os.fsdecode(sym.stdout.strip())
        base_ref = ref.removeprefix(HEADS) if sym.code == 0 and ref.startswith(HEADS) else None
        if prefix and (await git.call("cat-file", "-e", f"{base_commit}:{prefix}/")).code:
            raise Problem(
                f"the batch's cwd {cwd} is the directory {prefix} of {repo}, which commit "
                f"{base_commit[:12]} does not hold (nothing in it is committed): commit it, "
                "or give the batch a cwd that is committed"
            )
    except GitFailed as e:
        raise Problem(f"git in {cwd}: {e}") from None
    return RepoRecord(repo=repo, base_ref=base_ref, base_commit=base_commit, subdir=prefix)


# --- running git on one of batchd's worktrees --------------------------------------------


def git_for(
    cwd: str,
    worktree: str,
    env: Mapping[str, str] | None,
    timeout: float,
    config: tuple[str, ...] = (),
) -> Git:
    """git in ``cwd`` working on batchd's ``worktree`` (marked in its environment)."""
    base = os.environ if env is None else env
    return Git(cwd, {**base, MARK: worktree}, timeout, config)


async def list_worktrees(git: Git) -> list[WorktreeEntry]:
    return parse_worktree_list(await git.ok("worktree", "list", "--porcelain", "-z"))


async def branch_tip(git: Git, branch: str) -> str | None:
    """The commit of ``branch``, None when it does not exist."""
    r = await git.call("rev-parse", "--verify", "-q", f"{HEADS}{branch}^{{commit}}")
    tip = r.stdout.decode("ascii", "replace").strip()
    return tip if r.code == 0 and is_commit_id(tip) else None


async def tip_of(
    repo: str, branch: str, *, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S
) -> str | None:
    """The commit of ``branch`` in ``repo`` (a feature attempt starts at its batch branch's
    tip); None when there is no such branch."""
    try:
        return await branch_tip(Git(repo, env, timeout), branch)
    except GitFailed as e:
        raise Problem(f"the tip of {branch} in {repo}: {e}") from None


def prepare_root(root: str) -> str:
    """``worktree.dir``, made (0700) when missing; its real path. ``Problem`` when it is
    not a directory."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(root, mode=0o700)
    if not os.path.isdir(root):
        raise Problem(f"worktree.dir {root} is not a directory: point it at one")
    return os.path.realpath(root)


def _dir_state(path: str) -> DirState:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        raise Problem(f"{path} is a symbolic link where batchd makes a worktree: remove it")
    if not stat.S_ISDIR(st.st_mode):
        return "debris"
    names = os.listdir(path)
    return "tree" if ".git" in names else ("empty" if not names else "debris")


# --- making a worktree whole ---------------------------------------------------------------


async def _observe(git: Git, path: str, branch: str) -> Seen:
    entries = await list_worktrees(git)
    here = os.path.normpath(path)
    entry = next((e for e in entries if os.path.normpath(e.path) == here), None)
    holder = next(
        (e for e in entries if e.branch == HEADS + branch and os.path.normpath(e.path) != here),
        None,
    )
    tip = await branch_tip(git, branch)
    return Seen(path, branch, entry, holder, tip, _dir_state(path))


async def ensure_worktree(
    repo: str,
    root: str,
    path: str,
    branch: str,
    start: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Worktree:
    """The worktree ``path`` (under ``root``, batchd's ``worktree.dir``, real path) on
    ``branch``, made whole: reused when it is, else what a killed earlier run left is
    cleared and the worktree added, on a new ``branch`` at the commit ``start``, or on
    the existing ``branch`` wherever it is (batchd never moves a branch back)."""
    guard(root, path)
    if not is_commit_id(start):
        raise Problem(f"worktree {path}: {start!r} is not a commit id")
    git = git_for(repo, path, env, timeout)
    try:
        seen = await _observe(git, path, branch)
        steps = plan_ensure(seen)
        if "clear" in steps:  # a git an earlier batchd left may still be making it
            await quiet(path, timeout)
            seen = await _observe(git, path, branch)
            steps = plan_ensure(seen)
        if steps == ("reuse",):
            return Worktree(path, branch, seen.entry.head if seen.entry else None)
        log.info("worktree %s on %s: %s", path, branch, ", ".join(steps))
        added = await _carry_out(git, root, seen, steps, start, timeout)
        if added.code == 0:  # git made it whole (the usual case: no second look)
            return Worktree(path, branch, seen.branch_tip or start)
        seen = await _observe(git, path, branch)  # a failing post-checkout hook, say
    except GitFailed as e:
        raise Problem(f"worktree {path} on {branch}: {e}") from None
    if plan_ensure(seen) != ("reuse",) or seen.entry is None:
        raise Problem(f"git could not make the worktree {path} on {branch}: {added.why()}")
    return Worktree(path, branch, seen.entry.head)


async def _carry_out(
    git: Git, root: str, seen: Seen, steps: tuple[str, ...], start: str, timeout: float
) -> GitResult:
    """The steps of ``plan_ensure`` in order; what ``git worktree add`` answered."""
    path, branch = seen.path, seen.branch
    added = GitResult(1, b"", b"no worktree add ran")
    for step in steps:
        if step == "forget_holder" and seen.holder is not None:
            await git.call("worktree", "remove", "-f", "-f", seen.holder.path)
        elif step == "clear":
            await _clear(git, root, path, timeout)
        elif step == "add":
            added = await git.call("worktree", "add", "-q", path, branch)
        elif step == "add_new_branch":
            args = ("worktree", "add", "-q", "--no-track", "-b", branch, path, start)
            added = await git.call(*args)
    return added


async def _clear(git: Git, root: str, path: str, timeout: float) -> None:
    """Remove batchd's worktree ``path`` whatever its state: rename the directory to its
    trash (one atomic step: a kill after it never leaves a half-deleted worktree that
    looks changed), drop git's record of it, delete the trash."""
    trash = path + TRASH_SUFFIX
    guard(root, trash)
    if os.path.lexists(path):
        await quiet(path, timeout)
        if os.path.lexists(trash):
            await anyio.to_thread.run_sync(_delete, trash)
        os.rename(path, trash)
    entries = await list_worktrees(git)
    if any(os.path.normpath(e.path) == os.path.normpath(path) for e in entries):
        r = await git.call("worktree", "remove", "-f", "-f", path)
        if r.code != 0:
            raise Problem(f"git would not forget the removed worktree {path}: {r.why()}")
    if os.path.lexists(trash):
        await anyio.to_thread.run_sync(_delete, trash)


def _delete(path: str) -> None:
    """Delete a directory tree (or a file) of batchd's own; never follows a symlink."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


async def forget_stale(
    repo: str, root: str, *, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S
) -> list[str]:
    """``git worktree prune``, for batchd's own records only: drop git's records of
    worktrees under ``root`` whose directory is gone. The paths forgotten. (The user's
    stale records, a worktree on a disk not mounted now, say, are left alone.)"""
    git = git_for(repo, root, env, timeout)
    try:
        stale = [
            e.path
            for e in await list_worktrees(git)
            if e.prunable is not None and is_ours(root, e.path)
        ]
        for path in stale:
            await git.ok("worktree", "remove", "-f", "-f", path)
    except GitFailed as e:
        raise Problem(f"forgetting batchd's stale worktrees in {repo}: {e}") from None
    return stale


# --- removal at the end --------------------------------------------------------------------


async def remove_worktree(
    repo: str,
    root: str,
    path: str,
    *,
    discard: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Removed | Kept:
    """Remove batchd's worktree ``path`` (its branch stays). Kept, with the reason and the
    changed files, when it holds changes no commit holds (unless ``discard``: ``prune``)
    or someone locked it. Repeating it finishes a removal a kill interrupted."""
    guard(root, path)
    git = git_for(repo, path, env, timeout)
    try:
        if not discard and _dir_state(path) == "tree":
            kept = await _why_keep(git, root, path, env, timeout)
            if kept is not None:
                return kept
        await _clear(git, root, path, timeout)
    except GitFailed as e:
        raise Problem(f"removing worktree {path}: {e}") from None
    return Removed(path)


async def _why_keep(
    git: Git, root: str, path: str, env: Mapping[str, str] | None, timeout: float
) -> Kept | None:
    entries = await list_worktrees(git)
    entry = next((e for e in entries if os.path.normpath(e.path) == path), None)
    if entry is None:  # a .git here that git does not list: not ours to judge
        return Kept(path, "git's records do not list it; look at it, then prune")
    if entry.prunable is not None or entry.locked == HALF_MADE:
        return None  # half made: nothing of an agent's in it
    if entry.locked is not None:
        return Kept(path, f"it is locked ({entry.locked or 'no reason given'})")
    await settle(root, path, timeout=timeout)
    status = git_for(path, path, env, timeout)
    out = await status.ok("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    files = changed_paths(out)
    if not files:
        return None
    return Kept(path, f"{len(files)} changed files no commit holds", tuple(files[:SHOWN_FILES]))
