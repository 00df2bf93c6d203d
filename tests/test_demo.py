"""``demo/run`` works as the README's quick start says: a real daemon, the demo agent in a
git repository the demo makes, one feature failing its check once and its retry given the
failure, and the morning report at the end."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO


@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "batchd").exists(),
    reason="demo/run uses the checkout's .venv (./scripts/test makes it)",
)
def test_the_demo_fails_a_check_once_feeds_it_back_and_ends_with_the_report(
    tmp_path: Path,
) -> None:
    """The third feature's first attempt fails the demo's check; its retry gets the failure
    as {last_error} and in BATCHD_LAST_ERROR_FILE and passes; every attempt commits; the
    demo prints the report last and leaves its daemon stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    out = subprocess.run(
        [str(REPO / "demo" / "run")],
        env={**env, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    failure = "verify failed (exit 1): implemented/002.md:3:TODO: the tests"
    assert f"feature 3/4 attempt 1 failed (transient): {failure}" in text
    assert f"the previous attempt failed: {failure}" in text
    assert re.search(r"reading \S+/logs/2\.1\.last-error: \d+ lines", text)
    [work] = list(tmp_path.glob("batchd-demo.*"))
    history = subprocess.run(
        ["git", "-C", str(work / "project"), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(history) == 6 and history[-1] == "first"
    report = text.split("== batchctl report", 1)[1]
    assert "Needs you: nothing." in report
    assert re.search(r"\n\s+2\s+completed\s+2\s+\S+\s+\$0\.0246\s+2\s+\+\d+/-1\s+passed\s", report)
    assert "Totals: 1 batch, 4 features: 4 completed, 0 failed, 0 pending" in report
    assert report.rstrip().splitlines()[-1] == f"== done: the demo state stays in {work}"
    assert not (work / "run" / "batchd.sock").exists()
