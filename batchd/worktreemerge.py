"""Merges into a batch branch, and the opt-in fast-forward of the base (SPEC 15).

Owns: the merge of a parallel feature's branch into the batch branch, inside the batch's
own worktree (``merge --no-ff``, a message naming the feature; a conflict is listed and
aborted, the worktree left clean), the check after a crash whether a merge happened
(``is_merged``), the fast-forward of the base branch that ``worktree.merge_into_base``
asks for (``fast_forward_base``: ``update-ref NEW OLD``, so a base that moved is refused,
never overwritten), and the deletion of a feature branch whose commits are merged.

batchd's merge commits carry batchd's identity (``-c user.name=batchd -c
user.email=batchd@localhost``), are not signed (an unattended merge cannot answer a
passphrase prompt) and leave rerere's records alone; the repository's hooks run as they
would for the user. The caller runs one merge per batch at a time (``worktreesteps``
refuses a second ``merge``).

Never: a merge anywhere but in the batch's own worktree; a branch outside ``batchd/``
moved, except the base by ``fast_forward_base``, and only forward; a branch deleted
whose commits no other branch holds; the user's config written.

Cancellation: as ``worktree``; a cancelled merge is half done, and ``merge_feature``
repeated finishes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from batchd.gitinfo import Git, GitFailed
from batchd.worktree import branch_tip, git_for, list_worktrees
from batchd.worktreeplan import (
    HEADS,
    MERGE_IDENTITY,
    PREFIX,
    Forward,
    Problem,
    RepoRecord,
    Stay,
    changed_paths,
    names,
    plan_forward,
)
from batchd.worktreesettle import TIMEOUT_S, git_dir_of, settle

_MERGE_CONFIG = (*MERGE_IDENTITY, "-c", "commit.gpgSign=false", "-c", "rerere.enabled=false")
_STATUS = ("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")


@dataclass(frozen=True)
class Merged:
    """The feature's commits are in the batch branch, now at ``head``; ``created`` False
    when they were already (a merge repeated after a crash, or an attempt without commits)."""

    head: str
    created: bool


@dataclass(frozen=True)
class Conflict:
    """The merge conflicted and was aborted; the files git could not merge."""

    files: tuple[str, ...]

    def message(self, branch: str, into: str) -> str:
        """The transient failure's message (fed back as ``{last_error}``)."""
        names = ", ".join(self.files[:20]) + (" ..." if len(self.files) > 20 else "")
        return (
            f"merging {branch} into {into} conflicts in {len(self.files)} files: {names}; "
            f"the retry starts from the new tip of {into}"
        )


async def is_ancestor(git: Git, commit: str, of: str) -> bool:
    """Is ``commit`` in the history of ``of`` (itself included)?"""
    r = await git.call("merge-base", "--is-ancestor", commit, of)
    if r.code not in (0, 1):
        raise GitFailed(f"git merge-base in {git.cwd}: exit {r.code}: {r.why()}")
    return r.code == 0


async def _merged(git: Git, branch: str, into: str) -> tuple[str | None, bool]:
    """The tip of ``branch`` (None: there is no such branch) and whether it is in ``into``."""
    tip, into_tip = await branch_tip(git, branch), await branch_tip(git, into)
    if tip is None or into_tip is None:
        return tip, False
    return tip, await is_ancestor(git, tip, into_tip)


