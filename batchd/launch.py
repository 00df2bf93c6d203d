"""What an attempt (or a hook) is given: argv placeholders, environment, the LaunchSpec.

Pure: values in, values out. The feature text reaches the runner as one argv
element (``template.render``: no shell, one pass) and as ``BATCHD_FEATURE``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from batchd.batch import Batch
from batchd.config import RunnerConfig
from batchd.engines import LaunchSpec
from batchd.template import render


def placeholders(batch: Batch, index: int, attempt: int) -> dict[str, str]:
    """The values of ``{feature}``, ``{index}``, ``{batch_id}``, ``{attempt}``, ``{issue}``."""
    s = batch.state
    issue = ""
    if s.issue_numbers and index < len(s.issue_numbers):
        issue = str(s.issue_numbers[index])
    return {
        "feature": s.features[index],
        "index": str(index),
        "batch_id": batch.batch_id,
        "attempt": str(attempt),
        "issue": issue,
    }


def new_run_id(prefix: str, batch: Batch, index: int, attempt: int) -> str:
    """``BATCHD_RUN_ID``: the state dir's prefix, the attempt, and a random part."""
    return f"{prefix}{batch.batch_id}-{index}-{attempt}-{secrets.token_hex(4)}"


def spec(
    runner: RunnerConfig,
    base_env: Mapping[str, str],
    batch: Batch,
    index: int,
    *,
    cwd: str,
    log_path: Path,
    run_id: str,
) -> LaunchSpec:
    """Everything the runner engine needs to start feature ``index`` of ``batch`` now."""
    s = batch.state
    attempt = batch.attempt_number(index)
    env = dict(base_env)
    env.update(runner.env)
    env.update(
        BATCHD_FEATURE=s.features[index],
        BATCHD_FEATURE_INDEX=str(index),
        BATCHD_BATCH_ID=batch.batch_id,
        BATCHD_ATTEMPT=str(attempt),
        BATCHD_RUN_ID=run_id,
    )
    return LaunchSpec(
        run_id=run_id,
        argv=render(runner.command, placeholders(batch, index, attempt)),
        env=env,
        cwd=cwd,
        log_path=log_path,
        timeout=float(runner.timeout),
        kill_grace=float(runner.kill_grace),
        max_log_bytes=runner.max_log_bytes,
        stall_timeout=float(runner.stall_timeout),
    )


def batch_hook_env(base_env: Mapping[str, str], batch: Batch, state_file: Path) -> dict[str, str]:
    """The environment of ``on_batch_done`` and ``on_breaker_open``."""
    s = batch.state
    return dict(
        base_env,
        BATCHD_BATCH_ID=batch.batch_id,
        BATCHD_STATUS=s.status,
        BATCHD_COMPLETED=str(len(s.completed_features)),
        BATCHD_FAILED=str(len(s.failed_features)),
        BATCHD_STATE_FILE=str(state_file),
        BATCHD_CONSECUTIVE_FAILURES=str(batch.retry.consecutive_failures),
    )
