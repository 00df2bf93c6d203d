"""Making runner text safe to repeat (SPEC section 6, CWE-117). Pure.

``sanitize`` is the one gate that runner-derived text passes through before it
reaches the daemon's log, a state file, the audit log or a control reply:
escape sequences and control characters out, CR/LF to spaces, secrets
redacted, cut so that the whole message, ``...[truncated]`` marker included,
is at most 1000 characters. No IO.
"""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 1000
TRUNCATED = "...[truncated]"
REDACTED = "[REDACTED]"

# ESC sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other
# two-byte escapes, and the 8-bit CSI/OSC introducers.
_ANSI_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_WHITESPACE_CTRL_RE = re.compile(r"[\r\n\t]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A token prefix counts only at the start of a word: "disk-usage-monitoring" is not "sk-...".
_START = r"(?<![A-Za-z0-9])"
_SECRET_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(_START + r"github_pat_[A-Za-z0-9_]{10,}"), REDACTED),
    (re.compile(_START + r"gh[pousr]_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(_START + r"sk-ant-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(_START + r"sk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(_START + r"(?:AKIA|ASIA)[0-9A-Z]{16}"), REDACTED),
    (re.compile(_START + r"xox[abprs]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"(?i)(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)((?:password|passwd|api[_-]?key|secret|token)\s*[=:]\s*)[^\s,;'\"]+"),
        r"\1" + REDACTED,
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_RES:
        text = pattern.sub(replacement, text)
    return text


def sanitize(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Make runner-derived text safe for logs, state, audit and replies: at most ``limit``
    characters, the ``...[truncated]`` marker of a cut text included."""
    if not text.isprintable():
        # Redact before stripping escapes too: an escape sequence swallows the character
        # after it, which could be the first of a secret and leave the rest unrecognised.
        text = redact(text)
        text = _ANSI_RE.sub("", text)
        text = _WHITESPACE_CTRL_RE.sub(" ", text)
        text = _CONTROL_RE.sub("", text)
    text = redact(text)  # a printable text (the usual one) has nothing else to strip
    if len(text) > limit:
        marker = TRUNCATED if limit > len(TRUNCATED) else ""
        text = text[: limit - len(marker)] + marker
    return text
