#!/usr/bin/env python3
"""The morning report of a batch of 1,000 features: build and render times (SPEC 14).

    python bench/report.py              # 1,000 features, 20 rounds
    python bench/report.py --features 10000 --rounds 5

Each feature has two attempts (a failed check, then a pass) with git evidence, a
session id and a cost, so every column of the report is filled. First in
process (no daemon): ``report.build`` and each rendering. Then end to end: the
batch is written into a fresh state dir, a real ``batchd`` takes it over, and
``batchctl report`` (text, ``--format markdown``, ``--format json``) runs as a
subprocess, its wall time from start to exit (the daemon builds the report, one
socket round trip, batchctl renders and prints it into a pipe). The target: well
under a second for 1,000 features. Prints the medians in milliseconds; exit 0
whatever they are.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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
from batchd.store import Store  # noqa: E402

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


def through_batchctl(records: report.Records, rounds: int) -> dict[str, float]:
    """``batchctl report`` against a real daemon holding ``records``: the median wall time
    of each format, in milliseconds."""
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="batchd-report-bench.") as tmp:
        root = Path(tmp)
        store = Store(root / "state")
        store.open()
        store.create_batch(records.state, records.retry)
        store.close()
        (root / "config.toml").write_text('[runner]\ncommand = ["true"]\n')
        env = dict(
            os.environ,
            BATCHD_CONFIG=str(root / "config.toml"),
            BATCHD_SPOOL_DIR=str(root / "spool"),
            BATCHD_STATE_DIR=str(root / "state"),
            BATCHD_SOCKET=str(root / "run" / "batchd.sock"),
        )
        with open(root / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [str(bindir / "batchd")], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            _wait_up(root / "run" / "batchd.sock", daemon, root / "daemon.log")
            ctl = [str(bindir / "batchctl"), "report", records.state.batch_id]
            formats = {
                "text": [],
                "markdown": ["--format", "markdown"],
                "json": ["--format", "json"],
            }
            return {
                name: median_ms(run_to_end([*ctl, *extra], env), rounds)
                for name, extra in formats.items()
            }
        finally:
            daemon.terminate()
            daemon.wait(60)


def run_to_end(argv: list[str], env: dict[str, str]) -> Callable[[], object]:
    """Run ``argv`` to its end, its output into a pipe (as a script would read it)."""

    def run() -> object:
        return subprocess.run(argv, env=env, stdout=subprocess.PIPE, check=True)

    return run


def _wait_up(sock: Path, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"batchd exited {daemon.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("batchd did not answer within 60 s")


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
    ends = through_batchctl(records, a.rounds)
    print("`batchctl report BATCH_ID` with a real daemon, wall time to exit:")
    for name, ms in ends.items():
        print(f"  {name:<9} {ms:8.1f} ms")
    print(f"  slowest: {max(ends.values()):.1f} ms (target: well under 1000 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
