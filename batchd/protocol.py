"""The wire contract shared by the daemon and batchctl.

Standard library only: batchctl imports this module and must start fast, so
nothing here may import anyio or msgspec. The daemon's msgspec structs for
requests live in ``batchd.server`` and are checked against these names.

Framing: one JSON object per line, UTF-8, at most ``MAX_LINE_BYTES``.
Request: ``{"v": 1, "id": N, "cmd": "...", "args": {...}}``.
Reply: ``{"v": 1, "id": N, "ok": true, "result": {...}}`` or
``{"v": 1, "id": N, "ok": false, "error": {"code": "...", "message": "..."}}``.
Streaming commands (``watch``, ``logs`` with ``follow``) send
``{"v": 1, "id": N, "event": {...}}`` lines before (or instead of) the reply.
"""

from __future__ import annotations

import re

VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
STALL_TIMEOUT_S = 10.0

BATCH_ID_PATTERN = r"batch-[0-9]{8}-[0-9]{6}-[0-9]{6}"
BATCH_ID_RE = re.compile(rf"\A{BATCH_ID_PATTERN}\Z")

COMMANDS = (
    "ping",
    "status",
    "list",
    "watch",
    "show",
    "cancel",
    "retry",
    "reset-breaker",
    "pause",
    "resume",
    "skip",
    "logs",
    "consent",
    "prune",
    "reload",
    "limit",
    "report",
    "restart",
)

# Error codes a reply may carry.
E_BAD_REQUEST = "bad_request"  # malformed JSON, wrong framing, wrong version
E_UNKNOWN_COMMAND = "unknown_command"
E_BAD_ARGS = "bad_args"
E_UNKNOWN_BATCH = "unknown_batch"
E_BAD_STATE = "bad_state"  # the command does not apply to the batch as it is
E_TOO_LARGE = "too_large"
E_FORBIDDEN = "forbidden"
E_INTERNAL = "internal"
E_IO = "io_error"


def is_batch_id(text: str) -> bool:
    """True when ``text`` is a well-formed batch id (safe to use in a path)."""
    return BATCH_ID_RE.match(text) is not None
