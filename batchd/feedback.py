"""The last failure fed back to the next attempt (SPEC 14).

* ``last_error``: the value of ``{last_error}`` in ``runner.command``, the sanitised
  message of this feature's previous failed attempt (empty on its first attempt).
* ``feedback_text``: the text of the ``BATCHD_LAST_ERROR_FILE``, that message plus the
  last 16 KiB of the failed check's output (else of the attempt's stderr): secrets
  redacted, escape sequences and control characters removed, newlines kept, cut on a
  character boundary.
* ``write_feedback_file``: the one IO helper, writing that text 0600 into a private
  directory the caller owns.

What this module must never do: put raw runner output anywhere but that file (and
there only cleaned), follow a link, or decide whether an attempt runs again.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from batchd.classify import redact, sanitize
from batchd.model import Attempt

FEEDBACK_BYTES = 16 * 1024
_FAILED = frozenset({"failed", "timed_out"})


def previous_failure(history: Sequence[Attempt], index: int) -> Attempt | None:
    """The latest failed (or timed out) attempt of feature ``index``, or None."""
    for a in reversed(history):
        if a.feature_index == index and a.outcome in _FAILED:
            return a
    return None


def last_error(history: Sequence[Attempt], index: int) -> str:
    """``{last_error}``: the previous failure's message, sanitised; "" when there was none."""
    a = previous_failure(history, index)
    if a is None:
        return ""
    return sanitize(a.error_message or f"the attempt {a.outcome} (exit code {a.exit_code})")


def feedback_text(
    message: str, *, check_output: bytes | None = None, stderr: bytes | None = None
) -> str:
    """The file's text: the message, then the end of the check's output when the check
    failed, else the end of the attempt's stderr (at most ``FEEDBACK_BYTES`` of it, UTF-8)."""
    head = sanitize(message)
    if check_output:
        title, output = "the check's output", check_output
    elif stderr:
        title, output = "the agent's stderr", stderr
    else:
        return head + "\n"
    tail = clean_lines(_drop_partial_start(output).decode("utf-8", "replace"))
    tail = last_bytes(tail, FEEDBACK_BYTES).strip("\n")
    if not tail:
        return head + "\n"
    return f"{head}\n\n--- the end of {title} ---\n{tail}\n"


def clean_lines(text: str) -> str:
    """Secrets redacted, escape sequences and control characters out, newlines kept (a CR
    of a progress line becomes a space)."""
    text = redact(text.replace("\r\n", "\n"))  # first: a secret may run across a line end
    return "\n".join(sanitize(line, sys.maxsize) for line in text.split("\n"))


def last_bytes(text: str, limit: int) -> str:
    """The end of ``text`` that fits in ``limit`` bytes of UTF-8, starting on a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return _drop_partial_start(data[-limit:]).decode("utf-8", "replace")


def _drop_partial_start(data: bytes) -> bytes:
    """Without the continuation bytes of a character cut at the start (at most three)."""
    i = 0
    while i < min(3, len(data)) and data[i] & 0xC0 == 0x80:
        i += 1
    return data[i:]


# --- IO -----------------------------------------------------------------------------------


def write_feedback_file(directory: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``directory/name``, 0600, and return the path.

    ``directory`` must be a real directory (not a link) of this user with mode 0700;
    ``name`` a plain file name. A file of that name left by an earlier run (a daemon
    killed before it removed it) is replaced; a link there is removed, never followed.
    OSError when the file cannot be written (a full disk), ValueError for a bad place.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"feedback file name {name!r} is not a plain file name")
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ValueError(
            f"{directory}: the feedback file needs a directory of this user with mode 0700 "
            f"(this one: {'a directory' if stat.S_ISDIR(st.st_mode) else 'not a directory'}, "
            f"mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})"
        )
    path = directory / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(text.encode("utf-8", "replace"))
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path
