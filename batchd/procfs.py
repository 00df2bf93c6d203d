"""What /proc says about processes: start times, liveness, groups, environments, children,
working directories.

The one place that parses ``/proc/<pid>/stat`` (its ``comm`` field may hold
spaces and parentheses: the fields are split after the last ``)``). Read
only; nothing here signals or waits for a process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

_STATE, _PPID, _PGRP, _START = 0, 1, 2, 19  # after the comm field (fields 3, 4, 5, 22 of proc(5))


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after ``comm`` (field 3 of proc(5) is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone."""
    fields = stat_fields(pid)
    return int(fields[_START]) if fields and len(fields) > _START else None


_TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")


def boottime_ns() -> int:
    """CLOCK_BOOTTIME, the clock the kernel stamps a new process's start time with."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def start_time_of_child(pid: int, before_ns: int, after_ns: int) -> int | None:
    """The start time of ``pid``, forked between two ``boottime_ns`` readings.

    When both readings fall in one clock tick, that tick is the start time, with no read
    of ``/proc/PID/stat`` (which, right after a spawn, waits for the child's exec to
    finish: most of a millisecond). Else it is read as ``start_time`` does.
    """
    if before_ns // _TICK_NS == after_ns // _TICK_NS:
        return before_ns // _TICK_NS
    return start_time(pid)


def parent(pid: int) -> int | None:
    """The parent of ``pid``, or None if gone."""
    fields = stat_fields(pid)
    return int(fields[_PPID]) if fields and len(fields) > _PPID else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """Is ``pid`` a live (not zombie) process, and the one that started at ``started``?"""
    fields = stat_fields(pid)
    if not fields or fields[_STATE] == "Z":
        return False
    return started is None or (len(fields) > _START and int(fields[_START]) == started)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    found = []
    for pid in _pids():
        fields = stat_fields(pid)
        if fields and len(fields) > _PGRP and fields[_PGRP] == str(pgid) and fields[_STATE] != "Z":
            found.append(pid)
    return found


def _mine() -> Iterator[int]:
    """The pids of this user's processes, batchd's own excepted."""
    uid, me = os.getuid(), os.getpid()
    for pid in _pids():
        try:
            if pid != me and os.stat(f"/proc/{pid}").st_uid == uid:
                yield pid
        except OSError:
            continue


def with_env(marker: bytes) -> list[int]:
    """Live processes of this user whose environment holds ``marker`` (``KEY=value-prefix``)."""
    found = []
    for pid in _mine():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if b"\0" + marker in b"\0" + env and is_alive(pid):
            found.append(pid)
    return found


def env_value(pid: int, key: str) -> str | None:
    """The value of ``key`` in the environment ``pid`` started with, or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    prefix = key.encode() + b"="
    for entry in env.split(b"\0"):
        if entry.startswith(prefix):
            return os.fsdecode(entry[len(prefix) :])
    return None


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (over all its threads)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return out


def with_cwd_under(path: str) -> list[int]:
    """Live processes of this user whose working directory is ``path`` or inside it
    (``path`` as ``os.path.realpath`` gives it; the kernel's cwd links are real paths)."""
    inside = path.rstrip("/") + "/"
    found = []
    for pid in _mine():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd == path or cwd.startswith(inside)) and is_alive(pid):
            found.append(pid)
    return found
