"""Usage-limit waits per runner profile (limitwait.py, SPEC 13). Pure: ``now`` is a number,
every function returns the whole result, asserted whole."""

from __future__ import annotations

from batchd.limitwait import (
    Hit,
    LimitRules,
    blocked_until,
    clear,
    duration,
    ends_after,
    event,
    on_limited,
    probing,
)
from batchd.model import AuditEvent, LimitWait, utc_iso

NOW = 1_800_000_000.0
RULES = LimitRules(reset_margin=120, probe_interval=1800, max_limit_wait=86400)


def test_a_reset_time_waits_until_it_plus_the_margin() -> None:
    """A limit that resets in an hour: the profile waits an hour and two minutes."""
    hit = on_limited({}, "claude", reset_at=NOW + 3600, message="hit", now=NOW, rules=RULES)
    assert hit == Hit(
        "claude",
        LimitWait(until=utc_iso(NOW + 3720), since=utc_iso(NOW), message="hit"),
        began=True,
    )


def test_no_reset_time_waits_the_probe_interval() -> None:
    """The text named no reset time: wait limits.probe_interval, then probe."""
    hit = on_limited({}, "codex", reset_at=None, message="m", now=NOW, rules=RULES)
    assert hit.wait is not None and hit.wait.until == utc_iso(NOW + 1800) and hit.began


def test_a_reset_already_past_still_waits_the_margin() -> None:
    """A reset time in the past (clock skew): the margin still applies, from now."""
    hit = on_limited({}, "claude", reset_at=NOW - 50, message="m", now=NOW, rules=RULES)
    assert hit.wait is not None and hit.wait.until == utc_iso(NOW + 120)


def test_a_reset_too_far_away_pauses_instead() -> None:
    """Past limits.max_limit_wait: no wait, the profile's batches pause with usage_limit."""
    hit = on_limited({}, "claude", reset_at=NOW + 3 * 86400, message="weekly", now=NOW, rules=RULES)
    assert hit.wait is None and not hit.began
    assert hit.pause_reason is not None
    assert hit.pause_reason.startswith("usage_limit: claude's usage limit resets at ")
    assert "limits.max_limit_wait (86400 s)" in hit.pause_reason and "weekly" in hit.pause_reason


def test_a_second_slot_hitting_the_limit_extends_the_wait_without_a_new_one() -> None:
    """Two slots of one profile both hit it: one wait (its since kept), the later reset."""
    first = on_limited({}, "claude", reset_at=NOW + 600, message="a", now=NOW, rules=RULES)
    assert first.wait is not None
    waits = {"claude": first.wait}
    second = on_limited(waits, "claude", reset_at=NOW + 900, message="b", now=NOW + 5, rules=RULES)
    assert second == Hit(
        "claude",
        LimitWait(until=utc_iso(NOW + 1020), since=utc_iso(NOW), message="b"),
        began=False,
    )


def test_blocked_until_probing_and_the_end_of_a_wait() -> None:
    """Before the wait's end: blocked, not probing; after: not blocked, probing, and any
    other outcome of that profile ends it; another profile is never held."""
    waits = {"claude": LimitWait(until=utc_iso(NOW + 60), since=utc_iso(NOW), message="m")}
    assert blocked_until(waits, "claude", NOW) == NOW + 60
    assert blocked_until(waits, "codex", NOW) is None
    assert probing(waits, NOW) == frozenset() and not ends_after(waits, "claude", NOW)
    assert blocked_until(waits, "claude", NOW + 60) is None
    assert probing(waits, NOW + 60) == frozenset({"claude"})
    assert ends_after(waits, "claude", NOW + 61) and not ends_after(waits, "codex", NOW + 61)


def test_clear_names_the_profiles_whose_wait_ends() -> None:
    """--clear without a runner ends every wait; with one, that one (if it waits)."""
    w = LimitWait(until=utc_iso(NOW), since=utc_iso(NOW), message="m")
    waits = {"codex": w, "claude": w}
    assert clear(waits, None) == ["claude", "codex"]
    assert clear(waits, "codex") == ["codex"] and clear(waits, "other") == []


def test_audit_events_of_a_wait() -> None:
    """usage_limit_wait carries the until and the text; usage_limit_end its reason."""
    w = LimitWait(until=utc_iso(NOW + 60), since=utc_iso(NOW), message="hit")
    assert event("usage_limit_wait", batch_id="b", now=NOW, wait=w, feature_index=2) == AuditEvent(
        timestamp=utc_iso(NOW),
        event_type="usage_limit_wait",
        batch_id="b",
        feature_index=2,
        decision="wait",
        until=utc_iso(NOW + 60),
        error_message="hit",
    )
    end = event("usage_limit_end", batch_id="b", now=NOW, reason="cleared")
    assert (end.event_type, end.reason, end.until) == ("usage_limit_end", "cleared", None)


def test_durations_in_words() -> None:
    """3 h 12 min, 12 min, 45 s, 2 d 17 h."""
    assert [duration(s) for s in (11520, 720, 45, 2 * 86400 + 17 * 3600 + 60)] == [
        "3 h 12 min",
        "12 min",
        "45 s",
        "2 d 17 h",
    ]
