"""The rules of the current configuration, as the running daemon uses them.

``Rules`` is made from a ``Config`` once per start and per good reload: the
settings the batch transitions take, the classifier, the runner's base
environment. It is immutable; a reload replaces it as a whole, so a
feature's life reads one consistent set. Also here: which reload changes
need a restart (a decision, so it is pure and tested).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from batchd.batch import Batch
from batchd.classify import Classifier, RunnerTraits
from batchd.config import DEFAULT_PROFILE, Config, RunnerConfig
from batchd.limitwait import LimitRules
from batchd.systemd import child_env
from batchd.transitions import Settings, settings_from


@dataclass(frozen=True)
class Rules:
    cfg: Config
    settings: Settings
    classifier: Classifier  # [classify] and [limits]: the patterns, the exit codes
    traits: dict[str, RunnerTraits]  # what judging needs of each runner profile
    limits: LimitRules
    base_env: dict[str, str]  # the daemon's environment as a runner gets it

    @classmethod
    def make(cls, cfg: Config, env: Mapping[str, str], user: str) -> Rules:
        traits = {name: RunnerTraits.of(cfg.profile(name), user) for name in cfg.profile_names()}
        lim = cfg.limits
        limits = LimitRules(
            reset_margin=float(lim.reset_margin),
            probe_interval=float(lim.probe_interval),
            max_limit_wait=float(lim.max_limit_wait),
        )
        classifier = Classifier.from_config(cfg)
        return cls(cfg, settings_from(cfg), classifier, traits, limits, child_env(env))

    def runner(self, batch: Batch) -> RunnerConfig | None:
        """The ``[runner]`` settings of the batch's profile; None when the configuration
        has no such profile (any more)."""
        try:
            return self.cfg.profile(batch.state.runner)
        except KeyError:
            return None

    def traits_for(self, batch: Batch) -> RunnerTraits:
        return self.traits.get(batch.state.runner) or self.traits[DEFAULT_PROFILE]

    def effective_cwd(self, batch: Batch) -> str:
        """Where the batch's features run: its cwd, else runner.cwd, else home (a worktree
        batch's features run in batchd's worktree of that directory's repository)."""
        return batch.state.cwd or self.default_cwd()

    def default_cwd(self) -> str:
        """The cwd of a batch that names none: runner.cwd, else home."""
        if self.cfg.runner.cwd:
            return os.path.expanduser(self.cfg.runner.cwd)
        return os.path.expanduser("~")


def missing_profile(batch: Batch, cfg: Config) -> str | None:
    """The pause reason of an unfinished batch whose runner profile the configuration no
    longer has (a reload removed it), else None."""
    name = batch.state.runner
    if batch.finished or name in cfg.profile_names():
        return None
    known = ", ".join(sorted(cfg.profile_names()))
    return (
        f"runner_unavailable: the runner profile {name!r} is not in {cfg.paths.config} "
        f"(profiles: {known}); add [runners.{name}] and reload ('batchctl reload'), then "
        f"'batchctl resume {batch.batch_id}'"
    )


@dataclass(frozen=True)
class Reload:
    """What a reload applies: the new config with what needs a restart kept as it was."""

    cfg: Config
    kept: tuple[str, ...]  # what was not applied, in words, for the log


def plan_reload(old: Config, new: Config) -> Reload:
    """Paths (spool, state, socket) and ``runner.engine`` need a restart: keep the old ones."""
    kept = []
    if new.paths != old.paths:
        kept.append("path changes (spool, state, socket) need a restart; kept the old")
        new = msgspec.structs.replace(new, paths=old.paths)
    if new.runner.engine != old.runner.engine:
        kept.append(f"runner.engine changes need a restart; kept {old.runner.engine!r}")
        runner = msgspec.structs.replace(new.runner, engine=old.runner.engine)
        new = msgspec.structs.replace(new, file=msgspec.structs.replace(new.file, runner=runner))
    return Reload(new, tuple(kept))
