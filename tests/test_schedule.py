"""The scheduler (schedule.py), h11 style: give it the whole situation, assert the whole plan.
Pure: no loop, no processes; ``now`` is a number."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batchd.schedule import Candidate, Plan, plan

NOW = 1_800_000_000.0


def c(
    bid: str, seq: int, cwd: str, ready_at: float | None = None, reserves: bool = True
) -> Candidate:
    return Candidate(bid, seq, cwd, ready_at=ready_at, reserves_cwd=reserves)


def test_one_slot_takes_the_lowest_seq() -> None:
    """With one slot and nothing running, the lowest seq starts; nothing else does."""
    got = plan([c("b", 2, "/x"), c("a", 1, "/y")], slots=1, running={}, paused=False, now=NOW)
    assert got == Plan(("a",), None)


def test_slots_fill_in_seq_order_across_cwds() -> None:
    """Three slots over batches in three cwds start all three, lowest seq first."""
    cands = [c("c", 3, "/z"), c("a", 1, "/x"), c("b", 2, "/y"), c("d", 4, "/w")]
    assert plan(cands, slots=3, running={}, paused=False, now=NOW) == Plan(("a", "b", "c"), None)


def test_two_batches_in_one_cwd_never_run_together() -> None:
    """The second batch of a cwd waits even with free slots; a later cwd goes meanwhile."""
    cands = [c("a", 1, "/repo"), c("b", 2, "/repo"), c("x", 3, "/other")]
    assert plan(cands, slots=3, running={}, paused=False, now=NOW) == Plan(("a", "x"), None)


def test_a_running_batch_is_not_started_again_and_holds_its_cwd() -> None:
    """A running batch (a slot used) is never planned twice; its cwd stays busy."""
    cands = [c("a", 1, "/repo"), c("b", 2, "/repo"), c("x", 3, "/other")]
    got = plan(cands, slots=2, running={"a": "/repo"}, paused=False, now=NOW)
    assert got == Plan(("x",), None)


def test_never_more_than_slots() -> None:
    """Running features count against the slots: fewer slots than running starts nothing."""
    cands = [c("x", 3, "/x"), c("y", 4, "/y")]
    running = {"a": "/a", "b": "/b"}
    assert plan(cands, slots=2, running=running, paused=False, now=NOW) == Plan((), None)
    assert plan(cands, slots=1, running=running, paused=False, now=NOW) == Plan((), None)
    assert plan(cands, slots=3, running=running, paused=False, now=NOW) == Plan(("x",), None)


def test_a_retry_wait_frees_the_slot_but_keeps_the_cwd() -> None:
    """A batch waiting for its retry starts nothing; its cwd stays reserved (a later batch of
    that repository waits), another cwd takes the slot; wake at the retry time."""
    cands = [c("a", 1, "/repo", ready_at=NOW + 30), c("b", 2, "/repo"), c("x", 3, "/other")]
    assert plan(cands, slots=1, running={}, paused=False, now=NOW) == Plan(("x",), NOW + 30)


def test_a_retry_whose_time_has_come_starts() -> None:
    """At (or after) its time, a waiting batch is an ordinary candidate again."""
    cands = [c("a", 1, "/repo", ready_at=NOW), c("b", 2, "/repo")]
    assert plan(cands, slots=1, running={}, paused=False, now=NOW) == Plan(("a",), None)


def test_a_breaker_probe_does_not_reserve_its_cwd() -> None:
    """A batch paused by its breaker waits for the half-open time without holding its cwd."""
    cands = [c("a", 1, "/repo", ready_at=NOW + 60, reserves=False), c("b", 2, "/repo")]
    assert plan(cands, slots=1, running={}, paused=False, now=NOW) == Plan(("b",), NOW + 60)


def test_the_soonest_time_is_the_wake_time() -> None:
    """Several timed candidates: the plan wakes at the soonest of them."""
    cands = [c("a", 1, "/a", ready_at=NOW + 50), c("b", 2, "/b", ready_at=NOW + 5)]
    assert plan(cands, slots=4, running={}, paused=False, now=NOW) == Plan((), NOW + 5)


def test_a_paused_queue_starts_nothing_and_sleeps_until_woken() -> None:
    """A queue pause: nothing starts and no timer is needed (a resume wakes the loop)."""
    cands = [c("a", 1, "/a"), c("b", 2, "/b", ready_at=NOW + 5)]
    assert plan(cands, slots=4, running={}, paused=True, now=NOW) == Plan((), None)


def test_a_slow_batch_never_holds_back_another_cwd() -> None:
    """The lowest seq is busy in its cwd: the next seq in a free cwd takes the free slot."""
    cands = [c("a", 1, "/slow"), c("b", 2, "/fast")]
    got = plan(cands, slots=2, running={"a": "/slow"}, paused=False, now=NOW)
    assert got == Plan(("b",), None)


def test_nothing_to_do() -> None:
    """No candidates: no start, no timer."""
    assert plan([], slots=1, running={}, paused=False, now=NOW) == Plan((), None)


cwds = st.sampled_from(["/a", "/b", "/c", "/d"])


@given(
    st.lists(
        st.tuples(cwds, st.one_of(st.none(), st.floats(NOW - 10, NOW + 10)), st.booleans()),
        max_size=12,
    ),
    st.integers(1, 5),
    st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), cwds, max_size=3),
)
def test_invariants(
    specs: list[tuple[str, float | None, bool]], slots: int, running: dict[str, str]
) -> None:
    """Whatever the situation: never more than the slots, never two in one cwd (with the
    running ones), never a running or not-yet-ready batch, and lowest seq first among
    those that could start."""
    cands = [c(f"b{i}", i, cwd, at, res) for i, (cwd, at, res) in enumerate(specs)]
    got = plan(cands, slots=slots, running=running, paused=False, now=NOW)
    started = [x for x in cands if x.batch_id in got.start]
    assert len(started) + len(running) <= max(slots, len(running))
    cwds_used = [x.cwd for x in started] + list(running.values())
    assert len({x.cwd for x in started}) == len(started)
    assert not {x.cwd for x in started} & set(running.values())
    assert all(x.ready_at is None or x.ready_at <= NOW for x in started)
    assert [x.seq for x in started] == sorted(x.seq for x in started)
    reserved = {
        x.cwd for x in cands if x.reserves_cwd and x.ready_at is not None and x.ready_at > NOW
    }
    assert not {x.cwd for x in started} & reserved
    # Nothing that could have started was passed over while a slot stayed free.
    if len(started) + len(running) < slots:
        for x in cands:
            ready = x.ready_at is None or x.ready_at <= NOW
            if ready and x.cwd not in cwds_used and x.cwd not in reserved:
                assert x.batch_id in got.start


# --- usage-limit waits per runner profile (SPEC 13) -----------------------------------------


def p(bid: str, seq: int, cwd: str, profile: str, ready_at: float | None = None) -> Candidate:
    """A candidate on runner profile ``profile``; a limit wait holds it without its cwd."""
    return Candidate(
        bid, seq, cwd, ready_at=ready_at, reserves_cwd=ready_at is None, profile=profile
    )


def test_a_profile_waiting_for_its_limit_lets_the_other_profile_run() -> None:
    """claude waits (ready_at in an hour, cwd not reserved): codex starts, even in that cwd;
    the plan wakes when claude's wait ends."""
    cands = [p("a", 1, "/repo", "claude", NOW + 3600), p("b", 2, "/repo", "codex")]
    got = plan(cands, slots=2, running={}, paused=False, now=NOW)
    assert got == Plan(("b",), NOW + 3600)


def test_after_the_wait_one_probe_runs_per_profile() -> None:
    """The wait passed (claude probing): one claude feature starts, the second claude batch
    waits for the probe's outcome; codex runs beside it."""
    cands = [p("a", 1, "/a", "claude"), p("b", 2, "/b", "claude"), p("c", 3, "/c", "codex")]
    got = plan(cands, slots=3, running={}, paused=False, now=NOW, probing={"claude"})
    assert got == Plan(("a", "c"), None)


def test_a_running_probe_holds_its_profile() -> None:
    """While the probe runs, nothing else of its profile starts, though slots are free."""
    cands = [p("b", 2, "/b", "claude"), p("c", 3, "/c", "codex")]
    got = plan(
        cands,
        slots=3,
        running={"a": "/a"},
        paused=False,
        now=NOW,
        probing={"claude"},
        running_profiles=["claude"],
    )
    assert got == Plan(("c",), None)
