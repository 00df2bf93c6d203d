"""When a wait asked for by an agent's text ends: reset times and retry hints. Pure.

``reset_at(text, now, zone)`` reads, in this order (SPEC sections 6 and 13):

* an epoch after ``|`` (``Claude AI usage limit reached|1795500000``) or after
  ``reset:``;
* a relative duration after ``try again in``, ``retry in``, ``resets in``
  (``2 days 17 hours 14 minutes``, ``45 seconds``, ``1h30m``);
* ``retry after N [unit]`` / ``Retry-After: N`` / an HTTP date after it;
* an ISO 8601 timestamp after ``reset``/``resets at``/``try again at``; one
  without an offset is in ``zone``;
* a clock time after ``resets``/``try again at`` (``10pm``, ``10:30pm``,
  ``22:00``, ``3:45 PM``), with or without a date (``Dec 6, 9am``, ``Dec 6 at
  9am``, ``Dec 29th, 2025 10:15 PM``), with or without a zone in parentheses
  (``(America/New_York)``). The wall-clock time is built in that zone and
  ``zoneinfo`` picks the offset of that day (a DST change in between is
  honoured). A time without a date is its next occurrence after ``now``; a
  date without a year is the one nearest to ``now``.

``zone`` is the daemon's local zone; None means the process's local time
(``time.mktime`` rules). A named zone that is unknown is read as ``zone`` and
the result carries a note for the log. No IO beyond ``zoneinfo``'s database,
no clock: ``now`` is passed in.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones


@dataclass(frozen=True)
class Reset:
    at: float | None  # epoch seconds; None: the text names no time
    note: str | None = None  # worth a line in the log (an unknown zone read as local)


# --- durations --------------------------------------------------------------------

_UNITS: tuple[tuple[str, float], ...] = (
    ("ms", 0.001),
    ("milli", 0.001),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
)
_UNIT = r"milliseconds?|ms|days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s"
_PART = r"(\d+(?:\.\d+)?)\s*(" + _UNIT + r")?(?![a-z])"
_PART_RE = re.compile(_PART, re.I)
_DURATION = _PART + r"(?:\s*(?:,|and)?\s*" + _PART + r")*"


def duration_s(text: str) -> float:
    """``2 days 17 hours 14 minutes`` -> 234840.0; a number without a unit is seconds."""
    total = 0.0
    for number, unit in _PART_RE.findall(text):
        total += float(number) * _unit_seconds(unit.lower())
    return total


def _unit_seconds(unit: str) -> float:
    if not unit:
        return 1.0
    return next(factor for prefix, factor in _UNITS if unit.startswith(prefix))


# --- the readers, in order ------------------------------------------------------------

_EPOCH_RE = re.compile(r"(?:\||\breset(?:s|_at)?\s*[:=]\s*)(\d{10})(?!\d)", re.I)
_RELATIVE_RE = re.compile(
    r"\b(?:try again|retry|resets?|available(?: again)?)\s+in\s+(" + _DURATION + ")", re.I
)
_RETRY_AFTER_RE = re.compile(r"retry[-_ ]after[\"']?\s*[:=]?\s*", re.I)
_HTTP_DATE_RE = re.compile(r"[a-z]{3}, \d\d [a-z]{3} \d{4} \d\d:\d\d:\d\d gmt", re.I)
# Where an absolute time follows: "resets 10pm", "reset at", "resets_at", "try again at".
_AT = (
    r"\b(?:resets?(?:_at)?|try again|retry|available(?: again)?)[\"']?"
    r"\s*(?:[:=]\s*[\"']?|at\s+|on\s+)?\s*"
)
_ISO_RE = re.compile(
    _AT + r"(\d{4}-\d\d-\d\d[t ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:z|[+-]\d\d:?\d\d)?)(?![\d:])",
    re.I,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = (
    r"(?P<mon>" + "|".join(_MONTHS) + r")[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?"
    r"(?:,?\s+(?P<year>\d{4}))?"
)
_TIME = r"(?P<hour>\d{1,2})(?::(?P<min>\d\d))?(?::(?P<sec>\d\d))?\s*(?P<ampm>[ap]\.?m\b\.?)?"
_CLOCK_RE = re.compile(
    _AT + r"(?:" + _DATE + r"(?:\s*,\s*|\s+at\s+|\s+))?" + _TIME + r"(?![\d:])"
    r"(?:\s*\((?P<zone>[^()]{1,64})\)|\s+(?P<zone2>[a-z]+/[a-z_]+(?:/[a-z_]+)?|utc|gmt)\b)?",
    re.I,
)


def reset_at(text: str, now: float, zone: tzinfo | None = None) -> Reset:
    """The time the text says a wait ends, or ``Reset(None)``."""
    for reader in (_epoch, _relative, _retry_after, _iso, _clock):
        found = reader(text, now, zone)
        if found is not None:
            return found
    return Reset(None)


def _epoch(text: str, now: float, zone: tzinfo | None) -> Reset | None:
    m = _EPOCH_RE.search(text)
    return Reset(float(m.group(1))) if m else None


def _relative(text: str, now: float, zone: tzinfo | None) -> Reset | None:
    m = _RELATIVE_RE.search(text)
    return Reset(now + duration_s(m.group(1))) if m else None


def _retry_after(text: str, now: float, zone: tzinfo | None) -> Reset | None:
    m = _RETRY_AFTER_RE.search(text)
    if m is None:
        return None
    rest = text[m.end() :]
    stamp = _HTTP_DATE_RE.match(rest)
    if stamp is not None:
        try:
            return Reset(parsedate_to_datetime(stamp.group(0)).timestamp())
        except (ValueError, TypeError):
            return None
    part = re.match(_DURATION, rest, re.I)
    return Reset(now + duration_s(part.group(0))) if part else None


def _iso(text: str, now: float, zone: tzinfo | None) -> Reset | None:
    m = _ISO_RE.search(text)
    if m is None:
        return None
    stamp = m.group(1).upper().replace(" ", "T")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone) if zone is not None else when
    return Reset(when.timestamp())


def _clock(text: str, now: float, zone: tzinfo | None) -> Reset | None:
    for m in _CLOCK_RE.finditer(text):
        wall = _wall_time(m)
        if wall is None:
            continue
        name = m.group("zone") or m.group("zone2")
        tz, note = (zone, None) if not name else named_zone(name.strip(), zone)
        try:
            at = _occurrence(m, wall, now, tz)
        except ValueError:  # Feb 30, a year out of range
            continue
        return Reset(at, note)
    return None


def _wall_time(m: re.Match[str]) -> time | None:
    """The clock time of a match; None when it is not one (``resets 5`` with no am/pm)."""
    hour, ampm = int(m.group("hour")), (m.group("ampm") or "").lower()
    minute, second = int(m.group("min") or 0), int(m.group("sec") or 0)
    if not ampm and m.group("min") is None:
        return None
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.startswith("p") else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    return time(hour, minute, second)


def _occurrence(m: re.Match[str], wall: time, now: float, tz: tzinfo | None) -> float:
    """Epoch seconds of the wall-clock time in ``tz``: the date given, else the next one."""
    today = datetime.fromtimestamp(now, tz).date()
    if m.group("mon") is None:
        at = _stamp(today, wall, tz)
        return at if at > now else _stamp(today + timedelta(days=1), wall, tz)
    month, day = _MONTHS.index(m.group("mon")[:3].lower()) + 1, int(m.group("day"))
    if m.group("year"):
        return _stamp(date(int(m.group("year")), month, day), wall, tz)
    years = (today.year - 1, today.year, today.year + 1)
    stamps = [_stamp(date(y, month, day), wall, tz) for y in years if _valid(y, month, day)]
    if not stamps:
        raise ValueError("no such date")
    return min(stamps, key=lambda at: abs(at - now))


def _valid(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _stamp(day: date, wall: time, tz: tzinfo | None) -> float:
    """The wall-clock time of that day in ``tz`` (None: local time), as epoch seconds."""
    return datetime.combine(day, wall, tzinfo=tz).timestamp()


def named_zone(name: str, fallback: tzinfo | None) -> tuple[tzinfo | None, str | None]:
    """The IANA zone ``name`` (any case), or ``fallback`` and a note saying so."""
    key = _zone_keys().get(name.lower(), name)
    try:
        return ZoneInfo(key), None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return fallback, f"unknown time zone {name[:64]!r} in a reset time: read as local time"


@functools.cache
def _zone_keys() -> dict[str, str]:
    """Lowercased IANA keys to their spelling (the hint text is lowercased)."""
    return {key.lower(): key for key in available_timezones()}
