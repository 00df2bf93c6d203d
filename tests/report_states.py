"""A fixed morning of batch states for the report's tests (tests/test_report.py).

One night, 2026-11-23 22:00 to 2026-11-24 07:00 UTC: a completed batch with a
check that failed once, a failed one, batches paused by the user, the breaker,
the cost cap and a logged-out agent, one waiting for codex's usage limit, one
running its check, one whose breaker is open while it goes on, a batch written by
an older version (tests/data/v0.2-state.json, decoded as stored), a finished one
from the day before (outside the 24 h window), and the queue paused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from batchd.model import (
    Attempt,
    BatchState,
    DaemonState,
    FailedFeature,
    GitEvidence,
    LimitWait,
    Outcome,
    RetryState,
    VerifyResult,
    batch_id_for,
    parse_iso,
    utc_iso,
)
from batchd.report import Records

DATA = Path(__file__).resolve().parent / "data"
T0 = parse_iso("2026-11-23T22:00:00.000000Z")
NOW = parse_iso("2026-11-24T07:00:00.000000Z")
STATE_DIR = "/home/me/.local/state/batchd"


def at(minutes: float) -> str:
    return utc_iso(T0 + minutes * 60)


def log_path(batch_id: str, index: int, attempt: int) -> str:
    return f"{STATE_DIR}/batches/{batch_id}/logs/{index}.{attempt}.log"


def attempt(
    index: int,
    n: int,
    start: float,
    minutes: float | None,
    outcome: Outcome | None,
    **kw: Any,
) -> Attempt:
    """Attempt ``n`` of feature ``index``, started ``start`` minutes into the night."""
    return Attempt(
        feature_index=index,
        attempt=n,
        started_at=at(start),
        finished_at=None if minutes is None else at(start + minutes),
        duration_s=None if minutes is None else minutes * 60,
        outcome=outcome,
        exit_code=0 if outcome == "completed" else kw.pop("exit_code", None),
        **kw,
    )


def git(commits: int, files: int, ins: int, dels: int, dirty: bool = False) -> GitEvidence:
    return GitEvidence(
        head_before="a" * 40,
        head_after=("b" if commits else "a") * 40,
        commits=commits,
        subjects=[f"commit {i + 1}" for i in range(commits)],
        files_changed=files,
        insertions=ins,
        deletions=dels,
        dirty=dirty,
    )


def passed(seconds: float = 20.0) -> dict[str, Any]:
    return {
        "verified": True,
        "verify": VerifyResult(exit_code=0, duration_s=seconds, output_tail="ok"),
    }


def check_failed(exit_code: int | None, tail: str) -> dict[str, Any]:
    return {
        "verified": False,
        "verify": VerifyResult(exit_code=exit_code, duration_s=30.0, output_tail=tail),
    }


def batch(
    seq: int,
    name: str,
    features: list[str],
    history: list[Attempt],
    *,
    status: str,
    failed: dict[int, str] | None = None,
    retry: dict[str, Any] | None = None,
    **kw: Any,
) -> Records:
    batch_id = batch_id_for(T0 + seq)
    done = [i for i, a in enumerate(features) if any(
        h.feature_index == i and h.outcome == "completed" for h in history
    )]  # fmt: skip
    state = BatchState(
        batch_id=batch_id,
        seq=seq,
        name=name,
        features_file=f"{name}.txt",
        source_sha256="0" * 64,
        total_features=len(features),
        features=features,
        completed_features=done,
        failed_features=[
            FailedFeature(feature_index=i, error_message=m, timestamp=at(0), retry_count=2)
            for i, m in (failed or {}).items()
        ],
        status=status,  # type: ignore[arg-type]
        created_at=min([at(seq - 1)] + [h.started_at for h in history]),
        updated_at=max([h.finished_at or h.started_at for h in history], default=at(seq - 1)),
        processing_history=history,
        cost_usd=round(sum(h.cost_usd or 0.0 for h in history), 6),
        **kw,
    )
    retry_state = RetryState(batch_id=batch_id, created_at=at(0), updated_at=at(0), **(retry or {}))
    return Records(state, retry_state)


def _completed() -> Records:
    """Three features, each with git evidence and a passing check; one needed a second try."""
    h = [
        attempt(0, 1, 0, 12, "completed", cost_usd=0.31234, tokens=41_000, session_id="c0ffee01-0000-4000-8000-000000000001", git=git(2, 3, 120, 4), **passed()),
        attempt(1, 1, 13, 9, "failed", cost_usd=0.12345, tokens=20_000, failure_type="transient", error_message="verify failed (exit 1): FAILED tests/test_api.py::test_limit - assert 429 == 200", git=git(1, 2, 30, 2), **check_failed(1, "FAILED tests/test_api.py::test_limit - assert 429 == 200")),
        attempt(1, 2, 23, 7, "completed", cost_usd=0.10006, tokens=15_500, session_id="c0ffee01-0000-4000-8000-000000000002", git=git(1, 1, 6, 3), **passed()),
        attempt(2, 1, 31, 5, "completed", cost_usd=0.04444, tokens=7_000, git=git(1, 1, 10, 0), **passed()),
    ]  # fmt: skip
    features = [
        "Add rate limiting to the login endpoint",
        "Return 429 with Retry-After when the limit is hit",
        "Document the limits in docs/api.md",
    ]
    return batch(1, "api limits", features, h, status="completed")


def _failed() -> Records:
    """One completed, one failed by its check after three attempts, one skipped."""
    why = "verify failed (exit 2): tests/test_parse.py:41: in test_nested E assert [] == ['a']"
    h = [
        attempt(0, 1, 40, 6, "completed", cost_usd=0.05, tokens=9_000, tokens_estimated=True, git=git(1, 1, 14, 1)),
        attempt(1, 1, 47, 8, "failed", cost_usd=0.07, tokens=11_000, failure_type="transient", error_message=why, git=git(1, 2, 40, 9), **check_failed(2, why)),
        attempt(1, 2, 56, 8, "failed", cost_usd=0.07, tokens=12_000, failure_type="transient", error_message=why, git=git(0, 2, 3, 3, dirty=True), **check_failed(2, why)),
        attempt(1, 3, 65, 9, "failed", cost_usd=0.08, tokens=12_500, failure_type="transient", error_message=why, session_id="5e551011-aaaa-4bbb-8ccc-000000000003", git=git(0, 2, 5, 5, dirty=True), **check_failed(2, why)),
    ]  # fmt: skip
    features = [
        "Parse nested lists | tables in the config",
        "Handle `*` globs and <angle> brackets in keys",
        "Drop the legacy parser",
    ]
    return batch(
        2,
        "parser",
        features,
        h,
        status="failed",
        failed={1: why},
        skipped_features=[2],
        current_index=3,
    )


def _paused(seq: int, name: str, reason: str, runner: str = "default", **retry: Any) -> Records:
    h = [
        attempt(
            0, 1, 80 + seq, 4, "completed", cost_usd=0.02 * seq, tokens=3_000, git=git(1, 1, 5, 0)
        )
    ]
    return batch(seq, name, ["First step", "Second step"], h, status="paused", pause_reason=reason, runner=runner, current_index=1, retry=retry)  # fmt: skip


def _limited() -> Records:
    """codex hit its usage limit on feature 1: it waits, uncharged."""
    h = [
        attempt(0, 1, 100, 10, "completed", tokens=30_000, session_id="0199a213-81c0-7800-8aa1-bbab2a035a53", git=git(1, 4, 50, 20), **passed()),
        attempt(1, 1, 111, 2, "limited", tokens=2_000, error_message="You've hit your usage limit. Try again in 3 hours 12 minutes."),
    ]  # fmt: skip
    return batch(
        10,
        "codex chores",
        ["Rename the models", "Split utils.py"],
        h,
        status="in_progress",
        runner="codex",
        current_index=1,
    )


def _running() -> Records:
    """Feature 0 done; feature 1's check is running now."""
    h = [
        attempt(0, 1, 380, 20, "completed", cost_usd=0.25, tokens=22_000, git=git(3, 5, 200, 40), **passed(60)),
        attempt(1, 1, 401, None, None, phase="verifying", session_id="c0ffee01-0000-4000-8000-00000000000a"),
    ]  # fmt: skip
    features = ["Move the cache to Redis", "Add a health endpoint", "Tidy the README"]
    return batch(11, "cache", features, h, status="in_progress", current_index=1)


