"""The run file: what a local run leaves next to its attempt log (SPEC 16).

While the run goes on, the file names the keeper that holds it (``Held``: its
pid and start time), so that a daemon started meanwhile can find it even
between the runner's exit and the end of its bookkeeping. Once the run has
ended it holds how (``Ended``): the exit status or signal, whether it timed
out, stalled or was stopped, the output's size, why the log is incomplete if
it is, and the tails of stdout and stderr that classification reads. The same
line is what the keeper sends the daemon when the run ends.

A leaf of the standard library only (the keeper imports it). Each version of
the file replaces the previous one by a rename, so a reader sees one or the
other, never a mix. It is not fsynced: after a power loss a run file that is
lost or empty reads as no record, and the attempt runs again, as a reboot
would have it anyway. Never follows a symbolic link.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1
_MAX_BYTES = 1 << 21  # two tails in base64 and a header fit well inside
_TOKEN = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True)
class Held:
    """The run goes on (or did, until a reboot): the keeper that holds it."""

    keeper_pid: int
    keeper_start: int | None  # clock ticks since boot, /proc/PID/stat field 22


@dataclass(frozen=True, kw_only=True)
class Ended:
    """How the run ended, as the keeper saw it."""

    exit_code: int | None  # None when a signal ended it
    signal: int | None = None
    timed_out: bool = False  # runner.timeout, counted from the run's start
    stalled: bool = False  # runner.stall_timeout without output
    stopped: bool = False  # asked to stop (the daemon, or SIGTERM to the keeper)
    output_bytes: int = 0  # stdout, in all
    log_error: str | None = None  # the attempt log is incomplete, and why
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    # What a codex stream said, read from all of stdout as it streamed (``agents.CodexFacts``
    # as a dict); None: stdout was no codex stream.
    codex: dict[str, Any] | None = None


def path_for(log_path: Path, run_id: str) -> Path:
    """``0.1.log`` -> ``0.1.log.local-<the run id's last part>.exit``: one file per run."""
    token = _TOKEN.sub("", run_id.rpartition("-")[2])[:32] or "run"
    return log_path.with_name(f"{log_path.name}.local-{token}.exit")


def take_lines(buf: bytearray) -> list[bytes]:
    """The complete lines at the start of ``buf`` (without their newlines), removed from it:
    the framing of the keeper's socket, one JSON object per line both ways."""
    end = buf.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buf[:end]).split(b"\n")
    del buf[: end + 1]
    return lines


def to_dict(record: Held | Ended) -> dict[str, Any]:
    """The record as JSON values (the tails in base64)."""
    if isinstance(record, Held):
        return {"v": VERSION, "held_by": record.keeper_pid, "start": record.keeper_start}
    out: dict[str, Any] = {"v": VERSION, **record.__dict__}
    out["stdout_tail"] = base64.b64encode(record.stdout_tail).decode()
    out["stderr_tail"] = base64.b64encode(record.stderr_tail).decode()
    return out


def from_dict(raw: object) -> Held | Ended | None:
    """The record of ``to_dict``'s values; None for anything else (a newer version too)."""
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        return None
    fields = {k: v for k, v in raw.items() if k != "v"}
    try:
        if "held_by" in fields:
            return Held(int(fields["held_by"]), _int_or_none(fields.get("start")))
        fields["stdout_tail"] = base64.b64decode(fields.get("stdout_tail", ""))
        fields["stderr_tail"] = base64.b64decode(fields.get("stderr_tail", ""))
        return Ended(**fields)
    except (ValueError, TypeError):
        return None


def encode(record: Held | Ended) -> bytes:
    """One JSON line."""
    return json.dumps(to_dict(record), separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Held | Ended | None:
    """The record of one line; None for anything else (empty, cut short, unknown)."""
    try:
        return from_dict(json.loads(line))
    except ValueError:
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _temp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def discard_temp(path: Path) -> None:
    """Remove the temp file a keeper killed in the middle of a write left (call it only
    when no keeper writes this run file any more)."""
    with contextlib.suppress(OSError):
        os.unlink(_temp(path))


def discard_stale_temps(logs_dir: Path, open_attempts: Collection[tuple[int, int]]) -> int:
    """At start, once the keepers have settled: remove the temp run files in ``logs_dir``
    of attempts that are closed (a keeper killed while writing one left it; no keeper
    writes a closed attempt's run file again). ``open_attempts``: (index, attempt) of the
    batch's open attempts (a parallel batch may have several), whose run files a keeper
    may still write. How many were removed."""
    keep = tuple(f"{index}.{attempt}.log." for index, attempt in open_attempts)
    removed = 0
    try:
        names = os.listdir(logs_dir)
    except OSError:
        return 0
    for name in names:
        if ".local-" not in name or not name.endswith(".exit.tmp"):
            continue
        if keep and name.startswith(keep):
            continue
        with contextlib.suppress(OSError):
            os.unlink(logs_dir / name)
            removed += 1
    return removed


def write(path: Path, record: Held | Ended) -> None:
    """Replace the run file (a temp file beside it, then a rename); OSError on failure."""
    tmp = _temp(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        data = memoryview(encode(record))
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: Path) -> Held | Ended | None:
    """The run file's record; None when there is none (or it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        data = os.read(fd, _MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return decode(data)
