"""Retry decisions, backoff and the breaker (SPEC section 6). Pure: no sleeping, time injected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchd import policy
from batchd.model import RetryState, utc_iso
from batchd.policy import RetryPolicy, after_failure, after_success, backoff_delay, retry_wait

T0 = 1_800_000_000.0


def fresh() -> RetryState:
    return RetryState(
        batch_id="batch-20261124-050653-123456", created_at=utc_iso(T0), updated_at=utc_iso(T0)
    )


def fail(
    state: RetryState,
    *,
    index: int = 0,
    ftype: str = "transient",
    consent: bool = True,
    pol: RetryPolicy | None = None,
    now: float = T0,
    hint: float | None = None,
) -> policy.Decision:
    return after_failure(
        state,
        index=index,
        failure_type=ftype,
        message="m",
        consent=consent,  # type: ignore[arg-type]
        hint_s=hint,
        policy=pol or RetryPolicy(jitter="none"),
        now=now,
        rand=lambda: 0.5,
    )


@pytest.mark.parametrize(
    ("kw", "state_kw", "reason"),
    [
        ({"consent": False}, {}, policy.CONSENT_NOT_GIVEN),
        ({}, {"global_retry_count": 50}, policy.GLOBAL_LIMIT),
        ({}, {"circuit_breaker_open": True, "breaker_opened_at": utc_iso(T0)}, policy.BREAKER_OPEN),
        ({"ftype": "permanent"}, {}, policy.PERMANENT),
        ({}, {"retry_counts": {"0": 3}}, policy.MAX_RETRIES),
        ({}, {}, policy.UNDER_LIMIT),
    ],
)
def test_five_checks_in_order(
    kw: dict[str, object], state_kw: dict[str, object], reason: str
) -> None:
    """Each check of the seed's order gives its reason code."""
    import msgspec

    d = fail(msgspec.structs.replace(fresh(), **state_kw), **kw)  # type: ignore[arg-type]
    assert d.reason == reason and d.retry == (reason == policy.UNDER_LIMIT)
    decision = [e for e in d.events if e.event_type == "retry_decision"]
    assert decision[0].reason == reason


def test_order_consent_before_everything() -> None:
    """With everything failing at once, consent_not_given is the reason given."""
    import msgspec

    s = msgspec.structs.replace(fresh(), global_retry_count=99, retry_counts={"0": 9})
    assert fail(s, consent=False, ftype="permanent").reason == policy.CONSENT_NOT_GIVEN


def test_counters_first_then_breaker_opens_at_threshold() -> None:
    """The 5th consecutive failure opens the breaker before the decision is taken."""
    s = fresh()
    for i in range(4):
        d = fail(s, index=i, ftype="permanent")
        s = d.retry_state
        assert not s.circuit_breaker_open
    d = fail(s, index=4)
    assert d.breaker_opened and d.retry_state.circuit_breaker_open
    assert d.reason == policy.BREAKER_OPEN and d.retry_state.consecutive_failures == 5
    assert d.events[0].event_type == "circuit_breaker_triggered"


def test_success_resets_and_half_open_probe() -> None:
    """A success zeroes the failure run; after the cooldown a success closes the breaker."""
    pol = RetryPolicy(breaker_threshold=1, breaker_cooldown=60, jitter="none")
    s = fail(fresh(), pol=pol).retry_state
    assert policy.breaker_phase(s, T0 + 59, 60) == "open"
    assert policy.breaker_phase(s, T0 + 60, 60) == "half_open"
    again = fail(s, pol=pol, now=T0 + 61)
    assert again.breaker_opened and again.retry_state.breaker_opened_at == utc_iso(T0 + 61)
    s2, events = after_success(again.retry_state, T0 + 200, 60)
    assert not s2.circuit_breaker_open and s2.consecutive_failures == 0
    assert events[0].event_type == "circuit_breaker_reset"
    s3, ev3 = policy.reset_breaker(again.retry_state, T0)
    assert not s3.circuit_breaker_open and ev3.reason == "manual_reset"


def test_retry_counts_durable_fields_and_next_attempt() -> None:
    """A retry increments retry_counts and global_retry_count and sets next_attempt_at."""
    d = fail(fresh(), index=2)
    assert d.retry_state.retry_counts == {"2": 1} and d.retry_state.global_retry_count == 1
    assert d.retry_state.next_attempt_at == utc_iso(T0 + 10.0)
    assert [e.event_type for e in d.events] == ["retry_decision", "retry_attempt"]


def test_backoff_values() -> None:
    """initial * multiplier**(n-1), capped; full jitter scales by the random draw."""
    pol = RetryPolicy(jitter="none")
    assert [backoff_delay(n, pol, lambda: 0.5) for n in (1, 2, 3, 7, 50)] == [10, 20, 40, 600, 600]
    full = RetryPolicy()
    assert backoff_delay(3, full, lambda: 0.25) == 10.0
    assert retry_wait(1, 99999.0, full, lambda: 0.5) == 18000.0
    assert retry_wait(1, 30.0, full, lambda: 0.5) == 30.0


def test_consent_parsing() -> None:
    """true/1/yes/y and false/0/no/n in any case; .env's last assignment wins."""
    assert [policy.parse_consent(v) for v in ("TRUE", "y", "1", "No", "0", "maybe", None)] == [
        True,
        True,
        True,
        False,
        False,
        None,
        None,
    ]
    assert (
        policy.consent_from_dotenv(
            "A=1\nexport BATCH_RETRY_ENABLED=yes\nBATCH_RETRY_ENABLED='false' # x\n"
        )
        is False
    )
    assert policy.consent_from_dotenv("OTHER=1\n") is None


Outcome = st.tuples(
    st.sampled_from(["ok", "transient", "permanent"]), st.integers(0, 5), st.booleans()
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(Outcome, max_size=80),
    st.integers(0, 4),
    st.integers(0, 10),
    st.integers(1, 6),
    st.sampled_from([0.0, 30.0]),
    st.floats(0, 1),
)
def test_invariants_under_any_sequence(
    seq: list[tuple[str, int, bool]], per: int, glob: int, thr: int, cooldown: float, r: float
) -> None:
    """Retries never exceed max_global or max_per_feature; permanent and breaker-open never
    retry; eligible transient failures always retry; waits stay within bounds."""
    pol = RetryPolicy(
        max_per_feature=per,
        max_global=glob,
        breaker_threshold=thr,
        breaker_cooldown=cooldown,
        backoff_max=600,
        max_hint_wait=100,
    )
    s = fresh()
    now = T0
    for kind, index, hinted in seq:
        now += 7
        if kind == "ok":
            s, _ = after_success(s, now, cooldown)
            continue
        before = s
        phase = policy.breaker_phase(before, now, cooldown)
        d = after_failure(
            s,
            index=index,
            failure_type=kind,
            message="m",
            consent=True,  # type: ignore[arg-type]
            hint_s=500.0 if hinted else None,
            policy=pol,
            now=now,
            rand=lambda: r,
        )
        s = d.retry_state
        assert s.global_retry_count <= glob
        assert all(v <= per for v in s.retry_counts.values())
        if kind == "permanent" or s.circuit_breaker_open:
            assert not d.retry
        eligible = (
            kind == "transient"
            and before.global_retry_count < glob
            and before.retry_counts.get(str(index), 0) < per
            and phase == "closed"
            and before.consecutive_failures + 1 < thr
        )
        if eligible:
            assert d.retry
        if d.retry:
            assert 0 <= d.delay_s <= (100 if hinted else 600)
