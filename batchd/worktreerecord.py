"""A worktree batch's git record (``BatchState.git``, SPEC 15): made, moved, read. Pure.

The record holds what batchd made in the user's repository for one batch: the repository,
the base it started from, the batch branch and its worktree, and for a parallel batch the
worktree and branch of each feature attempt, each with its step. Every step change goes
through ``worktreesteps.apply`` (the one table): ``advance`` refuses what the table refuses,
so the record never says what git's life cannot be. Also here: where a feature runs, the
directory that makes it exclusive before anything is made (``planned_dir``), and which
feature worktrees are done with (``leftovers``).

Never: run git, touch a file, read the clock.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass

from batchd.model import BatchState, FeatureWorktree, GitRecord, GitStep
from batchd.worktreeplan import (
    RepoRecord,
    batch_branch,
    feature_branch,
    run_dir,
    worktree_dir,
)
from batchd.worktreesteps import Event, FeatureKey, GitSteps, apply

_LEFT_ALONE: frozenset[GitStep] = frozenset({"removed", "kept", "merging"})


@dataclass(frozen=True)
class Place:
    """Where one feature attempt of a worktree batch runs: its worktree and branch, and the
    directory of the runner (the worktree plus the batch's subdirectory)."""

    worktree: str
    branch: str
    cwd: str


def new_record(found: RepoRecord, batch_id: str, root: str) -> GitRecord:
    """The record of a batch's first feature: what ``worktree.record_repo`` found, the batch
    branch and its worktree's path under ``root`` (``worktree.dir``, a real path)."""
    branch = batch_branch(batch_id)
    return GitRecord(
        repo=found.repo,
        base_ref=found.base_ref,
        base_commit=found.base_commit,
        subdir=found.subdir,
        branch=branch,
        worktree=worktree_dir(root, branch),
    )


def repo_record(rec: GitRecord) -> RepoRecord:
    return RepoRecord(
        repo=rec.repo, base_ref=rec.base_ref, base_commit=rec.base_commit, subdir=rec.subdir
    )


def root_of(rec: GitRecord) -> str:
    """The ``worktree.dir`` the batch's worktrees were made under (a later change of the
    configuration does not move them)."""
    return posixpath.dirname(rec.worktree)


def steps_of(rec: GitRecord) -> GitSteps:
    features = {(f.feature_index, f.attempt): f.step for f in rec.features}
    return GitSteps(rec.step, features)


def feature(rec: GitRecord, index: int, attempt: int) -> FeatureWorktree | None:
    return next((f for f in rec.features if (f.feature_index, f.attempt) == (index, attempt)), None)


def advance(rec: GitRecord, event: Event, key: FeatureKey | None = None) -> None:
    """Move the batch's worktree (``key`` None) or one feature attempt's by ``event``, as
    the table allows (``Problem`` otherwise; then nothing changed). A feature attempt
    seen for the first time is added (its ``create``)."""
    after = apply(steps_of(rec), event, key)
    if key is None:
        rec.step = after.batch
        return
    entry = feature(rec, *key)
    if entry is None:
        index, attempt = key
        branch = feature_branch(posixpath.basename(rec.branch), index, attempt)
        entry = FeatureWorktree(
            feature_index=index,
            attempt=attempt,
            branch=branch,
            worktree=worktree_dir(root_of(rec), branch),
        )
        rec.features.append(entry)
    entry.step = after.feature(key)


def planned_dir(state: BatchState, root: str, index: int | None = None, attempt: int = 1) -> str:
    """The worktree a feature attempt of a worktree batch runs in, known before anything is
    made (the scheduler keeps two features out of one worktree with it): the batch's own
    for a sequential batch (and for ``index`` None), the attempt's own for a parallel one."""
    rec = state.git
    if rec is not None:
        root = root_of(rec)
    if state.parallel and index is not None:
        return worktree_dir(root, feature_branch(state.batch_id, index, attempt))
    return rec.worktree if rec is not None else worktree_dir(root, batch_branch(state.batch_id))


def place(state: BatchState, index: int, attempt: int) -> Place | None:
    """Where a feature attempt runs, once the batch's record is made (else None)."""
    rec = state.git
    if rec is None:
        return None
    if state.parallel:
        entry = feature(rec, index, attempt)
        if entry is None:
            return None
        return Place(entry.worktree, entry.branch, run_dir(entry.worktree, rec.subdir))
    return Place(rec.worktree, rec.branch, run_dir(rec.worktree, rec.subdir))


def leftovers(
    rec: GitRecord, attempt_number: Callable[[int], int], settled: Collection[int]
) -> list[FeatureWorktree]:
    """The feature worktrees to remove: not removed yet, not in a merge (its feature's life
    finishes it), and not the one the feature's next attempt reuses (an interrupted or
    limited attempt runs again in its own worktree)."""
    return [
        f
        for f in rec.features
        if f.step not in _LEFT_ALONE
        and (f.feature_index in settled or attempt_number(f.feature_index) != f.attempt)
    ]


def kept(rec: GitRecord) -> list[tuple[str, str, str]]:
    """Every worktree kept because it holds changes no commit holds: (path, branch, why)."""
    out = [(rec.worktree, rec.branch, rec.note or "")] if rec.step == "kept" else []
    out += [(f.worktree, f.branch, f.note or "") for f in rec.features if f.step == "kept"]
    return out
