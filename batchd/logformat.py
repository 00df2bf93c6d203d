"""The daemon's log lines on stderr: one line per event, journald priorities under systemd.

Owns the format (UTC timestamp, pid and level in a terminal; ``<N>`` priority
prefixes when ``JOURNAL_STREAM`` names stderr), the escaping of control
characters so that a message can never forge a second line, and installing
the one handler on the ``batchd`` logger. Never opens a file or a socket and
never talks to journald directly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

__all__ = ["journal_stream_matches", "setup_logging"]


def journal_stream_matches(env: Mapping[str, str], fd: int = 2) -> bool:
    """Is ``fd`` the stream ``JOURNAL_STREAM`` (``<dev>:<ino>``) names?

    The variable is inherited by children whose stderr may be elsewhere, so
    only the same device and inode count.
    """
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def _priority(levelno: int) -> int:
    """syslog priority of a logging level: 3 err, 4 warning, 6 info (and notice), 7 debug."""
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


# Control characters in a message (say, from a file name) would start a fake
# log line or drive the terminal: they are shown escaped. Tab is kept.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r"}


class _Formatter(logging.Formatter):
    """One line per event; a traceback follows on lines of its own, each marked."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().translate(_ESCAPES)
        if self.journal:
            # journald reads <N> as the priority and adds its own timestamp.
            mark = f"<{_priority(record.levelno)}>"
            head = mark + message
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            head = (
                f"{stamp}.{int(record.msecs):03d}Z batchd[{record.process}]: "
                f"{record.levelname} {message}"
            )
            mark = "    "
        extra: list[str] = []
        if record.exc_info:
            extra += self.formatException(record.exc_info).splitlines()
        if record.stack_info:
            extra += self.formatStack(record.stack_info).splitlines()
        return "\n".join([head, *(mark + line for line in extra)])


class _Handler(logging.StreamHandler[TextIO]):
    """The handler setup_logging installs (recognised, and replaced, on a second call)."""


def setup_logging(level: int = logging.INFO, env: Mapping[str, str] | None = None) -> None:
    """Log the ``batchd`` logger (and its children) to stderr, one line per event.

    With ``JOURNAL_STREAM`` naming stderr: ``<N>message`` (journald priority,
    no timestamp). Otherwise ``2026-11-24T05:06:53.123Z batchd[pid]: LEVEL
    message`` in UTC. Calling it again replaces the handler, never adds one.
    """
    env = os.environ if env is None else env
    logger = logging.getLogger("batchd")
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter(journal=journal_stream_matches(env)))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # No caller lookup per record (a walk of the stack): no line of ours shows the file or
    # line of the call (the "Optimization" section of the logging documentation).
    logging._srcfile = None
