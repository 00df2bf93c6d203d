"""Where a feature runs and what it is launched with, under the current configuration.

``Placement`` is made with each ``Rules`` (at start and after a good reload) and
answers three questions for the engine: a feature's cwd key (its working
directory after realpath, or for a worktree batch its planned worktree: two
features with one key never run together), the worktree root, and the
``LaunchSpec`` of an attempt (the batch's runner profile, its cwd or worktree,
its log, its run id, and the engine's check when the engine runs it).

Never here: deciding what starts (``startplan``, ``schedule``), starting
anything, or a change to a batch. The only IO is ``realpath`` (cached per
batch) and making the worktree root when it is asked for.
"""

from __future__ import annotations

import os

from batchd import checking, launch, worktreerecord
from batchd.batch import Batch
from batchd.engines import LaunchSpec
from batchd.rules import Rules
from batchd.store import Store
from batchd.worktree import prepare_root


class Placement:
    def __init__(self, rules: Rules, store: Store, *, state_key: str, runs_checks: bool) -> None:
        """``state_key`` names this daemon's state in run ids; ``runs_checks``: the runner
        engine runs a batch's check itself (Slurm: inside the job)."""
        self.rules = rules
        self.store = store
        self.run_id_prefix = f"{state_key}-"
        self._runs_checks = runs_checks
        wt = rules.cfg.worktree.dir
        state_dir = rules.cfg.paths.state_dir
        self._worktree_dir = os.path.expanduser(wt) if wt else str(state_dir / "worktrees")
        self._worktree_real = os.path.realpath(self._worktree_dir)
        self._cwd_keys: dict[str, str] = {}

    def cwd_key(self, batch: Batch, index: int | None = None) -> str:
        """Where the batch's feature (``index``, else its next) runs, after realpath: two
        features with one key never run together. A worktree batch's is its worktree (a
        parallel batch's feature its own), so batches on one repository run side by side."""
        s = batch.state
        if s.isolation == "worktree":
            number = batch.attempt_number(index) if index is not None else 1
            return worktreerecord.planned_dir(s, self._worktree_real, index, number)
        key = self._cwd_keys.get(batch.batch_id)
        if key is None:
            key = self._cwd_keys[batch.batch_id] = os.path.realpath(self.rules.effective_cwd(batch))
        return key

    def forget(self, batch_id: str) -> None:
        """A pruned batch: its cwd key is no longer kept."""
        self._cwd_keys.pop(batch_id, None)

    def worktree_root(self) -> str:
        """``worktree.dir`` (default ``state_dir/worktrees``), made when missing; its real
        path. ``Problem`` when it is not a directory."""
        return prepare_root(self._worktree_dir)

    def launch_spec(self, batch: Batch, index: int, run_id: str | None = None) -> LaunchSpec:
        """What to run for feature ``index`` now (``run_id``: the recorded one, after a restart),
        with the batch's runner profile (``[runner]`` when the profile is gone: a reload that
        removed it paused the batch, so this is only a run found again after a restart)."""
        rules = self.rules
        number = batch.attempt_number(index)
        where = worktreerecord.place(batch.state, index, number)  # a worktree batch's
        spec = launch.spec(
            rules.runner(batch) or rules.cfg.runner,
            rules.base_env,
            batch,
            index,
            cwd=where.cwd if where is not None else rules.effective_cwd(batch),
            log_path=self.store.log_path(batch.batch_id, index, number),
            run_id=run_id or launch.new_run_id(self.run_id_prefix, batch, index, number),
        )
        return checking.in_run(spec, rules, batch) if self._runs_checks else spec
