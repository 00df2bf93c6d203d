"""A parallel worktree batch (SPEC 15) in the pure core: several open attempts in one batch
(batch.py), its candidates, one per startable feature (startable.py), and the scheduler
giving it several slots (schedule.py). Pure: no loop, no files, time injected."""

from __future__ import annotations

from typing import Any

from batchd.batch import Batch, new_batch
from batchd.classify import Verdict
from batchd.model import utc_iso
from batchd.parse import Options, ParsedBatch
from batchd.policy import RetryPolicy
from batchd.schedule import Candidate, Plan, plan, slot_key
from batchd.startable import candidates
from batchd.transitions import PAUSE_BREAKER, Settings

T0 = 1_800_000_000.0
BID = "batch-20261124-050653-123456"
OK = Verdict("completed", tokens=10, cost_usd=0.1)
TRANSIENT = Verdict("failed", "transient", "merging ... conflicts in 1 files: a.txt")
PERMANENT = Verdict("failed", "permanent", "exit code 1: TypeError")
S = Settings(policy=RetryPolicy(jitter="none", backoff_initial=10.0))


def make(n: int = 4, parallel: bool = True) -> Batch:
    options = Options(isolation="worktree", parallel=parallel)
    parsed = ParsedBatch(features=[f"f{i}" for i in range(n)], name="p", options=options)
    return new_batch(
        batch_id=BID, seq=3, parsed=parsed, features_file="p.json", source_sha256="0" * 64, now=T0
    )


def begin(b: Batch, index: int, at: float = T0) -> None:
    b.begin(index=index, now=at, pid=100 + index, pid_start_time=1)


def record(b: Batch, index: int, verdict: Verdict, at: float) -> Any:
    return b.record(
        verdict,
        exit_code=0,
        consent=True,
        hint_s=None,
        settings=S,
        now=at,
        rand=lambda: 1.0,
        index=index,
    )


def cands(b: Batch, busy: tuple[int, ...] = (), limit: int = 8) -> list[Candidate]:
    return candidates(
        b.state, b.retry, b.settled, 0.0, lambda i: f"/wt/{i}", busy=busy, limit=limit
    )


def test_features_of_a_parallel_batch_run_and_end_in_any_order() -> None:
    """Three attempts open at once; they end out of order, each recorded by its feature;
    current_index is the lowest unsettled feature, and the batch finishes with the last."""
    b = make(3)
    for i in range(3):
        begin(b, i)
    assert [a.feature_index for a in b.open_attempts()] == [0, 1, 2]
    assert b.open_attempt() is b.state.processing_history[2]
    assert b.open_attempt(1) is b.state.processing_history[1]
    assert not record(b, 1, OK, T0 + 1).finished
    assert (b.state.completed_features, b.state.current_index) == ([1], 0)
    assert [a.feature_index for a in b.open_attempts()] == [0, 2]
    assert b.open_attempt(1) is None
    assert not record(b, 0, OK, T0 + 2).finished
    assert (b.state.current_index, b.state.status) == (2, "in_progress")
    step = record(b, 2, PERMANENT, T0 + 3)
    assert step.finished and b.state.status == "failed"
    assert [(a.feature_index, a.outcome) for a in b.state.processing_history] == [
        (0, "completed"),
        (1, "completed"),
        (2, "failed"),
    ]


def test_an_interruption_closes_only_its_own_feature() -> None:
    """mark_interrupted of one feature leaves the others open; that feature keeps its
    attempt number (it runs again in the same worktree)."""
    b = make(2)
    begin(b, 0)
    begin(b, 1)
    b.mark_interrupted(T0 + 1, "interrupted: stopped", 0)
    assert [a.feature_index for a in b.open_attempts()] == [1]
    assert b.attempt_number(0) == 1 and b.attempt_number(1) == 1


def test_a_retry_wait_holds_new_starts_but_not_what_runs() -> None:
    """A conflict's retry waits (the batch's wait): every candidate waits for it, a feature
    already taken starts without ending it early; the retry, once due, ends it."""
    b = make(3)
    begin(b, 0)
    begin(b, 1)
    step = record(b, 0, TRANSIENT, T0 + 1)
    assert step.retry_delay == 10.0 and b.attempt_number(0) == 2
    due = T0 + 11
    assert b.retry.next_attempt_at == utc_iso(due)
    assert [(c.index, c.ready_at, c.reserves_cwd) for c in cands(b, busy=(1,))] == [
        (0, due, True),
        (2, due, True),
    ]
    begin(b, 2, T0 + 2)  # its slot was taken before the wait began
    assert b.retry.next_attempt_at == utc_iso(due)
    begin(b, 0, due)
    assert b.retry.next_attempt_at is None and b.attempt_number(0) == 2


def test_a_parallel_batch_offers_each_startable_feature_in_its_own_worktree() -> None:
    """Candidates: the unsettled features that hold no slot, in index order, up to the
    limit, each with its worktree and its slot key; a sequential batch offers one."""
    b = make(5)
    begin(b, 0)
    record(b, 0, OK, T0 + 1)
    got = cands(b, busy=(2,), limit=2)
    assert [(c.index, c.cwd, c.key) for c in got] == [
        (1, "/wt/1", f"{BID}#1"),
        (3, "/wt/3", f"{BID}#3"),
    ]
    seq = make(5, parallel=False)
    [one] = cands(seq)
    assert (one.index, one.cwd, one.key) == (None, "/wt/0", BID)


def test_a_paused_parallel_batch_offers_one_probe_and_only_when_nothing_of_it_runs() -> None:
    """Paused by the user: nothing. Paused by its breaker with a cooldown: one feature, the
    half-open probe, and none while a feature of it still runs."""
    b = make(3)
    b.pause(T0)
    assert cands(b) == []
    b.state.pause_reason = PAUSE_BREAKER
    b.retry.breaker_opened_at = utc_iso(T0)
    got = candidates(b.state, b.retry, b.settled, 60.0, str, limit=3)
    assert [(c.index, c.ready_at, c.reserves_cwd) for c in got] == [(0, T0 + 60, False)]
    assert candidates(b.state, b.retry, b.settled, 60.0, str, busy=(1,), limit=3) == []


def test_may_start_asks_the_feature_not_the_batchs_next_index() -> None:
    """A taken slot of a parallel batch may start while its feature is unsettled, whatever
    current_index says; a sequential batch's only at its current index."""
    b = make(3)
    assert b.may_start(2, T0, 0.0)
    begin(b, 2)
    record(b, 2, OK, T0 + 1)
    assert not b.may_start(2, T0, 0.0)
    seq = make(3, parallel=False)
    assert seq.may_start(0, T0, 0.0) and not seq.may_start(2, T0, 0.0)


def test_the_scheduler_gives_a_parallel_batch_several_slots() -> None:
    """Three features of one parallel batch and a sequential batch: the slots go by seq,
    then index; a running feature's key is not started again, and a sequential batch that
    runs is not offered another slot."""
    par = [Candidate(BID, 1, f"/wt/{i}", index=i) for i in range(3)]
    other = Candidate("b2", 2, "/repo")
    assert plan([*par, other], slots=2, running={}, paused=False, now=T0) == Plan(
        (slot_key(BID, 0), slot_key(BID, 1)), None
    )
    running = {slot_key(BID, 0): "/wt/0", "b2": "/repo"}
    got = plan([*par[1:], other], slots=4, running=running, paused=False, now=T0)
    assert got == Plan((f"{BID}#1", f"{BID}#2"), None)
