"""The files of a Slurm job on the shared state dir: blocking IO, run in a worker thread.

Owns the wrapper script (written 0700 at each start), the attempt log
(created 0600 before sbatch appends to it; its tail read back), and the exit
status the wrapper records beside the log. The text of each is
``slurm_protocol``'s.

What it must never do: follow a symlink, decide what a status means, or be
called from the event loop directly (the engine runs these through
``anyio.to_thread``).
"""

from __future__ import annotations

import os
from pathlib import Path

from batchd import store
from batchd.engines.slurm_protocol import WRAPPER, WRAPPER_NAME, parse_status, status_path

LOG_TAIL = 64 * 1024


def read_status(log_path: Path, job_id: str) -> int | None:
    """The exit status the wrapper recorded for job ``job_id``, or None (none, unreadable)."""
    try:
        data = store.read_nofollow(status_path(log_path, job_id), limit=64)
    except (OSError, store.StoreError):
        return None
    return parse_status(data.decode(errors="replace"))


def read_tail(path: Path, offset: int) -> tuple[bytes, int]:
    """The last LOG_TAIL bytes of the log written after ``offset``, and how many there are."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b"", 0
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        start = max(offset, size - LOG_TAIL)
        f.seek(start)
        return f.read(LOG_TAIL), max(0, size - offset)


def open_log(path: Path) -> int:
    """Create the attempt log 0600 if missing (Slurm then appends); its size before the job."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def write_wrapper(state_dir: Path) -> Path:
    """Write the wrapper script durably into ``state_dir``, 0700; its path."""
    store.ensure_dir(state_dir)
    store.write_durable(state_dir, WRAPPER_NAME, WRAPPER.encode())
    path = state_dir / WRAPPER_NAME
    os.chmod(path, 0o700)
    return path
