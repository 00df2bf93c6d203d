"""A worktree batch's git steps in the running daemon (SPEC 15): record, do, record.

Before a feature of a worktree batch runs (``prepare``): the batch's record at its first
feature (the repository, the base, the branch ``batchd/<batch_id>``), the batch's
worktree made (or checked), and for a parallel batch the attempt's own worktree and
branch from the batch branch's tip. After a parallel feature completed and passed its
check (``merge``): its branch merged into the batch branch, one merge at a time, inside
the batch's worktree; a conflict is a transient failure that names the files. After an
attempt closed (``release``): its worktree removed (kept when it holds changes no commit
holds), a merged branch dropped. The batch's end, a start after a kill and ``prune`` are
``worktreeend``'s.

Each step is written into the batch's record (``worktreerecord.advance``, the table of
``worktreesteps``) and made durable before git starts, and its end after git ended: a
kill -9 anywhere leaves a begun step that the next start repeats (the steps are made
safe to repeat by ``worktree`` and ``worktreemerge``). The failpoints
``before_worktree_create``, ``after_worktree_create``, ``before_merge``,
``after_merge``, ``before_worktree_remove`` and ``after_worktree_remove`` sit between
the records and git, for the kill tests.

Never: decide what an outcome means for the batch (``Batch``), touch the user's work
tree (the worktree modules refuse), or merge two features of a batch at once.

Cancellation: a cancelled step stops its git; the step stays begun on record, and is
repeated by the next start (or the next feature).
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from batchd import attempts, failpoints
from batchd.attempts import Evidence
from batchd.batch import Batch
from batchd.classify import Verdict
from batchd.clock import Clock
from batchd.live import Live, Slot
from batchd.model import AuditEvent, FeatureWorktree, GitRecord, GitStep
from batchd.rules import Rules
from batchd.worktree import (
    Kept,
    Removed,
    ensure_worktree,
    record_repo,
    remove_worktree,
    tip_of,
)
from batchd.worktreemerge import Conflict, Merged, drop_merged_branch, merge_feature
from batchd.worktreeplan import Problem, merge_message, short
from batchd.worktreerecord import (
    Place,
    advance,
    feature,
    new_record,
    place,
    root_of,
    steps_of,
)
from batchd.worktreesettle import git_dir_of, settle
from batchd.worktreesteps import Event, FeatureKey

log = logging.getLogger("batchd.worktree")


class GitHost(Protocol):
    """What the worktree steps are given (the engine implements it)."""

    live: Live
    clock: Clock

    @property
    def rules(self) -> Rules: ...

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool: ...

    def worktree_root(self) -> str: ...


def record(host: GitHost, batch: Batch) -> None:
    """Make the step just changed durable; ``Problem`` when the state cannot be written
    (the step is then not begun: git does not run)."""
    if not host.persist(batch):
        raise Problem(
            f"{batch.batch_id}: a git step cannot be recorded while the state cannot be "
            "written; it is done once batchd can write again"
        )


_BEGUN: dict[Event, GitStep] = {
    "create": "creating",
    "merge": "merging",
    "forward": "forwarding",
    "remove": "removing",
}


def begin(host: GitHost, batch: Batch, event: Event, key: FeatureKey | None = None) -> GitRecord:
    """Record that a git step begins (durably, before git runs), unless it is on record as
    begun already (repeated after a kill); the batch's record."""
    rec = batch.state.git
    assert rec is not None
    steps = steps_of(rec)
    if (steps.batch if key is None else steps.feature(key)) != _BEGUN[event]:
        advance(rec, event, key)
        record(host, batch)
    return rec


def whole(path: str) -> bool:
    """A cheap look, no subprocess: is batchd's worktree there (its ``.git`` file names a
    git dir that exists)? A worktree removed by hand is made again."""
    git_dir = git_dir_of(path)
    return git_dir is not None and os.path.isdir(git_dir)


# --- before a feature ------------------------------------------------------------------


async def prepare(host: GitHost, slot: Slot) -> Place:
    """Make the feature's worktree ready (the batch's record and worktree first); where it
    runs. ``Problem`` (or ``OSError``) for what stops the batch: its cwd is not in a git
    work tree any more, git fails, something not batchd's is in the way."""
    batch = slot.batch
    async with host.live.git_lock(batch.batch_id):
        rec = await batch_worktree(host, batch)
    attempt = batch.attempt_number(slot.index)
    if batch.state.parallel:
        await _feature_worktree(host, batch, rec, (slot.index, attempt))
    where = place(batch.state, slot.index, attempt)
    if where is None:  # the record has no such attempt: a bug, not the user's doing
        raise Problem(f"{batch.batch_id}: feature {slot.index + 1} has no worktree on record")
    await settle(root_of(rec), where.worktree)  # a lock an agent's git left at a timeout
    return where


