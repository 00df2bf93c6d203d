"""Retry decisions, backoff and the circuit breaker (SPEC section 6). Pure: time and
randomness are injected, nothing sleeps."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from batchd import policy
from batchd.model import FailureType, RetryState, utc_iso
from batchd.policy import (
    Decision,
    RetryPolicy,
    after_failure,
    after_success,
    backoff_delay,
    breaker_phase,
    consent_from_dotenv,
    parse_consent,
    reset_breaker,
    retry_wait,
)

T0 = 1_800_000_000.0
BATCH_ID = "batch-20261124-050653-123456"
NO_JITTER = RetryPolicy(jitter="none")


def fresh(**fields: Any) -> RetryState:
    state = RetryState(batch_id=BATCH_ID, created_at=utc_iso(T0), updated_at=utc_iso(T0))
    return msgspec.structs.replace(state, **fields)


def fail(
    state: RetryState,
    *,
    index: int = 0,
    ftype: FailureType = "transient",
    consent: bool = True,
    pol: RetryPolicy = NO_JITTER,
    now: float = T0,
    hint: float | None = None,
    rand: Callable[[], float] = lambda: 0.5,
    message: str = "ConnectionError",
) -> Decision:
    return after_failure(
        state,
        index=index,
        failure_type=ftype,
        message=message,
        consent=consent,
        hint_s=hint,
        policy=pol,
        now=now,
        rand=rand,
    )


# --- the five checks, in order ------------------------------------------------------

CHECKS = ("consent", "global", "breaker", "permanent", "per_feature")
REASONS = {
    "consent": policy.CONSENT_NOT_GIVEN,
    "global": policy.GLOBAL_LIMIT,
    "breaker": policy.BREAKER_OPEN,
    "permanent": policy.PERMANENT,
    "per_feature": policy.MAX_RETRIES,
}
ALL_COMBINATIONS = [
    frozenset(c) for n in range(len(CHECKS) + 1) for c in itertools.combinations(CHECKS, n)
]


def test_reason_codes_are_the_seeds() -> None:
    """The reason codes written to the audit log are the seed's names."""
    assert [REASONS[c] for c in CHECKS] + [policy.UNDER_LIMIT] == [
        "consent_not_given",
        "global_retry_limit_reached",
        "circuit_breaker_open",
        "permanent_failure",
        "max_retries_reached",
        "under_retry_limit",
    ]


@pytest.mark.parametrize("failing", ALL_COMBINATIONS, ids=lambda c: "+".join(sorted(c)) or "none")
def test_five_checks_first_failing_one_gives_the_reason(failing: frozenset[str]) -> None:
    """With any set of checks failing, the reason is the first failing one in the seed's order."""
    state = fresh(
        global_retry_count=50 if "global" in failing else 49,
        retry_counts={"0": 3 if "per_feature" in failing else 2},
        circuit_breaker_open="breaker" in failing,
        breaker_opened_at=utc_iso(T0) if "breaker" in failing else None,
    )
    d = fail(
        state,
        consent="consent" not in failing,
        ftype="permanent" if "permanent" in failing else "transient",
    )
    expected = next((REASONS[c] for c in CHECKS if c in failing), policy.UNDER_LIMIT)
    assert d.reason == expected
    assert d.retry is (expected == policy.UNDER_LIMIT)
    decision = [e for e in d.events if e.event_type == "retry_decision"]
    assert len(decision) == 1 and decision[0].reason == expected
    assert decision[0].decision == ("retry" if d.retry else "fail")


def test_retry_increments_counts_and_sets_next_attempt() -> None:
    """A retry increments retry_counts and global_retry_count when decided, before the wait."""
    d = fail(fresh(), index=2, now=T0 + 5)
    assert d.retry and d.reason == policy.UNDER_LIMIT and d.delay_s == 10.0
    assert d.retry_state == fresh(
        retry_counts={"2": 1},
        global_retry_count=1,
        consecutive_failures=1,
        next_attempt_at=utc_iso(T0 + 15),
        updated_at=utc_iso(T0 + 5),
    )
    assert [e.event_type for e in d.events] == ["retry_decision", "retry_attempt"]


