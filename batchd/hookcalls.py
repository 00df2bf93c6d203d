"""What each hook is given (SPEC 5): its placeholders, environment and cwd, by kind.

``before_feature``/``after_feature`` get the feature's placeholders and run in the
feature's cwd (a worktree batch's: its worktree); ``on_batch_done`` and
``on_breaker_open`` get the batch's counts (and at the end of a batch its
report, ``BATCHD_REPORT_FILE``); ``on_limit`` the runner profile and the wait.
Each runs under the current ``Rules`` (``hooks.timeout``, the runner's kill
grace, the runner's base environment) through ``hooks.Hooks``.

Never here: when a hook runs or what its failure means (the feature's life and
the engine decide), nor the end of a batch's worktrees or its report file.
"""

from __future__ import annotations

from pathlib import Path

from batchd import launch
from batchd.batch import Batch
from batchd.hooks import Hooks
from batchd.live import Slot
from batchd.model import LimitWait
from batchd.rules import Rules


async def call(
    hooks: Hooks,
    rules: Rules,
    name: str,
    batch: Batch,
    values: dict[str, str],
    env: dict[str, str],
    cwd: str | None = None,
) -> str | None:
    """Run hook ``name`` (in ``cwd``, else the batch's); None, or why it failed."""
    cfg = rules.cfg
    return await hooks.run(
        name,
        getattr(cfg.hooks, name),
        values=values,
        env=env,
        cwd=cwd or rules.effective_cwd(batch),
        timeout=float(cfg.hooks.timeout),
        kill_grace=min(5.0, float(cfg.runner.kill_grace)),
    )


async def feature(
    hooks: Hooks, rules: Rules, name: str, slot: Slot, env: dict[str, str]
) -> str | None:
    """``before_feature``/``after_feature``: the feature's placeholders and environment,
    in the feature's cwd (a worktree batch's: its worktree)."""
    batch = slot.batch
    values = launch.placeholders(batch, slot.index, batch.attempt_number(slot.index))
    return await call(hooks, rules, name, batch, values, env, slot.spec.cwd)


async def batch_end(
    hooks: Hooks, rules: Rules, name: str, batch: Batch, state_file: Path, report: Path | None
) -> None:
    """``on_batch_done``/``on_breaker_open``: the batch's counts (``state_file``), and the
    report of a finished batch (``BATCHD_REPORT_FILE``)."""
    env = launch.batch_hook_env(rules.base_env, batch, state_file)
    if report is not None:
        env["BATCHD_REPORT_FILE"] = str(report)
    await call(hooks, rules, name, batch, {"batch_id": batch.batch_id}, env)


async def limit(hooks: Hooks, rules: Rules, batch: Batch, profile: str, wait: LimitWait) -> None:
    """``on_limit``: a usage-limit wait of ``profile`` begins."""
    env = dict(
        rules.base_env,
        BATCHD_RUNNER_PROFILE=profile,
        BATCHD_LIMIT_UNTIL=wait.until,
        BATCHD_LIMIT_MESSAGE=wait.message,
        BATCHD_BATCH_ID=batch.batch_id,
    )
    await call(hooks, rules, "on_limit", batch, {"batch_id": batch.batch_id}, env)
