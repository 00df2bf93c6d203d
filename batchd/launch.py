"""What an attempt (or a hook) is given: argv placeholders, environment, the LaunchSpec.

Pure: values in, values out. The feature text reaches the runner as one argv
element (``template.render``: no shell, one pass) and as ``BATCHD_FEATURE``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from batchd import feedback
from batchd.batch import Batch
from batchd.config import RunnerConfig
from batchd.engines import LaunchSpec
from batchd.gitinfo import unpointed
from batchd.template import render


def placeholders(batch: Batch, index: int, attempt: int) -> dict[str, str]:
    """The values of ``{feature}``, ``{index}``, ``{batch_id}``, ``{attempt}``, ``{issue}``
    and ``{last_error}`` (the previous failure of this feature, sanitised; SPEC 14)."""
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
        "last_error": feedback.last_error(s.processing_history, index),
    }


def last_error_file(batch: Batch, index: int, logs_dir: Path) -> Path | None:
    """``BATCHD_LAST_ERROR_FILE``: the feedback file of this feature's previous failed
    attempt, when there was one (and it could be written)."""
    failed = feedback.previous_failure(batch.state.processing_history, index)
    if failed is None:
        return None
    path = logs_dir / f"{index}.{failed.attempt}.last-error"
    return path if os.path.isfile(path) else None


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
    feedback_file = last_error_file(batch, index, log_path.parent) if attempt > 1 else None
    if feedback_file is not None:
        env["BATCHD_LAST_ERROR_FILE"] = str(feedback_file)
    else:
        env.pop("BATCHD_LAST_ERROR_FILE", None)
    if s.isolation == "worktree":  # git in batchd's worktree works on that worktree
        env = unpointed(env)
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
    """The environment of ``on_batch_done`` and ``on_breaker_open``; a worktree batch's
    repository and branch too (SPEC 15)."""
    s = batch.state
    git = {"BATCHD_REPO": s.git.repo, "BATCHD_BRANCH": s.git.branch} if s.git else {}
    return dict(
        base_env,
        BATCHD_BATCH_ID=batch.batch_id,
        BATCHD_STATUS=s.status,
        BATCHD_COMPLETED=str(len(s.completed_features)),
        BATCHD_FAILED=str(len(s.failed_features)),
        BATCHD_STATE_FILE=str(state_file),
        BATCHD_CONSECUTIVE_FAILURES=str(batch.retry.consecutive_failures),
        **git,
    )
