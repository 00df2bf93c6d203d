"""The spool's own files on disk: its lock, its folders, reading one entry, listing rejected/.

IO only; the rules are ``spoolrules``'. Owns the ``flock`` that makes one daemon
the owner of a spool (taken again when the spool folder is replaced while the
daemon runs), the look at the spool's own folders (``.claimed``, ``rejected``)
that turns what is wrong with them into problems instead of exceptions, the
one way a spool entry is read (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``: a
regular file, the very inode that was looked at), and the listing of
``rejected/`` that ``status`` shows. Never follows a link, never blocks on a
FIFO, never raises an ``OSError`` out of a folder check.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from batchd.classify import sanitize
from batchd.shapes import RejectedItem
from batchd.spoolnames import LOCK
from batchd.spoolrules import (
    ERROR_SUFFIX,
    Role,
    folder_trouble,
    newest,
    rejected_names,
    size_reason,
    too_big,
)
from batchd.store import LockHeld, StoreError, ensure_dir, read_nofollow, take_lock

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
Ident = tuple[int, int]  # (device, inode) of a folder


class SpoolError(Exception):
    """The spool cannot be used by this daemon (another one owns it, or it is unusable)."""


class Refused(Exception):
    """A spool entry that is not read: the message says why (it goes to ``rejected/``)."""


def ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def lstat_or_none(path: Path) -> os.stat_result | None:
    """``lstat``, or None when nothing is there (other errors raise)."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


# --- the lock --------------------------------------------------------------------------------


class SpoolLock:
    """One daemon owns a spool: an ``flock`` on ``spool_dir/.batchd.lock``.

    The file says who holds it (pid and state dir), so that a second daemon can
    say which one it collided with. The lock goes with the process (a kill
    leaves a file that the next ``flock`` simply takes). ``folder`` is the
    (device, inode) of the spool folder it was taken in: when the spool folder
    is replaced, the lock is taken again in the new one (``retake``).
    """

    def __init__(self, fd: int, spool_dir: Path, state_dir: Path, folder: Ident) -> None:
        self.fd = fd
        self.path = spool_dir / LOCK
        self.spool_dir = spool_dir
        self.state_dir = state_dir
        self.folder = folder

    @classmethod
    def acquire(cls, spool_dir: Path, state_dir: Path) -> SpoolLock:
        """Create the spool folder if needed and lock it; ``SpoolError`` says why not."""
        try:
            ensure_dir(spool_dir)
            folder = ident(os.lstat(spool_dir))
        except StoreError as e:
            raise SpoolError(f"the spool folder cannot be used: {e}") from None
        except OSError as e:
            raise SpoolError(
                f"the spool folder {spool_dir} cannot be created or used: {e.strerror}; "
                "fix spool_dir (or --spool) to name a folder batchd may create"
            ) from None
        me = json.dumps({"pid": os.getpid(), "state_dir": str(state_dir)}) + "\n"
        try:
            fd = take_lock(spool_dir / LOCK, me)
        except (StoreError, OSError) as e:
            raise SpoolError(f"the spool's lock file cannot be used: {e}") from None
        except LockHeld as e:
            raise SpoolError(
                f"the spool {spool_dir} is already owned by another batchd{holder(e.content)}; "
                "one spool has one daemon: stop that one, or give this one its own --spool"
            ) from None
        return cls(fd, spool_dir, state_dir, folder)

    def retake(self) -> None:
        """The spool folder was replaced: own the new one (``SpoolError`` when another daemon
        took it meanwhile, or it cannot be locked); the old lock is let go either way."""
        self.close()
        new = SpoolLock.acquire(self.spool_dir, self.state_dir)
        self.fd, self.folder = new.fd, new.folder

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def holder(raw: bytes) -> str:
    """`` (pid N, state dir D)`` from a lock file's content, or nothing when unreadable."""
    try:
        info = json.loads(raw)
        return f" (pid {int(info['pid'])}, state dir {sanitize(str(info['state_dir']))})"
    except (ValueError, KeyError, TypeError):
        return ""


# --- the folders ------------------------------------------------------------------------------


