"""A worktree batch's last git steps, and what a start does after a kill (SPEC 15).

When a worktree batch finishes (``end``): the worktrees of its feature attempts that are
left go, ``worktree.merge_into_base`` fast-forwards the base branch when the batch
completed (only a base checked out nowhere, and only forward; else the reason is
recorded, shown and logged), and the batch's own worktree goes; a worktree that holds
changes no commit holds is kept, its path shown, until ``batchctl prune`` (``discard``).
The batch branch always stays: it is the batch's result.

At start (``recover``), before any feature runs: git's stale records of batchd's own
worktrees are forgotten (a ``git worktree prune`` limited to batchd's), each begun step
on record is repeated (``worktreesteps.on_restart``: a worktree being made, removed, a
base being moved; a begun merge is repeated by its feature's life, which then records
the attempt), a finished batch's end is finished, and worktrees of closed attempts go.

Record, do, record as in ``worktreelife`` (failpoints ``before_forward``,
``after_forward`` besides the removal's). Never: delete a branch, move a branch outside
``batchd/`` other than the base by ``merge_into_base``, or fail a batch for git
trouble at its end (it is logged and a ``worktree`` problem in ``status``).
"""

from __future__ import annotations

import logging

from batchd import failpoints
from batchd.batch import Batch
from batchd.worktree import Removed, forget_stale, remove_worktree
from batchd.worktreelife import (
    GitHost,
    batch_worktree,
    begin,
    kept_words,
    record,
    remove_feature,
)
from batchd.worktreemerge import fast_forward_base
from batchd.worktreeplan import Forward, Problem, short
from batchd.worktreerecord import advance, leftovers, repo_record, root_of, steps_of
from batchd.worktreesteps import on_restart

log = logging.getLogger("batchd.worktree")

_OVER = ("removed", "kept")


async def end(host: GitHost, batch: Batch) -> None:
    """The finished batch's worktrees go (or stay, with changes), after the base is moved
    when ``worktree.merge_into_base`` asks for it. Trouble is logged and shown."""
    if batch.state.git is None:
        return
    async with host.live.git_lock(batch.batch_id):
        try:
            await _end(host, batch)
        except (Problem, OSError) as e:
            _trouble(host, batch, f"its worktrees could not all be removed: {_why(e)}")


async def _end(host: GitHost, batch: Batch, *, discard: bool = False) -> None:
    rec = batch.state.git
    assert rec is not None
    for entry in [f for f in rec.features if f.step not in _OVER or (discard and f.step == "kept")]:
        if entry.step != "merging":
            await remove_feature(host, batch, entry, discard=discard)
    wanted = host.rules.cfg.worktree.merge_into_base and batch.state.status == "completed"
    if rec.step == "forwarding" or (wanted and rec.step == "ready"):
        await _forward(host, batch)
    if rec.step not in _OVER or (discard and rec.step == "kept"):
        await _remove_batch_worktree(host, batch, discard)


async def _forward(host: GitHost, batch: Batch) -> None:
    """``worktree.merge_into_base``: the base branch fast-forwarded to the batch branch, or
    the reason it stays, in the record (``status``, ``show``, the report) and the log."""
    rec = begin(host, batch, "forward")
    failpoints.hit("before_forward")
    try:
        result = await fast_forward_base(repo_record(rec), rec.branch)
        if isinstance(result, Forward):
            words = f"{result.base} fast-forwarded to {rec.branch} ({short(result.new)})"
        elif result.done:
            words = result.reason
        else:
            words = f"{rec.base_ref or 'the base'} not moved: {result.reason}"
    except Problem as e:
        words = f"{rec.base_ref or 'the base'} not moved: {e.message}"
    failpoints.hit("after_forward")
    rec.forward = words
    advance(rec, "forwarded")
    record(host, batch)
    moved = "fast-forwarded" in words or words.startswith(f"{rec.base_ref} is already")
    log.log(logging.INFO if moved else logging.WARNING, "%s: %s", batch.batch_id, words)


async def _remove_batch_worktree(host: GitHost, batch: Batch, discard: bool) -> None:
    rec = begin(host, batch, "remove")
    failpoints.hit("before_worktree_remove")
    result = await remove_worktree(rec.repo, root_of(rec), rec.worktree, discard=discard)
    failpoints.hit("after_worktree_remove")
    if isinstance(result, Removed):
        advance(rec, "removed")
        rec.note = None
        log.info(
            "%s: worktree %s removed; the branch %s stays", batch.batch_id, rec.worktree, rec.branch
        )
    else:
        advance(rec, "kept")
        rec.note = kept_words(result)
        log.warning("%s: %s", batch.batch_id, rec.note)
    record(host, batch)


async def discard(host: GitHost, batch: Batch) -> None:
    """``batchctl prune``: every worktree of the batch goes, kept ones too (their changes
    with them); its branches stay. ``Problem`` when git cannot remove one."""
    if batch.state.git is None:
        return
    async with host.live.git_lock(batch.batch_id):
        await _end(host, batch, discard=True)


# --- at start ---------------------------------------------------------------------------


async def recover(host: GitHost) -> None:
    """Repeat what a killed daemon began in git, before anything runs (see the module)."""
    forgotten: set[tuple[str, str]] = set()
    for batch in list(host.live.batches.values()):
        rec = batch.state.git
        if rec is None:
            continue
        try:
            where = (rec.repo, root_of(rec))
            if where not in forgotten:
                forgotten.add(where)
                for path in await forget_stale(rec.repo, root_of(rec)):
                    log.info("recovery: git's stale record of %s forgotten", path)
            async with host.live.git_lock(batch.batch_id):
                await _recover(host, batch)
        except (Problem, OSError) as e:
            _trouble(host, batch, f"recovery of its worktrees: {_why(e)}")


async def _recover(host: GitHost, batch: Batch) -> None:
    rec = batch.state.git
    assert rec is not None
    if batch.finished:
        if rec.step not in _OVER or any(f.step not in _OVER for f in rec.features):
            log.info("recovery: %s finished; its worktrees' end is finished now", batch.batch_id)
            await _end(host, batch)
        return
    for key, redo in on_restart(steps_of(rec)):
        if key is None and redo in ("create", "check"):
            await batch_worktree(host, batch)
        elif key is not None and redo == "remove":
            entry = next(f for f in rec.features if (f.feature_index, f.attempt) == key)
            await remove_feature(host, batch, entry)
    for entry in leftovers(rec, batch.attempt_number, batch.settled):
        await remove_feature(host, batch, entry)


def _trouble(host: GitHost, batch: Batch, what: str) -> None:
    message = f"{batch.batch_id}: {what}; batchd tries again at its next start"
    log.error("%s", message)
    host.live.set_problem("worktree", message, batch.batch_id)


def _why(e: Exception) -> str:
    return e.message if isinstance(e, Problem) else str(e)