async def batch_worktree(host: GitHost, batch: Batch) -> GitRecord:
    """The batch's record (made at its first feature) and its worktree on the batch branch,
    made, made again after a removal by hand, or reused. Under the batch's git lock."""
    rec = batch.state.git
    if rec is None:
        found = await record_repo(host.rules.effective_cwd(batch))
        rec = batch.state.git = new_record(found, batch.batch_id, host.worktree_root())
        base = found.base_ref or f"a detached HEAD at {short(found.base_commit)}"
        log.info("%s: branch %s from %s in %s", batch.batch_id, rec.branch, base, rec.repo)
    if rec.step == "ready" and whole(rec.worktree):
        return rec
    if rec.step not in ("creating", "ready"):
        advance(rec, "create")
        record(host, batch)
    await _make(rec, rec.worktree, rec.branch, rec.base_commit)
    if rec.step == "creating":
        advance(rec, "created")
        rec.note = None
        record(host, batch)
    return rec


async def _feature_worktree(host: GitHost, batch: Batch, rec: GitRecord, key: FeatureKey) -> None:
    """A parallel feature attempt's worktree and branch, from the batch branch's tip when
    it is made (an attempt run again after an interruption reuses its own)."""
    entry = feature(rec, *key)
    if entry is not None and entry.step == "ready" and whole(entry.worktree):
        return
    if entry is None or entry.step not in ("creating", "ready"):
        advance(rec, "create", key)
        record(host, batch)
        entry = feature(rec, *key)
        assert entry is not None
    start = await tip_of(rec.repo, rec.branch)
    if start is None:
        raise Problem(
            f"the batch branch {rec.branch} is gone from {rec.repo}: a parallel feature "
            "branches from it; make it again (git branch "
            f"{rec.branch} <commit>) and resume the batch"
        )
    await _make(rec, entry.worktree, entry.branch, start)
    if entry.step == "creating":
        advance(rec, "created", key)
        record(host, batch)


async def _make(rec: GitRecord, path: str, branch: str, start: str) -> None:
    failpoints.hit("before_worktree_create")
    await ensure_worktree(rec.repo, root_of(rec), path, branch, start)
    failpoints.hit("after_worktree_create")


# --- the merge ---------------------------------------------------------------------------


async def merge(
    host: GitHost, slot: Slot, verdict: Verdict, exit_code: int | None, evidence: Evidence
) -> Verdict:
    """A parallel feature completed (and passed its check): merge its branch into the batch
    branch. Its verdict: the same, or a transient failure naming the conflicting files."""
    batch, index = slot.batch, slot.index
    rec = batch.state.git
    assert rec is not None
    async with host.live.git_lock(batch.batch_id):
        attempt = batch.start_merging(index, verdict, exit_code, evidence, host.clock.now())
        key = (index, attempt.attempt)
        advance(rec, "merge", key)
        record(host, batch)
        return await _merge(batch, rec, key, verdict)


async def merge_again(host: GitHost, slot: Slot) -> tuple[Verdict, Evidence, int | None]:
    """After a restart: the attempt was in its merge. The merge is finished (a merge that
    happened is never repeated); the verdict, the evidence and the agent's exit code."""
    batch, index = slot.batch, slot.index
    attempt = batch.open_attempt(index)
    rec = batch.state.git
    assert attempt is not None and rec is not None
    agent = attempts.agent_verdict(attempt)
    key = (index, attempt.attempt)
    async with host.live.git_lock(batch.batch_id):
        entry = feature(rec, *key)
        step = entry.step if entry is not None else "absent"
        if step == "merged":
            verdict = agent
        elif step == "unmerged" and entry is not None:
            verdict = _unmerged(agent, entry.note or "the merge did not happen")
        else:
            begin(host, batch, "merge", key)
            verdict = await _merge(batch, rec, key, agent)
    return verdict, attempts.merged_evidence(attempt), attempt.exit_code


