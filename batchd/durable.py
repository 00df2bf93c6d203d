"""Durable, link-refusing file primitives: private directories, atomic writes, reads, locks.

Every durable write goes through ``write_durable`` (SPEC section 4): a temp file
in the same directory opened ``O_EXCL|O_NOFOLLOW``, written, ``fchmod``,
fsync, ``os.replace`` over the target, fsync of the directory. The state dir,
the spool's own files, batchctl's files and the systemd units all use it; no
other module writes a file "atomically" its own way.

Nothing here follows a symlink where a file or directory of ours should be
(it is a ``StoreError``), knows what a batch is, or decides anything: a failed
call raises ``OSError`` (or ``StoreError``) to the caller, which reports and
retries. Imports nothing of batchd but the failpoints switch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from batchd import failpoints

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

TEMP_SUFFIX = ".tmp"


class StoreError(Exception):
    """A directory or file of ours cannot be used (a symlink, wrong owner, another daemon)."""


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) 0700; refuse a symlink or a non-directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path} is a symlink; batchd never follows links in its state")
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} exists and is not a directory")
    if st.st_mode & stat.S_ISVTX or st.st_uid != os.getuid():
        # A shared directory such as /tmp: never ours to chmod, never private enough.
        raise StoreError(
            f"{path} is a shared directory (sticky or owned by uid {st.st_uid}); "
            "batchd keeps its files in a private (0700) directory: choose a path inside one"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable."""
    dfd = os.open(path, _O_DIR)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def temp_name(name: str) -> str:
    """A temp file name for one write of ``name``: unique per write, not only per pid.

    In a container every start of the daemon may get the same pid, so a name
    keyed on the pid alone collides (``EEXIST``) with what a killed start left.
    """
    return f".{name}.{os.getpid()}-{os.urandom(6).hex()}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """A temp file of ``write_durable``, this version's or 0.1.0's (``.<name>.<pid>.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_temp_files(directory: Path) -> int:
    """Remove the temp files a killed writer left in ``directory``; how many were removed.

    Only for directories that nobody else writes into while we hold the lock
    (the state dir and its batch dirs). Never follows a link: ``unlink`` removes
    a symlink itself.
    """
    removed = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if is_temp_name(entry.name) and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class LockHeld(Exception):
    """``take_lock``: another process holds the lock; ``content`` is what it wrote there."""

    def __init__(self, content: bytes) -> None:
        super().__init__("the lock is held")
        self.content = content


def take_lock(path: Path, owner: str) -> int:
    """Take an ``flock`` on ``path`` (0600, created if missing, never through a link)
    without waiting, and write ``owner`` into it; the lock lasts while the returned fd
    is open (a kill leaves a file that the next ``flock`` simply takes).

    Raises ``LockHeld`` when another process holds it, ``StoreError`` when the file
    cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symlink; remove it") from None
        raise StoreError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        content = os.pread(fd, 4096, 0)
        os.close(fd)
        raise LockHeld(content) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, owner.encode(), 0)
    return fd


def write_durable(directory: Path, name: str, data: bytes, *, mode: int = 0o600) -> None:
    """Atomically and durably replace ``directory/name`` with ``data``.

    ``mode`` is set with ``fchmod`` (the umask does not matter): 0600 for
    everything of ours, 0644 for the systemd units, which are not secret. A
    symlink at ``directory/name`` is refused (``StoreError``), never written
    through. On any failure the previous file is intact and the temp file gone.
    """
    failpoints.check_write()
    dfd = os.open(directory, _O_DIR)
    try:
        _refuse_symlink(dfd, directory, name)
        tmp = temp_name(name)
        fd = os.open(tmp, _O_TMP, 0o600, dir_fd=dfd)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
                os.fsync(fd)
                failpoints.hit("inside_state_write")  # written and synced, still open
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _refuse_symlink(dfd: int, directory: Path, name: str) -> None:
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{directory / name} is a symlink; refusing to write through it")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_nofollow(path: Path, limit: int = 256 * 1024 * 1024) -> bytes:
    """Read a regular file without following a symlink or blocking on a FIFO."""
    fd = os.open(path, _O_READ)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
