"""The spool's decisions (SPEC 3), pure: when a file is ready, what its own folders allow,
which rejected files status shows, and how a claimed file becomes a batch.

``spool`` and ``intake`` carry these out; nothing here opens, stats, renames or
sleeps. Time comes in as ``now`` (wall seconds, as file times are), file facts
as values (``st_mode``, sizes, ``(size, mtime_ns, ino)`` signatures), so every
rule is tested by a table in milliseconds.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from batchd.model import BatchState, DaemonState, utc_iso
from batchd.shapes import RejectedItem

TROUBLE_RETRY_S = 2.0  # the spool's own folders are looked at again this often while in trouble
IDLE_LOOK_S = 5.0  # a full look at least this often: a replaced folder, a lost inotify event
RACY_S = 1.0  # a listing this close to the folder's last change may have missed a change
SHOWN_REJECTED = 5  # the newest rejected files that status names

Sig = tuple[int, int, int]  # (size, mtime_ns, inode): a file that changed has another one


# --- when a spool file is ready --------------------------------------------------------


def settle_due(changed: float, now: float, settle_s: float) -> float | None:
    """A plain file is read once it has stayed unchanged for ``settle_s`` (``changed``: the
    later of its mtime and ctime); None when it is ready, else when to look again."""
    due = changed + settle_s
    return None if now >= due else due


@dataclass(frozen=True)
class FirstLook:
    """A ``.json`` request that did not parse at its first look: how it was, and until when
    it gets a second chance."""

    sig: Sig
    until: float


def request_look(
    parses: bool, sig: Sig, now: float, settle_s: float, first: FirstLook | None
) -> tuple[float | None, FirstLook | None]:
    """A ``.json`` request is written by rename and read at once; one that does not parse
    yet gets a second look ``settle_s`` later (a slow writer), and is rejected only if it
    still does not parse, unchanged. A change starts its wait again.

    Returns (when to look again, or None: claim it now; what to remember of it).
    """
    if parses:
        return None, None
    if first is None or first.sig != sig:
        look = FirstLook(sig, now + settle_s)
        return look.until, look
    if now < first.until:
        return first.until, first
    return None, None


def too_big(size: int, max_file_bytes: int) -> bool:
    """A file of exactly ``max_file_bytes`` is accepted; one byte more is not."""
    return size > max_file_bytes


def size_reason(name: str, size: int, max_file_bytes: int) -> str:
    return (
        f"{name}: file is {size} bytes, over spool.max_file_bytes ({max_file_bytes}); "
        "split it into smaller files or raise the limit"
    )


def entry_kind(mode: int) -> str | None:
    """Why a spool entry that is not a regular file is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "is a symbolic link; batchd never follows links in the spool: copy the file in"
    if stat.S_ISDIR(mode):
        return "is a directory; the spool is not recursive: put feature files directly in it"
    if stat.S_ISFIFO(mode):
        return "is a FIFO; only regular files are read"
    if stat.S_ISSOCK(mode):
        return "is a socket; only regular files are read"
    return "is a device or special file; only regular files are read"


# --- the spool's own folders -------------------------------------------------------------

Role = Literal["spool", "claimed", "rejected"]

# What stops while a folder is in trouble, in the user's words.
_STOPS: dict[Role, str] = {
    "spool": "batchd reads nothing from it",
    "claimed": "new files wait in the spool, nothing is claimed",
    "rejected": "refused files wait where they are",
}


def folder_trouble(role: Role, path: str, mode: int | None, uid: int, my_uid: int) -> str | None:
    """What is wrong with one of the spool's own folders (``mode`` None: it does not exist,
    which is no trouble: it is created), as a problem that says what stops and the fix."""
    if mode is None:
        return None
    stops = _STOPS[role]
    again = "batchd creates the folder again"
    if stat.S_ISLNK(mode):
        fix = f"remove the link (rm {path}); {again}"
        if role == "spool":
            fix = (
                f"make it a real folder (rm {path} && mkdir -m 700 {path}), "
                "or point spool_dir at the link's target"
            )
        return (
            f"{path} is a symbolic link; batchd never follows links in the spool, so {stops}: {fix}"
        )
    if not stat.S_ISDIR(mode):
        return f"{path} is not a folder; {stops}: move it away (mv {path} {path}.bak); {again}"
    if uid != my_uid or mode & stat.S_ISVTX:
        return (
            f"{path} is a shared folder (sticky, or owned by uid {uid}, not batchd's uid "
            f"{my_uid}); {stops}: give it back (chown {my_uid} {path} && chmod 700 {path}), "
            f"or remove it; {again}"
        )
    return None