def _breaker_open() -> Records:
    """on_open = continue: failures are marked failed, no retries, the batch goes on."""
    msg = "exit code 1: ConnectionError: connection reset by peer"
    h = [attempt(i, 1, 420 + 5 * i, 4, "failed", cost_usd=0.01, failure_type="transient", error_message=msg, exit_code=1) for i in range(4)]  # fmt: skip
    features = [f"Migrate table {t}" for t in ("users", "orders", "items", "carts", "logs")]
    return batch(12, "migrations", features, h, status="in_progress", failed=dict.fromkeys(range(4), msg), current_index=4, retry={"circuit_breaker_open": True, "consecutive_failures": 4, "breaker_opened_at": at(435)})  # fmt: skip


def _old_version() -> Records:
    state = msgspec.json.decode((DATA / "v0.2-state.json").read_bytes(), type=BatchState)
    state.seq = 13
    # The night of the fixture: the stored batch started at 05:06 UTC and is still running.
    retry = RetryState(
        batch_id=state.batch_id, created_at=state.created_at, updated_at=state.updated_at
    )
    return Records(state, retry)


def _yesterday() -> Records:
    h = [attempt(0, 1, -1400, 3, "completed", cost_usd=1.0)]
    return batch(0, "yesterday", ["Old work"], h, status="completed")


def morning() -> tuple[list[Records], DaemonState]:
    """Every batch of the fixture (in no particular order) and the queue's state."""
    batches = [
        _running(),
        _completed(),
        _failed(),
        _paused(3, "docs", "user"),
        _paused(4, "refactor", "breaker", circuit_breaker_open=True, consecutive_failures=3, breaker_opened_at=at(85)),
        _paused(5, "expensive", "cost_limit"),
        _paused(6, "claude work", "agent_login", runner="claude"),
        _paused(7, "gone cwd", "cwd_unavailable: working directory /srv/gone does not exist; create it (or submit the batch again with another cwd), then 'batchctl resume'"),
        _limited(),
        _breaker_open(),
        _old_version(),
        _yesterday(),
    ]  # fmt: skip
    queue = DaemonState(
        queue_paused=True,
        pause_reason="user",
        next_seq=14,
        limit_waits={
            "codex": LimitWait(
                until="2026-11-24T10:14:00.000000Z",
                since=at(113),
                message="You've hit your usage limit. Try again in 3 hours 12 minutes.",
            )
        },
    )
    return batches, queue
