"""Worktree batches, the pure part (SPEC 15): names, directories, what git's records say,
and what to do with what was found there.

Owns: the names of batchd's branches and worktree directories (one function each, so a
name is written once), the directory a feature runs in, the message of a merge, the
parser of ``git worktree list --porcelain -z`` and of ``git status --porcelain -z``, the
decision how to make a worktree whole whatever an earlier, killed attempt left
(``plan_ensure``), and whether the base branch may be fast-forwarded, and if not why
(``plan_forward``).

Never: run git, read or write a file, look at the clock. ``worktree`` and
``worktreemerge`` observe and carry out what this module decides.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from batchd.classify import sanitize

PREFIX = "batchd/"
HEADS = "refs/heads/"
# The lock reason ``git worktree add`` writes while it makes a worktree (in the C locale)
# and removes when the checkout is done: a record still locked so was half made.
HALF_MADE = "initializing"
TRASH_SUFFIX = ".removing"  # a worktree directory being removed is renamed to this first
MERGE_IDENTITY = ("-c", "user.name=batchd", "-c", "user.email=batchd@localhost")
SUBJECT_CHARS = 72
BODY_CHARS = 2000
_COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class Problem(Exception):
    """Something batchd will not do or cannot finish in a repository; the message says
    what, where, and what to do (in lower case, like every message a user sees)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- names ---------------------------------------------------------------------------------


def batch_branch(batch_id: str) -> str:
    """The batch's branch: its result, which stays after the batch."""
    return f"{PREFIX}{batch_id}"


def feature_branch(batch_id: str, index: int, attempt: int) -> str:
    """The branch of one attempt of a feature of a parallel batch.

    SPEC 15 writes ``batchd/<batch_id>/<index>``, which git cannot make: a branch is a
    file under ``refs/heads``, so beside the file ``batchd/<batch_id>`` there can be no
    directory of that name ("cannot lock ref ... exists; cannot create ..."). The
    feature's branch takes the batch's name with ``-<index>`` instead: it still lives
    under ``batchd/`` and sorts right after its batch. One branch per attempt
    (``-a<attempt>``): a retry starts from the batch branch's new tip on a new branch,
    so no commit of an earlier attempt becomes unreachable.
    """
    return f"{PREFIX}{batch_id}-{index}-a{attempt}"


def worktree_dir(root: str, branch: str) -> str:
    """Where the worktree of a batchd branch lives: under ``worktree.dir``, named after the
    branch (``<root>/<batch_id>``, ``<root>/<batch_id>-<index>-a<attempt>``)."""
    if not branch.startswith(PREFIX) or "/" in branch[len(PREFIX) :]:
        raise ValueError(f"not a branch of batchd: {branch!r}")
    return posixpath.join(root, branch[len(PREFIX) :])


def is_ours(root: str, path: str) -> bool:
    """Is ``path`` a worktree directory (or its trash) that batchd makes under ``root``?
    Both real paths; the one guard before anything is deleted."""
    parent, name = posixpath.split(path)
    return parent == root.rstrip("/") and name.startswith("batch-") and ".." not in name


def run_dir(worktree: str, subdir: str) -> str:
    """Where a feature of a worktree batch runs: its worktree (the batch's, or its own in a
    parallel batch) plus the subdirectory the batch's cwd has in its repository."""
    parts = [p for p in subdir.split("/") if p]
    if subdir.startswith("/") or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a subdirectory of a repository: {subdir!r}")
    return posixpath.join(worktree, *parts) if parts else worktree


def merge_message(batch_id: str, index: int, feature: str) -> str:
    """The message of batchd's merge of a feature: a subject naming the feature, then its
    whole text (sanitised, cut at ``BODY_CHARS``)."""
    text = sanitize(" ".join(feature.split()), BODY_CHARS)
    head = f"batchd: feature {index} of {batch_id}: "
    room = SUBJECT_CHARS - len(head)
    summary = text if len(text) <= room else text[: max(room - 3, 0)].rstrip() + "..."
    return f"{head}{summary}\n\n{text}\n"


def is_commit_id(text: str | None) -> bool:
    return text is not None and _COMMIT_RE.fullmatch(text) is not None


def short(commit: str | None) -> str:
    return commit[:12] if commit else "(none)"


# --- the batch's record ------------------------------------------------------------------


class RepoRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What batchd records when a worktree batch's first feature starts (SPEC 15 ``git``)."""

    repo: str  # the top level of the work tree of the batch's cwd, after realpath
    base_ref: str | None  # the branch checked out there ("main"); None when detached
    base_commit: str
    subdir: str = ""  # the batch's cwd relative to ``repo`` ("" at the top)


# --- git's records -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorktreeEntry:
    """One work tree as ``git worktree list --porcelain -z`` gives it."""

    path: str
    head: str | None = None
    branch: str | None = None  # "refs/heads/..."; None when detached (or bare)
    locked: str | None = None  # the reason ("" when none was given); None when not locked
    prunable: str | None = None  # why git would prune it (its directory is gone); else None
    bare: bool = False


def parse_worktree_list(out: bytes) -> list[WorktreeEntry]:
    """``git worktree list --porcelain -z``: attributes NUL-terminated, records ended by an
    empty attribute; paths as git wrote them (any byte but NUL)."""
    entries: list[WorktreeEntry] = []
    fields: dict[str, str] = {}
    for raw in out.split(b"\0"):
        if not raw:
            if "worktree" in fields:
                entries.append(_entry(fields))
            fields = {}
            continue
        key, _, value = raw.decode("utf-8", "surrogateescape").partition(" ")
        fields[key] = value
    if "worktree" in fields:
        entries.append(_entry(fields))
    return entries


