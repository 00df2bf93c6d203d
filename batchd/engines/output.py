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


def codex_facts_of_log(path: Path, offset: int, end: int | None = None) -> CodexFacts:
    """codex's events in an attempt log written by someone else (a Slurm job), from
    ``offset`` to ``end`` (None: its end; a check's output follows the agent's), read in
    chunks: exact however long the log (SPEC 13)."""
    stream = CodexStream()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return stream.facts()
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        left = None if end is None else max(0, end - offset)
        while left != 0 and (chunk := f.read(_CHUNK if left is None else min(_CHUNK, left))):
            stream.feed(chunk)
            left = None if left is None else left - len(chunk)
    return stream.facts()