def cannot_move(role: Role, name: str, src: str, dst: str, error: str) -> str:
    """A rename between the spool's folders failed (unwritable, read-only): the problem."""
    return (
        f"cannot move {name} from {src} to {dst}: {error}; {_STOPS[role]}: make both "
        f"folders writable (chmod 700 {src} {dst})"
    )


def next_look(file_due: float | None, now: float, troubled: bool) -> float:
    """When the spool looks again: at the next settle deadline, and never later than the
    retry of a trouble, or an idle look that finds what no event announced."""
    cap = now + (TROUBLE_RETRY_S if troubled else IDLE_LOOK_S)
    return cap if file_due is None else min(file_due, cap)


def trouble_message(troubles: Mapping[Role, str]) -> str | None:
    """The one ``spool`` problem of status: every trouble, spool folder first."""
    parts = [troubles[r] for r in ("spool", "claimed", "rejected") if r in troubles]
    return "; and ".join(parts) if parts else None


# --- rejected files in status --------------------------------------------------------------

ERROR_SUFFIX = ".error"


def rejected_names(names: Iterable[str]) -> list[str]:
    """The rejected files among the entries of ``rejected/``: not the ``.error`` sidecars
    (a file whose own name ends in ``.error`` counts when it has a sidecar), not temp files."""
    present = set(names)
    return sorted(
        n
        for n in present
        if not n.startswith(".")
        and (not n.endswith(ERROR_SUFFIX) or f"{n}{ERROR_SUFFIX}" in present)
    )


def newest(entries: Iterable[tuple[str, int]], limit: int = SHOWN_REJECTED) -> list[str]:
    """The names of the ``limit`` newest entries (name, time in ns), newest first."""
    return [name for name, _ in sorted(entries, key=lambda e: (-e[1], e[0]))[:limit]]


DirSig = tuple[int, int, int]  # (device, inode, mtime_ns) of a folder


def needs_relist(listed: DirSig | None, now_sig: DirSig | None, listed_at: float) -> bool:
    """List ``rejected/`` again when it changed since, or when the last listing came so soon
    after a change that a change in the same clock tick could have been missed."""
    if now_sig is None or listed is None:
        return now_sig != listed
    if now_sig != listed:
        return True
    return listed_at - now_sig[2] / 1e9 < RACY_S


@dataclass
class SpoolReport:
    """What ``status`` shows of the spool: its rejected files (kept in memory, so a status
    request reads no folder)."""

    rejected: list[RejectedItem] = field(default_factory=list)  # newest first
    rejected_total: int = 0


# --- a claimed file becomes a batch (intake) ----------------------------------------------


def claimed_batch(
    name: str, sha256: str, batches: Iterable[BatchState], has_source: Callable[[str], bool]
) -> str | None:
    """The batch that a claimed file already is, after a kill between the batch write and the
    move of its source: same file name, same SHA-256, no source yet (the oldest such one).
    None: the file is a new batch (the same file dropped again later is a new batch too)."""
    same = [s for s in batches if s.features_file == name and s.source_sha256 == sha256]
    for s in sorted(same, key=lambda s: s.seq):
        if not has_source(s.batch_id):
            return s.batch_id
    return None


def take_seq(q: DaemonState, now: float) -> int:
    """The ``seq`` of a new batch; ``daemon.json`` must record it used before the batch is
    written (so no two batches ever share one, whatever a kill interrupts)."""
    seq = q.next_seq
    q.next_seq = seq + 1
    q.updated_at = utc_iso(now)
    return seq


def give_back_seq(q: DaemonState, seq: int) -> None:
    """``daemon.json`` could not be written: nothing used ``seq``, the next batch gets it.
    (When the batch write fails after it, the seq stays used: a gap, never a repeat.)"""
    if q.next_seq == seq + 1:
        q.next_seq = seq