def _entry(fields: dict[str, str]) -> WorktreeEntry:
    return WorktreeEntry(
        path=fields["worktree"],
        head=fields.get("HEAD"),
        branch=fields.get("branch"),
        locked=fields.get("locked"),
        prunable=fields.get("prunable"),
        bare="bare" in fields,
    )


def changed_paths(out: bytes) -> list[str]:
    """``git status --porcelain=v1 -z --untracked-files=all --no-renames``: every path with
    a change no commit holds (staged, modified, deleted, untracked; ignored files are not
    listed by git, and do not count)."""
    return [e[3:].decode("utf-8", "surrogateescape") for e in out.split(b"\0") if len(e) > 3]


def names(out: bytes) -> list[str]:
    """``git diff --name-only -z``: the paths, NUL-terminated."""
    return [n.decode("utf-8", "surrogateescape") for n in out.split(b"\0") if n]


# --- making a worktree whole -------------------------------------------------------------

DirState = Literal["missing", "empty", "tree", "debris"]  # tree: it holds a .git entry
Action = Literal["forget_holder", "clear", "add", "add_new_branch", "reuse"]


@dataclass(frozen=True)
class Seen:
    """What git and the file system say about one worktree batchd wants at ``path``."""

    path: str
    branch: str
    entry: WorktreeEntry | None  # git's record at ``path``
    holder: WorktreeEntry | None  # a record at another path that has ``branch`` checked out
    branch_tip: str | None  # None: the branch does not exist
    dir: DirState


def plan_ensure(seen: Seen) -> tuple[Action, ...]:
    """The steps that make the worktree at ``seen.path`` whole on ``seen.branch``.

    ``forget_holder``: drop git's stale record of another path holding the branch.
    ``clear``: remove the half-made worktree (its directory, then git's record).
    ``add`` / ``add_new_branch``: ``git worktree add`` of the existing or a new branch.
    ``reuse``: it is whole; nothing to do. ``Problem`` for what batchd did not make and
    will not remove (a worktree on another branch, one locked by someone, a directory
    with a ``.git`` that git's records do not list).
    """
    steps: list[Action] = []
    if seen.holder is not None:
        if seen.holder.prunable is None:
            raise Problem(
                f"branch {seen.branch} is checked out in {seen.holder.path}, not in batchd's "
                f"worktree {seen.path}: batchd leaves that work tree alone; remove it "
                f"(git worktree remove {seen.holder.path}) and resume the batch"
            )
        steps.append("forget_holder")
    entry = seen.entry
    if entry is not None:
        if entry.prunable is not None or entry.locked == HALF_MADE or seen.dir != "tree":
            steps.append("clear")
        elif entry.locked is not None:
            raise Problem(
                f"batchd's worktree {seen.path} is locked ({entry.locked or 'no reason'}): "
                f"batchd leaves it; unlock it (git worktree unlock {seen.path}) and resume"
            )
        elif entry.branch != HEADS + seen.branch:
            on = entry.branch.removeprefix(HEADS) if entry.branch else "a detached HEAD"
            raise Problem(
                f"batchd's worktree {seen.path} is on {on}, not on {seen.branch}: batchd "
                f"leaves it as it is; switch it back (git -C {seen.path} switch "
                f"{seen.branch}) or remove it, and resume"
            )
        else:
            return (*steps, "reuse")
    elif seen.dir == "tree":
        raise Problem(
            f"{seen.path} holds a work tree that git's records do not list: batchd will "
            "not delete it; move it away and resume the batch"
        )
    elif seen.dir != "missing":
        steps.append("clear")
    steps.append("add" if seen.branch_tip is not None else "add_new_branch")
    return tuple(steps)


# --- the fast-forward of the base --------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Move ``base`` from ``old`` to ``new`` (``update-ref`` refuses if it moved meanwhile)."""

    base: str
    old: str
    new: str


@dataclass(frozen=True)
class Stay:
    """The base stays where it is; ``done`` when it already is where it would go."""

    reason: str
    done: bool = False


def plan_forward(
    *,
    record: RepoRecord,
    branch: str,
    base_tip: str | None,
    batch_tip: str,
    checked_out_in: tuple[str, ...],
    base_is_ancestor: bool,
) -> Forward | Stay:
    """May ``worktree.merge_into_base`` fast-forward the base branch to the batch branch?

    Only when the batch began on a branch, that branch still exists, it is checked out in
    no work tree (batchd never moves a branch under someone's files), and its tip is an
    ancestor of the batch branch. Otherwise the reason, in words, with what to do.
    """
    base = record.base_ref
    if base is None:
        return Stay(
            f"the batch began on a detached HEAD ({short(record.base_commit)}): there is no "
            f"base branch to move; merge {branch} where you want it"
        )
    if base_tip is None:
        return Stay(f"the base branch {base} no longer exists; merge {branch} where you want it")
    if base_tip == batch_tip:
        return Stay(f"{base} is already at {branch} ({short(batch_tip)})", done=True)
    if checked_out_in:
        where = ", ".join(checked_out_in)
        return Stay(
            f"{base} is checked out in {where}: batchd never moves a branch under a work "
            f"tree; there, run git merge --ff-only {branch}"
        )
    if not base_is_ancestor:
        moved = (
            f"moved from {short(record.base_commit)} to {short(base_tip)} while the batch ran"
            if base_tip != record.base_commit
            else f"is at {short(base_tip)}"
        )
        return Stay(
            f"{base} {moved} and is not an ancestor of {branch}, so it cannot be "
            f"fast-forwarded: merge {branch} into {base} yourself (git merge {branch})"
        )
    return Forward(base=base, old=base_tip, new=batch_tip)