def test_retry_audit_events_carry_every_field() -> None:
    """The audit events name the batch, feature, counts, type, decision, reason and message."""
    d = fail(fresh(retry_counts={"1": 1}, global_retry_count=4), index=1, message="boom")
    decision, attempt = d.events
    assert msgspec.to_builtins(decision) == {
        "timestamp": utc_iso(T0),
        "event_type": "retry_decision",
        "batch_id": BATCH_ID,
        "feature_index": 1,
        "retry_count": 2,
        "global_retry_count": 5,
        "failure_type": "transient",
        "decision": "retry",
        "reason": "under_retry_limit",
        "error_message": "boom",
        "until": None,
    }
    assert attempt.event_type == "retry_attempt" and attempt.retry_count == 2
    assert attempt.reason == f"next attempt at {utc_iso(T0 + 20)} (in 20.0s)"


def test_no_retry_leaves_counts_and_clears_next_attempt() -> None:
    """A failure that is not retried moves only consecutive_failures; no wait is pending."""
    before = fresh(retry_counts={"0": 1}, global_retry_count=1, next_attempt_at=utc_iso(T0))
    d = fail(before, ftype="permanent", now=T0 + 1)
    assert not d.retry and d.delay_s == 0.0
    assert d.retry_state == msgspec.structs.replace(
        before, consecutive_failures=1, next_attempt_at=None, updated_at=utc_iso(T0 + 1)
    )
    assert [e.event_type for e in d.events] == ["retry_decision"]


def test_input_state_is_not_changed() -> None:
    """after_failure returns a new state; the caller's copy is untouched."""
    before = fresh(retry_counts={"0": 1})
    snapshot = msgspec.json.encode(before)
    fail(before)
    assert msgspec.json.encode(before) == snapshot


def test_retry_counts_are_per_feature() -> None:
    """Each feature has its own count; max_per_feature is reached per feature."""
    pol = RetryPolicy(jitter="none", max_per_feature=1)
    s = fail(fresh(), index=0, pol=pol).retry_state
    assert fail(s, index=0, pol=pol).reason == policy.MAX_RETRIES
    d = fail(s, index=1, pol=pol)
    assert d.retry and d.retry_state.retry_counts == {"0": 1, "1": 1}


def test_zero_limits_mean_no_retries() -> None:
    """max_per_feature = 0 or max_global = 0 turns retries off."""
    assert fail(fresh(), pol=RetryPolicy(max_per_feature=0)).reason == policy.MAX_RETRIES
    assert fail(fresh(), pol=RetryPolicy(max_global=0)).reason == policy.GLOBAL_LIMIT


# --- counters first, then the breaker, then the decision ---------------------------


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_breaker_opens_at_threshold_before_the_decision(threshold: int) -> None:
    """The threshold-th consecutive failure opens the breaker, and that failure is not retried."""
    pol = RetryPolicy(jitter="none", breaker_threshold=threshold, max_per_feature=99)
    s = fresh()
    for i in range(threshold - 1):
        d = fail(s, index=i, pol=pol, now=T0 + i)
        assert d.retry and not d.breaker_opened and not d.retry_state.circuit_breaker_open
        s = d.retry_state
    d = fail(s, index=9, pol=pol, now=T0 + 100)
    assert d.breaker_opened and not d.retry and d.reason == policy.BREAKER_OPEN
    assert d.retry_state.consecutive_failures == threshold
    assert d.retry_state.circuit_breaker_open
    assert d.retry_state.breaker_opened_at == utc_iso(T0 + 100)
    trig = d.events[0]
    assert (trig.event_type, trig.reason, trig.feature_index) == (
        "circuit_breaker_triggered",
        "consecutive_failures",
        9,
    )
    assert [e.event_type for e in d.events] == ["circuit_breaker_triggered", "retry_decision"]


