"""Reset times and retry hints read from the agents' texts (SPEC 6 and 13). Pure.

Every case has a fixed ``now`` and an explicit local zone; the expected times are
written in UTC so that a wrong offset (today's instead of that day's) shows.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from batchd.classify import retry_hint
from batchd.resets import Reset, duration_s, named_zone, reset_at

NOW = 1795496400.0  # 2026-11-24T05:00:00Z: 00:00 in New York (EST), 06:00 in Berlin (CET)
NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "local", "expected"),
    [
        # Claude Code's current forms: a clock time in the named zone, later today.
        ("You've hit your limit · resets 10pm (America/New_York)", BERLIN, "2026-11-25T03:00"),
        ("You've hit your limit · resets 10:30pm (America/New_York)", BERLIN, "2026-11-25T03:30"),
        ("You've hit your limit · resets 22:00 (America/New_York)", BERLIN, "2026-11-25T03:00"),
        ("You’ve hit your limit · resets 10 PM (America/New_York)", BERLIN, "2026-11-25T03:00"),
        # Earlier today in that zone (06:00 in Berlin now): tomorrow.
        ("You've hit your session limit · resets 3am (Europe/Berlin)", NY, "2026-11-25T02:00"),
        ("You're out of extra usage · resets 5pm (UTC)", NY, "2026-11-24T17:00"),
        ("You've hit your weekly limit · resets 12am (UTC)", NY, "2026-11-25T00:00"),
        ("You've hit your limit · resets 12pm (UTC)", NY, "2026-11-24T12:00"),
        # With a date.
        (
            "You've hit your weekly limit · resets Dec 6, 9am (Europe/Berlin)",
            NY,
            "2026-12-06T08:00",
        ),
        (
            "You've hit your weekly limit · resets Dec 6 at 9am (America/New_York)",
            BERLIN,
            "2026-12-06T14:00",
        ),
        ("resets December 6th, 9:30am (UTC)", NY, "2026-12-06T09:30"),
        # No zone: the local one.
        ("You've hit your limit · resets 10pm", BERLIN, "2026-11-24T21:00"),
        ("You've hit your limit · resets 10pm", NY, "2026-11-25T03:00"),
        ("You've hit your limit · resets Dec 6 at 9am", NY, "2026-12-06T14:00"),
        # A zone named in any case (the hint text is lowercased).
        ("you've hit your limit · resets 10pm (america/new_york)", BERLIN, "2026-11-25T03:00"),
        # codex: local time, today or with a date and a year.
        ("You've hit your usage limit. Try again at 3:45 PM.", NY, "2026-11-24T20:45"),
        (
            "You've hit your usage limit. Try again at Dec 29th, 2026 10:15 PM.",
            NY,
            "2026-12-30T03:15",
        ),
        (
            "You've hit your usage limit. Try again at Dec 29th, 2025 10:15 PM.",
            NY,
            "2025-12-30T03:15",
        ),
        # An epoch, ISO 8601 with and without an offset.
        ("Claude AI usage limit reached|1795500000", NY, "2026-11-24T06:00"),
        ("limit resets at 2026-11-24T06:00:00Z", NY, "2026-11-24T06:00"),
        ("limit resets at 2026-11-24T09:00:00+01:00", NY, "2026-11-24T08:00"),
        ("limit resets at 2026-11-24T09:00:00", BERLIN, "2026-11-24T08:00"),
        ("Retry-After: Wed, 25 Nov 2026 07:28:00 GMT", NY, "2026-11-25T07:28"),
    ],
)
def test_absolute_reset_times(text: str, local: ZoneInfo, expected: str) -> None:
    """Each form of SPEC 13, in the named zone or the local one, the next occurrence."""
    found = reset_at(text, NOW, local)
    assert found == Reset(utc(expected)), (text, found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (
            "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) "
            "or try again in 2 days 17 hours 14 minutes.",
            2 * 86400 + 17 * 3600 + 14 * 60,
        ),
        ("You've hit your usage limit. Try again in 45 seconds.", 45),
        ("You've hit your usage limit. Try again in 1 hour.", 3600),
        ("try again in 1 day", 86400),
        ("try again in 3 hours, 20 minutes and 5 seconds", 3 * 3600 + 20 * 60 + 5),
        ("resets in 1h30m", 5400),
        ("rate limit exceeded, retry after 30 seconds", 30),
        ("Retry-After: 30", 30),
        ('{"retry_after": 12}', 12),
        ("retry after 500ms", 0.5),
    ],
)
def test_relative_waits(text: str, seconds: float) -> None:
    """Durations with days, hours, minutes, seconds (and ms) count from now."""
    assert reset_at(text, NOW, NY) == Reset(NOW + seconds)


def test_retry_hint_reads_days_as_days() -> None:
    """The retry hint of a failure reads "2 days" as two days (it read 2 seconds)."""
    assert retry_hint("try again in 2 days 17 hours 14 minutes.", NOW) == 234840.0
    assert retry_hint("please try again in 2 days", NOW) == 172800.0


@pytest.mark.parametrize(
    "text",
    [
        "You've hit your limit",
        "You've hit your usage limit. Try again later.",
        "resets 5",  # no am/pm, no minutes: not a clock time
        "resets 25:00 (UTC)",
        "resets 13pm (UTC)",
        "resets Feb 30, 9am (UTC)",
        "resets at 2026-13-45T06:00:00Z",
        "finished at 10pm",
    ],
)
def test_texts_without_a_reset_time(text: str) -> None:
    """No time, or one that cannot be: no reset time (the caller waits probe_interval)."""
    assert reset_at(text, NOW, NY) == Reset(None)


def test_an_unknown_zone_is_read_as_local_and_says_so() -> None:
    """An unknown zone name: the local zone, and a note for the log naming it."""
    found = reset_at("You've hit your limit · resets 10pm (Mars/Olympus_Mons)", NOW, BERLIN)
    assert found.at == utc("2026-11-24T21:00")
    assert found.note == "unknown time zone 'Mars/Olympus_Mons' in a reset time: read as local time"
    assert named_zone("../../etc/passwd", NY)[0] is NY


def test_the_next_occurrence_across_the_end_of_dst_in_new_york() -> None:
    """23:30 EDT on Oct 31, 2026, "resets 10pm": Nov 1 22:00 is EST (-5), 22.5 h of
    wall clock but 23.5 h of real time later; a date the same."""
    now = utc("2026-11-01T03:30")  # Oct 31, 23:30 EDT
    assert reset_at("resets 10pm (America/New_York)", now, BERLIN).at == utc("2026-11-02T03:00")
    at = reset_at("resets Nov 1, 9am (America/New_York)", now, BERLIN).at
    assert at == utc("2026-11-01T14:00")


def test_the_next_occurrence_across_the_start_of_dst_in_berlin() -> None:
    """21:00 CET on Mar 28, 2026, "resets 9am": Mar 29 09:00 is CEST (+2), 07:00 UTC."""
    now = utc("2026-03-28T20:00")
    assert reset_at("resets 9am (Europe/Berlin)", now, NY).at == utc("2026-03-29T07:00")
    # And back to CET at the end of October, the local zone this time.
    now = utc("2026-10-24T20:00")  # 22:00 CEST
    assert reset_at("resets 9am", now, BERLIN).at == utc("2026-10-25T08:00")


def test_a_time_that_just_passed_is_tomorrow_and_a_date_the_nearest_year() -> None:
    """A time equal to now is tomorrow's; a date without a year is the nearest one, so a
    reset that just passed around New Year is not a year away."""
    now = utc("2026-11-24T22:00")
    assert reset_at("resets 10pm (UTC)", now, NY).at == utc("2026-11-25T22:00")
    now = utc("2027-01-02T12:00")
    assert reset_at("resets Dec 30, 9am (UTC)", now, NY).at == utc("2026-12-30T09:00")
    assert reset_at("resets Jan 3, 9am (UTC)", now, NY).at == utc("2027-01-03T09:00")


def test_no_zone_at_all_is_the_process_local_time() -> None:
    """zone=None: the process's own local time (TZ), with its DST rules."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert reset_at("resets 10pm", NOW, None).at == utc("2026-11-25T03:00")
        assert reset_at("resets Nov 1, 9am", utc("2026-11-01T03:30"), None).at == utc(
            "2026-11-01T14:00"
        )
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_duration_units() -> None:
    """Each unit and its spellings."""
    assert duration_s("2d 3h 4m 5s") == 2 * 86400 + 3 * 3600 + 4 * 60 + 5
    assert duration_s("1 day 1 hr 1 min 1 sec 500 ms") == 86400 + 3600 + 60 + 1.5
    assert duration_s("10") == 10