async def is_merged(
    repo: str,
    branch: str,
    into: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> bool:
    """Are the commits of ``branch`` in ``into`` (its head an ancestor of ``into``)?"""
    try:
        tip, merged = await _merged(Git(repo, env, timeout), branch, into)
    except GitFailed as e:
        raise Problem(f"is {branch} merged into {into}: {e}") from None
    if tip is None:
        raise Problem(f"is {branch} merged into {into}: there is no branch {branch}")
    return merged


async def merge_feature(
    root: str,
    batch_worktree: str,
    branch: str,
    message: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Merged | Conflict:
    """Merge ``branch`` into the branch of ``batch_worktree`` (batchd's, under ``root``),
    there. First what a killed earlier merge left is undone (a stale index.lock, a half
    merge, a half-written tree); a branch already merged is not merged again."""
    git = git_for(batch_worktree, batch_worktree, env, timeout, _MERGE_CONFIG)
    try:
        tip = await branch_tip(git, branch)
        if tip is None:
            raise Problem(f"merging {branch} in {batch_worktree}: the branch does not exist")
        await restore(git, root, batch_worktree, timeout)
        head = await git.head()
        if head is None:
            raise Problem(f"merging {branch}: {batch_worktree} has no commit checked out")
        if await is_ancestor(git, tip, head):
            return Merged(head, created=False)
        r = await git.call("merge", "--no-ff", "--no-edit", "-m", message, HEADS + branch)
        after = await git.head()
        if r.code == 0 and after is not None and after != head:
            return Merged(after, created=True)
        files = names(await git.ok("diff", "--name-only", "--diff-filter=U", "-z"))
        await restore(git, root, batch_worktree, timeout)
    except GitFailed as e:
        raise Problem(f"merging {branch} in {batch_worktree}: {e}") from None
    if files:
        return Conflict(tuple(files))
    raise Problem(f"git merge of {branch} in {batch_worktree} failed: {r.why()}")


async def restore(git: Git, root: str, path: str, timeout: float) -> None:
    """Make batchd's merge worktree ``path`` clean at its HEAD: an earlier git there ended,
    its stale index.lock removed, a half merge aborted, what a killed merge wrote undone.
    Only for a parallel batch's worktree, where nothing but batchd's merges happen."""
    await settle(root, path, timeout=timeout)
    git_dir = git_dir_of(path)
    if git_dir is not None and os.path.lexists(os.path.join(git_dir, "MERGE_HEAD")):
        await git.call("merge", "--abort")
    if changed_paths(await git.ok(*_STATUS)):
        await git.ok("reset", "--hard", "-q", "HEAD")
        await git.ok("clean", "-f", "-d", "-q")
        if changed_paths(await git.ok(*_STATUS)):
            raise Problem(f"batchd's worktree {path} could not be made clean: see git status")


async def fast_forward_base(
    record: RepoRecord,
    branch: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> Forward | Stay:
    """``worktree.merge_into_base``: move the base branch forward to ``branch`` when
    ``plan_forward`` allows it, with ``update-ref`` given the old value (a base that moved
    in between is refused by git, then reported). Repeated, a base already there is done."""
    git = Git(record.repo, env, timeout)
    try:
        plan = await _plan(git, record, branch)
        if isinstance(plan, Stay):
            return plan
        why = f"batchd: fast-forward {plan.base} to {branch}"
        r = await git.call("update-ref", "-m", why, HEADS + plan.base, plan.new, plan.old)
        if r.code == 0:
            return plan
        again = await _plan(git, record, branch)  # it moved or was checked out meanwhile
    except GitFailed as e:
        raise Problem(f"fast-forward of {record.base_ref} to {branch}: {e}") from None
    if isinstance(again, Stay):
        return again
    raise Problem(f"git would not fast-forward {plan.base} to {branch}: {r.why()}")


async def _plan(git: Git, record: RepoRecord, branch: str) -> Forward | Stay:
    batch_tip = await branch_tip(git, branch)
    if batch_tip is None:
        raise Problem(f"fast-forward to {branch}: the branch does not exist")
    base = record.base_ref
    base_tip = await branch_tip(git, base) if base is not None else None
    held = tuple(e.path for e in await list_worktrees(git) if base and e.branch == HEADS + base)
    ancestor = base_tip is not None and await is_ancestor(git, base_tip, batch_tip)
    return plan_forward(
        record=record,
        branch=branch,
        base_tip=base_tip,
        batch_tip=batch_tip,
        checked_out_in=held,
        base_is_ancestor=ancestor,
    )


async def drop_merged_branch(
    repo: str,
    branch: str,
    into: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> bool:
    """Delete batchd's feature ``branch`` when its commits are in ``into`` and no work tree
    has it checked out (its worktree is removed first). False when it stays; True when
    it is gone (or was)."""
    if not branch.startswith(PREFIX) or branch == into:
        raise Problem(f"batchd deletes only its own feature branches, not {branch}")
    git = Git(repo, env, timeout)
    try:
        tip, merged = await _merged(git, branch, into)
        if tip is None:
            return True
        if not merged:
            return False
        if any(e.branch == HEADS + branch for e in await list_worktrees(git)):
            return False
        r = await git.call("update-ref", "-d", HEADS + branch, tip)
    except GitFailed as e:
        raise Problem(f"deleting {branch}: {e}") from None
    return r.code == 0