def test_breaker_opens_even_without_consent() -> None:
    """Counters move on every failed attempt, whatever the decision's reason."""
    d = fail(fresh(consecutive_failures=4), consent=False)
    assert d.breaker_opened and d.reason == policy.CONSENT_NOT_GIVEN
    assert d.retry_state.consecutive_failures == 5


def test_failures_while_open_do_not_reopen() -> None:
    """Further failures while open count, but do not trigger the breaker again."""
    s = fresh(consecutive_failures=5, circuit_breaker_open=True, breaker_opened_at=utc_iso(T0))
    d = fail(s, now=T0 + 10)
    assert not d.breaker_opened and d.reason == policy.BREAKER_OPEN
    assert d.retry_state.consecutive_failures == 6
    assert d.retry_state.breaker_opened_at == utc_iso(T0)
    assert [e.event_type for e in d.events] == ["retry_decision"]


def test_success_resets_the_failure_run() -> None:
    """A completed feature sets consecutive_failures to 0 (no event while closed)."""
    s, events = after_success(fresh(consecutive_failures=3), T0 + 1, 0)
    assert s == fresh(consecutive_failures=0, updated_at=utc_iso(T0 + 1)) and events == ()
    same = fresh()
    assert after_success(same, T0, 0) == (same, ())


@pytest.mark.parametrize(
    ("cooldown", "after", "phase"),
    [
        (0.0, 0.0, "open"),
        (0.0, 1e9, "open"),
        (60.0, 59.999, "open"),
        (60.0, 60.0, "half_open"),
        (60.0, 3600.0, "half_open"),
    ],
)
def test_breaker_phase_with_injected_now(cooldown: float, after: float, phase: str) -> None:
    """Open until the cooldown has passed, then half-open; cooldown 0 never half-opens."""
    s = fresh(circuit_breaker_open=True, breaker_opened_at=utc_iso(T0))
    assert breaker_phase(s, T0 + after, cooldown) == phase
    assert breaker_phase(fresh(), T0 + after, cooldown) == "closed"


def test_half_open_probe_failure_reopens() -> None:
    """A failure while half-open opens the breaker again with a new opened_at; no retry."""
    pol = RetryPolicy(jitter="none", breaker_threshold=5, breaker_cooldown=60)
    s = fresh(consecutive_failures=5, circuit_breaker_open=True, breaker_opened_at=utc_iso(T0))
    d = fail(s, pol=pol, now=T0 + 61)
    assert d.breaker_opened and not d.retry and d.reason == policy.BREAKER_OPEN
    assert d.retry_state.breaker_opened_at == utc_iso(T0 + 61)
    assert d.events[0].reason == "half_open_probe_failed"
    assert breaker_phase(d.retry_state, T0 + 62, 60) == "open"


def test_half_open_probe_success_closes() -> None:
    """A success while half-open closes the breaker and zeroes the run, with an audit event."""
    s = fresh(consecutive_failures=5, circuit_breaker_open=True, breaker_opened_at=utc_iso(T0))
    new, events = after_success(s, T0 + 60, 60)
    assert new == fresh(updated_at=utc_iso(T0 + 60))
    assert [(e.event_type, e.reason) for e in events] == [
        ("circuit_breaker_reset", "half_open_probe_succeeded")
    ]


def test_success_while_fully_open_keeps_the_breaker_open() -> None:
    """Before the cooldown, a success resets the run but the breaker stays open."""
    s = fresh(consecutive_failures=5, circuit_breaker_open=True, breaker_opened_at=utc_iso(T0))
    new, events = after_success(s, T0 + 10, 60)
    assert new.circuit_breaker_open and new.consecutive_failures == 0 and events == ()


def test_reset_breaker_closes_and_zeroes() -> None:
    """reset-breaker closes at once, zeroes consecutive_failures, and is audited."""
    s = fresh(
        consecutive_failures=7,
        circuit_breaker_open=True,
        breaker_opened_at=utc_iso(T0),
        retry_counts={"0": 2},
        global_retry_count=2,
    )
    new, event = reset_breaker(s, T0 + 5)
    assert new == fresh(retry_counts={"0": 2}, global_retry_count=2, updated_at=utc_iso(T0 + 5))
    assert (event.event_type, event.reason, event.batch_id, event.feature_index) == (
        "circuit_breaker_reset",
        "manual_reset",
        BATCH_ID,
        None,
    )
    assert fail(new).retry


