"""The files of a Slurm job on the shared state dir: blocking IO, run in a worker thread.

Owns the wrapper script (written 0700 at each start), the attempt log
(created 0600 before sbatch appends to it; its size looked at while the job
runs, its tails read back: the agent's, the check's), and the exit status
and the check's record that the wrapper writes beside the log. The text of
each is ``slurm_protocol``'s.

What it must never do: follow a symlink, decide what a status means, or be
called from the event loop directly (the engine runs these through
``anyio.to_thread``).
"""

from __future__ import annotations

import os
from pathlib import Path

from batchd import store, verify
from batchd.engines.output import codex_facts_of_log
from batchd.engines.slurm_outcome import Traces
from batchd.engines.slurm_protocol import (
    WRAPPER,
    WRAPPER_NAME,
    CheckTrace,
    check_path,
    parse_check,
    parse_status,
    status_path,
)

LOG_TAIL = 64 * 1024


def _read_record(path: Path, limit: int) -> str | None:
    """A small record the wrapper wrote, or None (none yet, unreadable)."""
    try:
        return store.read_nofollow(path, limit=limit).decode(errors="replace")
    except (OSError, store.StoreError):
        return None


def read_status(log_path: Path, job_id: str) -> int | None:
    """The exit status the wrapper recorded for job ``job_id``, or None (none, unreadable)."""
    text = _read_record(status_path(log_path, job_id), 64)
    return parse_status(text) if text is not None else None


def read_check(log_path: Path, job_id: str) -> CheckTrace | None:
    """What the wrapper recorded of job ``job_id``'s check, or None (none ran, unreadable)."""
    text = _read_record(check_path(log_path, job_id), 256)
    return parse_check(text) if text is not None else None


def read_tail(
    path: Path, offset: int, end: int | None = None, limit: int = LOG_TAIL
) -> tuple[bytes, int]:
    """The last ``limit`` bytes of the log between ``offset`` and ``end`` (None: its end),
    and how many bytes lie between them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b"", 0
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        stop = size if end is None else max(offset, min(end, size))
        start = max(offset, stop - limit)
        f.seek(start)
        return f.read(max(0, stop - start)), max(0, stop - offset)


def probe(log_path: Path, job_id: str) -> tuple[int | None, bool]:
    """The log's size now (None: unreadable) and whether the wrapper has recorded the
    program's exit status. The log is opened, not just stat'ed: on NFS an open fetches
    the size afresh (close-to-open), where a stat may give a cached one."""
    try:
        fd = os.open(log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        size = None
    else:
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return size, os.path.lexists(status_path(log_path, job_id))


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


def read_traces(log_path: Path, job_id: str, offset: int) -> Traces:
    """What job ``job_id`` left (its attempt's output starts at ``offset``): the recorded
    statuses, and the log split where the check's header begins."""
    status = read_status(log_path, job_id)
    check = read_check(log_path, job_id)
    end = check.agent_end if check is not None else None
    tail, size = read_tail(log_path, offset, end)
    check_tail = b""
    if check is not None:
        check_tail, _ = read_tail(log_path, check.output_from, limit=verify.OUTPUT_TAIL)
    codex = codex_facts_of_log(log_path, offset, end)
    return Traces(status, check, tail, size, check_tail, codex)
