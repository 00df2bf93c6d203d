"""The names inside a spool directory, and which of them the daemon reads. Pure.

Shared by the daemon (``spool``) and ``batchctl`` (which must start fast, so
this module imports nothing).
"""

from __future__ import annotations

REJECTED = "rejected"
CLAIMED = ".claimed"  # claimed files wait here for their batch (same file system, always)
LOCK = ".batchd.lock"  # held by the daemon that owns this spool
_IGNORED_SUFFIXES = (".tmp", ".part", "~")


def is_ignored(name: str) -> bool:
    """Names the spool never reads: dot files, partial writes, editor backups, rejected/."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES) or name == REJECTED