# --- backoff and hints ------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 320.0), (7, 600.0), (10_000, 600.0)],
)
def test_backoff_without_jitter(n: int, expected: float) -> None:
    """initial * multiplier**(n-1), capped at backoff_max (no overflow for huge n)."""
    assert backoff_delay(n, NO_JITTER, lambda: 0.5) == expected


@pytest.mark.parametrize(
    ("n", "r", "expected"),
    [(1, 0.0, 0.0), (1, 0.5, 5.0), (3, 0.25, 10.0), (7, 0.5, 300.0), (50, 0.999, 599.4)],
)
def test_backoff_full_jitter_scales_by_the_draw(n: int, r: float, expected: float) -> None:
    """Full jitter: uniform 0..delay, i.e. the capped delay times the injected draw."""
    assert backoff_delay(n, RetryPolicy(), lambda: r) == pytest.approx(expected)


def test_backoff_other_settings() -> None:
    """backoff_initial, backoff_multiplier and backoff_max come from the policy."""
    pol = RetryPolicy(jitter="none", backoff_initial=1.5, backoff_multiplier=3, backoff_max=20)
    assert [backoff_delay(n, pol, lambda: 0.0) for n in (1, 2, 3, 4)] == [1.5, 4.5, 13.5, 20]


@pytest.mark.parametrize(
    ("hint", "expected"),
    [(30.0, 30.0), (0.0, 0.0), (-5.0, 0.0), (18000.0, 18000.0), (99999.0, 18000.0)],
)
def test_hint_wins_and_is_capped(hint: float, expected: float) -> None:
    """A hint replaces the backoff, never negative, never beyond max_hint_wait."""
    assert retry_wait(3, hint, RetryPolicy(), lambda: 0.5) == expected
    assert retry_wait(3, None, NO_JITTER, lambda: 0.5) == 40.0


def test_hint_through_after_failure() -> None:
    """after_failure waits for the hint, capped by max_hint_wait, and records next_attempt_at."""
    pol = RetryPolicy(max_hint_wait=100)
    d = fail(fresh(), pol=pol, hint=3600.0)
    assert d.delay_s == 100.0 and d.retry_state.next_attempt_at == utc_iso(T0 + 100)
    assert fail(fresh(), pol=pol, hint=7.0).delay_s == 7.0


def test_backoff_grows_with_the_features_retries() -> None:
    """The n-th retry of a feature waits backoff(n)."""
    s = fresh()
    delays = []
    for k in range(3):
        d = fail(s, now=T0 + k)
        delays.append(d.delay_s)
        s = d.retry_state
    assert delays == [10.0, 20.0, 40.0]


# --- consent ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Y", True),
        (" y ", True),
        ('"yes"', True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("N", False),
        ("'no'", False),
        ("maybe", None),
        ("", None),
        ("2", None),
        ("on", None),
        (None, None),
    ],
)
def test_parse_consent(value: str | None, expected: bool | None) -> None:
    """true/1/yes/y and false/0/no/n in any case; anything else is unset."""
    assert parse_consent(value) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BATCH_RETRY_ENABLED=true\n", True),
        ("A=1\nBATCH_RETRY_ENABLED=no\n", False),
        ("export BATCH_RETRY_ENABLED=yes\n", True),
        ("BATCH_RETRY_ENABLED = 'y'\n", True),
        ('BATCH_RETRY_ENABLED="0" # off for now\n', False),
        ("BATCH_RETRY_ENABLED=yes\nBATCH_RETRY_ENABLED=false\n", False),
        ("BATCH_RETRY_ENABLED=yes\nBATCH_RETRY_ENABLED=garbage\n", True),
        ("# BATCH_RETRY_ENABLED=yes\n", None),
        ("MY_BATCH_RETRY_ENABLED=yes\n", None),
        ("OTHER=1\n", None),
        ("", None),
        ("BATCH_RETRY_ENABLED=1\r\n", True),
    ],
)
def test_consent_from_dotenv(text: str, expected: bool | None) -> None:
    """The .env file's BATCH_RETRY_ENABLED is read like the environment variable."""
    assert consent_from_dotenv(text) is expected


