#!/usr/bin/env python3
"""The morning report of a batch of 1,000 features: build and render times (SPEC 14).

    python bench/report.py              # 1,000 features, 20 rounds
    python bench/report.py --features 10000 --rounds 5

Each feature has two attempts (a failed check, then a pass) with git evidence, a
session id and a cost, so every column of the report is filled. In process, no
daemon: what ``batchctl report`` adds to it is one socket round trip and the
print. The target: well under a second for 1,000 features (build plus any one
rendering). Prints the medians in milliseconds; exit 0 whatever they are.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batchd import report, reportrender  # noqa: E402
from batchd.model import (  # noqa: E402
    Attempt,
    BatchState,
    DaemonState,
    GitEvidence,
    RetryState,
    VerifyResult,
    batch_id_for,
    utc_iso,
)

T0 = 1_900_000_000.0


def _attempt(index: int, n: int, start: float, passed: bool) -> Attempt:
    exit_code = 0 if passed else 1
    return Attempt(
        feature_index=index,
        attempt=n,
        started_at=utc_iso(start),
        finished_at=utc_iso(start + 50),
        duration_s=50.0,
        outcome="completed" if passed else "failed",
        exit_code=0,
        failure_type=None if passed else "transient",
        error_message=None if passed else "verify failed (exit 1): FAILED tests/test_x.py::test_y",
        tokens=12_345,
        cost_usd=0.012345,
        session_id=f"c0ffee01-0000-4000-8000-{index:012d}",
        verified=passed,
        verify=VerifyResult(exit_code=exit_code, duration_s=9.5, output_tail="1 failed, 41 passed"),
        git=GitEvidence(
            head_before="a" * 40,
            head_after="b" * 40,
            commits=1,
            subjects=["Make the parser accept nested lists"],
            files_changed=3,
            insertions=42,
            deletions=7,
        ),
    )


def big_batch(n: int) -> report.Records:
    history = []
    for i in range(n):
        start = T0 + i * 120
        history += [_attempt(i, 1, start, False), _attempt(i, 2, start + 60, True)]
    batch_id = batch_id_for(T0)
    state = BatchState(
        batch_id=batch_id,
        seq=1,
        name="big",
        features_file="big.txt",
        source_sha256="0" * 64,
        total_features=n,
        features=[
            f"Feature {i}: make the thing number {i} work as the issue says" for i in range(n)
        ],
        current_index=n,
        completed_features=list(range(n)),
        status="completed",
        created_at=utc_iso(T0),
        updated_at=utc_iso(T0 + n * 120),
        processing_history=history,
    )
    retry = RetryState(batch_id=batch_id, created_at=state.created_at, updated_at=state.updated_at)
    return report.Records(state, retry)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    records = big_batch(a.features)
    now = T0 + a.features * 120 + 60

    def build() -> object:
        return report.build(
            [records], queue=DaemonState(), log_path=lambda b, i, n: f"/s/{b}/{i}.{n}.log", now=now
        )

    built = report.build([records], queue=DaemonState(), log_path=lambda *_: "", now=now)
    figures = {
        "build": median_ms(build, a.rounds),
        "text": median_ms(lambda: reportrender.render_text(built), a.rounds),
        "markdown": median_ms(lambda: reportrender.render_markdown(built), a.rounds),
        "json": median_ms(lambda: reportrender.render_json(built), a.rounds),
    }
    worst = figures["build"] + max(figures["text"], figures["markdown"], figures["json"])
    print(f"report of {a.features:,} features (2 attempts each), median of {a.rounds} rounds:")
    for name, ms in figures.items():
        print(f"  {name:<9} {ms:8.1f} ms")
    print(f"  build + slowest rendering: {worst:.1f} ms (target: well under 1000 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
