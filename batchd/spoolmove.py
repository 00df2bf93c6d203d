"""Moving a spool entry out of the spool (SPEC section 3): the claim and the rejection.

Owns the two renames a spool entry goes through, each made durable: the claim
(``name`` into ``.claimed/`` by one atomic rename, the file synced before and
both folders after, so only a claim that succeeded becomes a batch) and the
rejection (into ``rejected/`` under a free name, with a ``.error`` sidecar).
Each returns what happened and the trouble of the folder it moves into, as
``spool`` notes it; which entry moves, and when, is ``spool``'s to decide.

Never opens the entry it moves, never follows a link, and never raises for a
move that fails: a file that cannot move stays where it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from batchd import failpoints
from batchd.classify import sanitize
from batchd.spoolfs import free_name, sync_entry
from batchd.spoolrules import Role, cannot_move
from batchd.store import StoreError, fsync_dir, write_durable

log = logging.getLogger("batchd.spool")


def claim(spool_dir: Path, claimed: Path, name: str, st: os.stat_result) -> tuple[bool, str | None]:
    """Take ``name`` out of ``spool_dir`` into ``claimed`` by one rename, durably (the file
    synced before, both folders after): whether it was claimed (False: not ours, now) and
    the trouble of the ``claimed`` folder, if any."""
    target = claimed / name
    if os.path.lexists(target):
        return False, None  # an earlier claim of that name still waits for its batch
    failpoints.hit("before_claim")
    moved, trouble = _rename("claimed", spool_dir, name, claimed, name, sync=st)
    if not moved:
        if trouble is None:
            log.info("spool: %s was taken by someone else before it was claimed", sanitize(name))
        return False, trouble
    try:
        fsync_dir(spool_dir)
        fsync_dir(claimed)
    except OSError as e:  # it stays claimed: a later pass takes it up from .claimed/
        return False, f"{claimed}: a claim cannot be made durable: {e.strerror}; batchd tries again"
    failpoints.hit("after_claim")
    return True, None


def reject(source: Path, rejected: Path, name: str, reason: str) -> tuple[bool, str | None]:
    """Move ``name`` from ``source`` to ``rejected`` with a ``.error`` sidecar saying
    ``reason``, without opening it: whether it moved, and the trouble of the ``rejected``
    folder, if any (a sidecar that cannot be written is logged, the move stands)."""
    reason = sanitize(reason)  # a file name or line may carry escapes or newlines
    dest = free_name(rejected, name)
    moved, trouble = _rename("rejected", source, name, rejected, dest)
    if not moved:
        return False, trouble
    try:
        write_durable(rejected, f"{dest}.error", (reason + "\n").encode())
        fsync_dir(source)
    except (OSError, StoreError) as e:
        log.error("spool: cannot write %s.error: %s", sanitize(dest), e)
    log.warning("spool: rejected %s (moved to %s/)", reason, rejected)
    return True, None


def _rename(
    role: Role, source: Path, name: str, folder: Path, dest: str, sync: os.stat_result | None = None
) -> tuple[bool, str | None]:
    """Rename ``source/name`` to ``folder/dest`` (the entry synced first with ``sync``):
    whether it moved (False and no trouble: it is gone) and the trouble of ``folder``."""
    try:
        if sync is not None:
            sync_entry(source / name, sync)
        os.rename(source / name, folder / dest)
    except FileNotFoundError:
        return False, None
    except OSError as e:
        why = e.strerror or str(e)
        return False, cannot_move(role, sanitize(name, 200), str(source), str(folder), why)
    return True, None