# --- properties: any sequence of outcomes ------------------------------------------

EVENT = st.one_of(
    st.tuples(st.just("ok"), st.integers(0, 4), st.none()),
    st.tuples(
        st.sampled_from(["transient", "permanent"]),
        st.integers(0, 4),
        st.none() | st.floats(-10, 1e6, allow_nan=False),
    ),
    st.tuples(st.just("reset"), st.just(0), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(EVENT, st.floats(0, 120), st.booleans()), max_size=60),
    per=st.integers(0, 4),
    glob=st.integers(0, 10),
    threshold=st.integers(1, 6),
    cooldown=st.sampled_from([0.0, 30.0, 300.0]),
    jitter=st.sampled_from(["full", "none"]),
    r=st.floats(0, 1, exclude_max=True),
)
def test_invariants_under_any_sequence(
    events: list[tuple[tuple[str, int, float | None], float, bool]],
    per: int,
    glob: int,
    threshold: int,
    cooldown: float,
    jitter: str,
    r: float,
) -> None:
    """Under any outcome sequence each failure is retried exactly when eligible, within limits."""
    pol = RetryPolicy(
        max_per_feature=per,
        max_global=glob,
        breaker_threshold=threshold,
        breaker_cooldown=cooldown,
        jitter="full" if jitter == "full" else "none",
        backoff_max=600,
        max_hint_wait=1000,
    )
    s = fresh()
    now = T0
    retries_by_feature: dict[int, int] = {}
    for (kind, index, hint), dt, consent in events:
        now += dt
        if kind == "ok":
            s, _ = after_success(s, now, cooldown)
            assert s.consecutive_failures == 0
            continue
        if kind == "reset":
            s, _ = reset_breaker(s, now)
            continue
        before = s
        phase = breaker_phase(before, now, cooldown)
        ftype: FailureType = "transient" if kind == "transient" else "permanent"
        d = fail(s, index=index, ftype=ftype, consent=consent, pol=pol, now=now, hint=hint)
        s = d.retry_state
        assert s.consecutive_failures == before.consecutive_failures + 1
        assert s.global_retry_count <= glob
        assert all(0 <= v <= per for v in s.retry_counts.values())
        if d.retry:
            retries_by_feature[index] = retries_by_feature.get(index, 0) + 1
            assert ftype == "transient" and consent
            assert not s.circuit_breaker_open and phase == "closed"
            assert s.global_retry_count == before.global_retry_count + 1
            if hint is None:
                assert 0 <= d.delay_s <= pol.backoff_max
            else:
                assert 0 <= d.delay_s <= pol.max_hint_wait
            assert s.next_attempt_at == utc_iso(now + d.delay_s)
        else:
            assert s.global_retry_count == before.global_retry_count
            assert s.retry_counts == before.retry_counts and s.next_attempt_at is None
        if ftype == "permanent" or s.circuit_breaker_open:
            assert not d.retry
        eligible = (
            ftype == "transient"
            and consent
            and phase == "closed"
            and before.consecutive_failures + 1 < threshold
            and before.global_retry_count < glob
            and before.retry_counts.get(str(index), 0) < per
        )
        assert d.retry is eligible
    assert sum(retries_by_feature.values()) <= glob
    assert all(n <= per for n in retries_by_feature.values())


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(-5, 100_000),
    initial=st.floats(0, 1e6),
    multiplier=st.floats(1, 1e3),
    cap=st.floats(0, 1e6),
    r=st.floats(0, 1),
    jitter=st.booleans(),
)
def test_backoff_always_within_bounds(
    n: int, initial: float, multiplier: float, cap: float, r: float, jitter: bool
) -> None:
    """Whatever the settings and retry number, backoff is within [0, backoff_max]."""
    pol = RetryPolicy(
        backoff_initial=initial,
        backoff_multiplier=multiplier,
        backoff_max=cap,
        jitter="full" if jitter else "none",
    )
    assert 0 <= backoff_delay(n, pol, lambda: r) <= cap