def check_folder(role: Role, path: Path) -> tuple[str | None, os.stat_result | None]:
    """Look at one of the spool's own folders, create it (0700) when missing, and say what
    is wrong with it (a problem's text), if anything; never raises an ``OSError``."""
    try:
        st = lstat_or_none(path)
        mode, uid = (st.st_mode, st.st_uid) if st is not None else (None, 0)
        trouble = folder_trouble(role, str(path), mode, uid, os.getuid())
        if trouble is not None:
            return trouble, st
        ensure_dir(path)
        return None, os.lstat(path)
    except StoreError as e:  # changed between the look and ensure_dir
        return f"{e}; batchd tries again", None
    except OSError as e:
        return f"{path} cannot be used: {e.strerror}; batchd tries again", None


# --- reading one entry --------------------------------------------------------------------------


def _open_entry(path: Path, st: os.stat_result) -> int:
    """An fd of the regular file ``st`` describes (from ``lstat``), opened without following
    a link or blocking on a FIFO; ``Refused`` when it is something else now (another inode:
    replaced since the look); ``FileNotFoundError`` when it is gone."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise Refused(f"{path.name}: cannot be opened: {e.strerror}") from None
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.st_ino or fst.st_dev != st.st_dev:
        os.close(fd)
        raise Refused(f"{path.name}: changed into something else while being read")
    return fd


def read_entry(path: Path, st: os.stat_result, max_file_bytes: int) -> bytes:
    """The bytes of the regular file ``st`` describes (``_open_entry``); ``Refused`` when it
    is something else now or too big."""
    fd = _open_entry(path, st)
    try:
        size = os.fstat(fd).st_size
        if too_big(size, max_file_bytes):
            raise Refused(size_reason(path.name, size, max_file_bytes))
        try:
            data = _read_up_to(fd, max_file_bytes + 1)
        except OSError as e:
            raise Refused(f"{path.name}: cannot be read: {e.strerror}") from None
        if too_big(len(data), max_file_bytes):  # it grew while being read
            raise Refused(size_reason(path.name, len(data), max_file_bytes))
        return data
    finally:
        os.close(fd)


def sync_entry(path: Path, st: os.stat_result) -> None:
    """Make the content of the spool file ``st`` describes durable, before it is claimed (a
    file written by ``write_durable`` costs next to nothing); a file that is something else
    now is left to the claimed copy's check. ``FileNotFoundError`` when it is gone."""
    try:
        fd = _open_entry(path, st)
    except Refused:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --- rejected/ ------------------------------------------------------------------------------


def free_name(folder: Path, name: str) -> str:
    """``name``, or ``name.1``, ``name.2``...: the first that neither it nor its ``.error``
    sidecar takes in ``folder`` (a file rejected twice keeps both)."""
    dest, n = name, 1
    while os.path.lexists(folder / dest) or os.path.lexists(folder / f"{dest}{ERROR_SUFFIX}"):
        dest, n = f"{name}.{n}", n + 1
    return dest


def list_rejected(folder: Path) -> tuple[int, list[RejectedItem]]:
    """How many rejected files ``folder`` holds, and the newest few with their reasons (the
    time of a rejection: its ``.error`` sidecar's mtime, else the file's ctime)."""
    names = rejected_names(os.listdir(folder))
    times: list[tuple[str, int]] = []
    for name in names:
        try:
            st = os.lstat(folder / name)
        except FileNotFoundError:
            continue
        try:
            when = os.lstat(folder / f"{name}{ERROR_SUFFIX}").st_mtime_ns
        except FileNotFoundError:
            when = st.st_ctime_ns
        times.append((name, when))
    items: list[RejectedItem] = [
        {"name": sanitize(name, 200), "reason": _reason(folder / f"{name}{ERROR_SUFFIX}")}
        for name in newest(times)
    ]
    return len(times), items


def _reason(sidecar: Path) -> str:
    try:
        text = read_nofollow(sidecar, 4096).decode("utf-8", "replace").strip()
    except (OSError, StoreError):
        return "(no reason recorded)"
    return sanitize(text, 500) or "(no reason recorded)"