async def _merge(batch: Batch, rec: GitRecord, key: FeatureKey, verdict: Verdict) -> Verdict:
    """The merge itself, its end in the record (made durable with the attempt's outcome)."""
    entry = feature(rec, *key)
    assert entry is not None
    root = root_of(rec)
    if not whole(rec.worktree):  # removed by hand: made again where the branch is
        await ensure_worktree(rec.repo, root, rec.worktree, rec.branch, rec.base_commit)
    text = batch.state.features[key[0]]
    failpoints.hit("before_merge")
    result: Merged | Conflict | None = None
    try:
        result = await merge_feature(
            root, rec.worktree, entry.branch, merge_message(batch.batch_id, key[0], text)
        )
    except (Problem, OSError) as e:
        why = e.message if isinstance(e, Problem) else str(e)
        words = f"merging {entry.branch} into {rec.branch} failed: {why}"
    failpoints.hit("after_merge")
    if isinstance(result, Merged):
        advance(rec, "merged", key)
        entry.note = f"merged into {rec.branch} at {short(result.head)}"
        log.info("%s: feature %d: %s", batch.batch_id, key[0] + 1, entry.note)
        return verdict
    if isinstance(result, Conflict):
        words = result.message(entry.branch, rec.branch)
    advance(rec, "unmerged", key)
    entry.note = words
    log.warning("%s: feature %d: %s", batch.batch_id, key[0] + 1, words)
    return _unmerged(verdict, words)


def _unmerged(agent: Verdict, words: str) -> Verdict:
    """A merge that did not happen: a transient failure (retried from the new tip), with
    what the agent reported kept."""
    return Verdict(
        "failed",
        "transient",
        words,
        tokens=agent.tokens,
        cost_usd=agent.cost_usd,
        hint_text="",
        tokens_estimated=agent.tokens_estimated,
        session_id=agent.session_id,
    )


# --- after an attempt ---------------------------------------------------------------------


async def release(host: GitHost, batch: Batch, index: int) -> None:
    """An attempt of a parallel feature closed: its worktree goes unless the feature's next
    attempt runs in it again (an interruption, a usage limit). Trouble is logged: the
    outcome is recorded, and the batch's end or the next start removes it."""
    rec = batch.state.git
    if rec is None or not batch.state.parallel:
        return
    attempt = batch.open_attempt(index)
    for entry in [f for f in rec.features if f.feature_index == index]:
        if attempt is not None and entry.attempt == attempt.attempt:
            continue  # it runs again now (never, in practice: this one has closed)
        if _done_with(batch, entry):
            try:
                await remove_feature(host, batch, entry)
            except (Problem, OSError) as e:
                log.error("%s: feature %d: %s", batch.batch_id, index + 1, e)


def _done_with(batch: Batch, entry: FeatureWorktree) -> bool:
    if entry.step in ("removed", "kept", "merging"):
        return False
    index = entry.feature_index
    return index in batch.settled or batch.attempt_number(index) != entry.attempt


async def remove_feature(
    host: GitHost, batch: Batch, entry: FeatureWorktree, *, discard: bool = False
) -> None:
    """Remove a feature attempt's worktree (kept when it holds changes no commit holds,
    unless ``discard``); a merged attempt's branch goes too (its commits are in the batch
    branch), any other's stays."""
    key = (entry.feature_index, entry.attempt)
    merged = entry.step == "merged"
    rec = begin(host, batch, "remove", key)
    failpoints.hit("before_worktree_remove")
    result = await remove_worktree(rec.repo, root_of(rec), entry.worktree, discard=discard)
    failpoints.hit("after_worktree_remove")
    if isinstance(result, Removed):
        advance(rec, "removed", key)
    else:
        advance(rec, "kept", key)
        entry.note = kept_words(result)
        log.warning("%s: feature %d: %s", batch.batch_id, key[0] + 1, entry.note)
    record(host, batch)
    if merged and isinstance(result, Removed):
        await drop_merged_branch(rec.repo, entry.branch, rec.branch)


def kept_words(kept: Kept) -> str:
    """Why a worktree stays, with its path and the first changed files."""
    files = f" ({', '.join(kept.files[:5])}{', ...' if len(kept.files) > 5 else ''})"
    return (
        f"worktree {kept.path} kept: {kept.why}{files if kept.files else ''}; "
        "look at it and commit what you want; 'batchctl prune' removes it with the batch "
        "(finished more than 30 days ago; --older-than 0: now)"
    )