@settings(max_examples=200, deadline=None)
@given(
    hint=st.floats(allow_nan=False) | st.none(),
    cap=st.floats(0, 1e6),
    n=st.integers(1, 50),
    r=st.floats(0, 1),
)
def test_hint_never_beyond_max_hint_wait(hint: float | None, cap: float, n: int, r: float) -> None:
    """A hint's wait is within [0, max_hint_wait]; without one, the backoff bounds hold."""
    pol = RetryPolicy(max_hint_wait=cap)
    wait = retry_wait(n, hint, pol, lambda: r)
    assert 0 <= wait <= (cap if hint is not None else pol.backoff_max)


class RetryMachine(RuleBasedStateMachine):
    """One batch's retry bookkeeping driven through failures, successes, resets and time."""

    def __init__(self) -> None:
        super().__init__()
        self.state = fresh()
        self.now = T0
        self.pol = NO_JITTER
        self.retries: dict[int, int] = {}

    @initialize(
        per=st.integers(0, 3),
        glob=st.integers(0, 8),
        threshold=st.integers(1, 5),
        cooldown=st.sampled_from([0.0, 60.0]),
    )
    def configure(self, per: int, glob: int, threshold: int, cooldown: float) -> None:
        self.pol = RetryPolicy(
            max_per_feature=per,
            max_global=glob,
            breaker_threshold=threshold,
            breaker_cooldown=cooldown,
            max_hint_wait=500,
        )

    @rule(seconds=st.floats(0, 200))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(
        index=st.integers(0, 3),
        ftype=st.sampled_from(["transient", "permanent"]),
        consent=st.booleans(),
        hint=st.none() | st.floats(0, 1e5),
        r=st.floats(0, 1),
    )
    def failure(self, index: int, ftype: str, consent: bool, hint: float | None, r: float) -> None:
        phase = breaker_phase(self.state, self.now, self.pol.breaker_cooldown)
        kind: FailureType = "permanent" if ftype == "permanent" else "transient"
        d = fail(
            self.state,
            index=index,
            ftype=kind,
            consent=consent,
            pol=self.pol,
            now=self.now,
            hint=hint,
            rand=lambda: r,
        )
        if kind == "permanent" or phase != "closed" or d.retry_state.circuit_breaker_open:
            assert not d.retry
        if d.retry:
            self.retries[index] = self.retries.get(index, 0) + 1
            bound = self.pol.max_hint_wait if hint is not None else self.pol.backoff_max
            assert 0 <= d.delay_s <= bound
        self.state = d.retry_state

    @rule()
    def success(self) -> None:
        self.state, _ = after_success(self.state, self.now, self.pol.breaker_cooldown)

    @precondition(lambda self: self.state.circuit_breaker_open)
    @rule()
    def manual_reset(self) -> None:
        self.state, event = reset_breaker(self.state, self.now)
        assert event.event_type == "circuit_breaker_reset"

    @invariant()
    def retries_within_limits(self) -> None:
        assert self.state.global_retry_count == sum(self.retries.values())
        assert self.state.global_retry_count <= self.pol.max_global
        assert all(n <= self.pol.max_per_feature for n in self.retries.values())
        assert {k: v for k, v in self.state.retry_counts.items() if v} == {
            str(k): v for k, v in self.retries.items()
        }

    @invariant()
    def breaker_fields_agree(self) -> None:
        assert self.state.circuit_breaker_open == (self.state.breaker_opened_at is not None)
        if self.state.consecutive_failures >= self.pol.breaker_threshold:
            assert self.state.circuit_breaker_open


RetryMachine.TestCase.settings = settings(max_examples=200, deadline=None, stateful_step_count=20)
TestRetryMachine = RetryMachine.TestCase
TestRetryMachine.__doc__ = "Hypothesis state machine: retry limits and breaker invariants hold."
