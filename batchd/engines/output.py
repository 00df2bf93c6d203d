"""codex's events read from an attempt log written by someone else (a Slurm job).

A long codex run prints far more than the tail kept for classification, and its
thread id and early turns lie before it: ``codex_facts_of_log`` reads the whole
log from the attempt's offset, in chunks. (A local run's facts are read as they
stream, by the keeper.) No processes, no waiting.
"""

from __future__ import annotations

import os
from pathlib import Path

from batchd.agents import CodexFacts, CodexStream

_CHUNK = 1 << 20


def codex_facts_of_log(path: Path, offset: int) -> CodexFacts:
    """codex's events in an attempt log written by someone else (a Slurm job), from
    ``offset`` to its end, read in chunks: exact however long the log (SPEC 13)."""
    stream = CodexStream()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return stream.facts()
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            stream.feed(chunk)
    return stream.facts()
