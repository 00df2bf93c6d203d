"""The daemon's configuration: TOML decoded and validated by msgspec.

Every key of SPEC section 2 is a field here, with its default, so this module
is the single source of truth for the configuration reference (the README's
table is checked against it by a test). A bad key or value raises
``ConfigError`` whose message names the file and the key.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from batchd import structcheck, template
from batchd.paths import ConfigError, Paths, load_paths

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Argv = list[str]

DEFAULT_RUNNER = ["claude", "-p", "/auto-implement {feature}", "--output-format", "json"]
DEFAULT_PROFILE = "default"  # the profile that is [runner] itself
OutputFormat = Literal["auto", "text", "claude-json", "codex-jsonl"]
ProfileName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class QueueConfig(Base):
    slots: PosInt = 1  # features that may run at once; never two in one cwd (SPEC 11)


class RunnerConfig(Base):
    engine: Literal["local", "slurm"] = "local"
    command: Annotated[Argv, msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_RUNNER)
    )
    cwd: str = ""
    timeout: Seconds = 7200
    kill_grace: Seconds = 10
    max_log_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10 * 1024 * 1024
    output_format: OutputFormat = "auto"
    env: dict[str, str] = msgspec.field(default_factory=dict)
    allow_permission_denials: bool = False
    stall_timeout: Seconds = 0  # seconds without output before an attempt stops (SPEC 13)
    on_stop: Literal["stop", "leave"] = "stop"  # SIGTERM: stop the runners or leave them (16)
    verify: Argv = msgspec.field(default_factory=list)  # the profile's own check (SPEC 14)


class RunnerProfile(Base):
    """``[runners.NAME]``: any key of ``[runner]``; a key left out comes from ``[runner]``."""

    engine: Literal["local", "slurm"] | UnsetType = UNSET
    command: Annotated[Argv, msgspec.Meta(min_length=1)] | UnsetType = UNSET
    cwd: str | UnsetType = UNSET
    timeout: Seconds | UnsetType = UNSET
    kill_grace: Seconds | UnsetType = UNSET
    max_log_bytes: Annotated[int, msgspec.Meta(ge=1024)] | UnsetType = UNSET
    output_format: OutputFormat | UnsetType = UNSET
    env: dict[str, str] | UnsetType = UNSET
    allow_permission_denials: bool | UnsetType = UNSET
    stall_timeout: Seconds | UnsetType = UNSET
    on_stop: Literal["stop", "leave"] | UnsetType = UNSET
    verify: Argv | UnsetType = UNSET


assert set(RunnerProfile.__struct_fields__) == set(RunnerConfig.__struct_fields__)


class SpoolConfig(Base):
    max_file_bytes: PosInt = 1024 * 1024
    max_features: PosInt = 1000
    max_line_chars: PosInt = 2000
    settle_ms: NonNegInt = 200


class RetryConfig(Base):
    max_per_feature: NonNegInt = 3
    max_global: NonNegInt = 50
    backoff_initial: Seconds = 10
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2
    backoff_max: Seconds = 600
    jitter: Literal["full", "none"] = "full"
    max_hint_wait: Seconds = 18000


class BreakerConfig(Base):
    threshold: PosInt = 5
    on_open: Literal["continue", "pause"] = "continue"
    cooldown: Seconds = 0


class ClassifyConfig(Base):
    transient_patterns: list[str] = msgspec.field(default_factory=list)
    permanent_patterns: list[str] = msgspec.field(default_factory=list)
    transient_exit_codes: list[int] = msgspec.field(default_factory=lambda: [75])


class LimitsConfig(Base):
    max_cost_usd: Seconds = 0
    usage_patterns: list[str] = msgspec.field(default_factory=list)  # SPEC 13
    login_patterns: list[str] = msgspec.field(default_factory=list)
    reset_margin: Seconds = 120
    probe_interval: Annotated[float, msgspec.Meta(gt=0)] = 1800
    max_limit_wait: Seconds = 691200


class VerifyConfig(Base):
    """The check after an attempt the agent called completed (SPEC 14)."""

    command: Argv = msgspec.field(default_factory=list)
    timeout: Seconds = 1800
    failure: Literal["transient", "permanent"] = "transient"
    require_change: bool = False


class WorktreeConfig(Base):
    """Batches in git worktrees of their own (SPEC 15)."""

    dir: str = ""  # empty: state_dir/worktrees
    merge_into_base: bool = False


class SlurmConfig(Base):
    sbatch_args: Argv = msgspec.field(default_factory=list)
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5


class HooksConfig(Base):
    on_batch_done: Argv = msgspec.field(default_factory=list)
    on_breaker_open: Argv = msgspec.field(default_factory=list)
    before_feature: Argv = msgspec.field(default_factory=list)
    after_feature: Argv = msgspec.field(default_factory=list)
    on_limit: Argv = msgspec.field(default_factory=list)  # SPEC 13
    timeout: Seconds = 60


HOOKS = tuple(name for name in HooksConfig.__struct_fields__ if name != "timeout")


class FileConfig(Base):
    """The config file as written by the user (paths still unresolved)."""

    spool_dir: str | None = None
    state_dir: str | None = None
    socket: str | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    runner: RunnerConfig = msgspec.field(default_factory=RunnerConfig)
    runners: dict[ProfileName, RunnerProfile] = msgspec.field(default_factory=dict)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    classify: ClassifyConfig = msgspec.field(default_factory=ClassifyConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    verify: VerifyConfig = msgspec.field(default_factory=VerifyConfig)
    worktree: WorktreeConfig = msgspec.field(default_factory=WorktreeConfig)
    slurm: SlurmConfig = msgspec.field(default_factory=SlurmConfig)
    hooks: HooksConfig = msgspec.field(default_factory=HooksConfig)


class Config(msgspec.Struct, kw_only=True, frozen=True):
    """Everything the daemon runs with: the file's settings and the resolved paths."""

    paths: Paths
    file: FileConfig

    @property
    def queue(self) -> QueueConfig:
        return self.file.queue

    @property
    def runner(self) -> RunnerConfig:
        return self.file.runner

    @property
    def spool(self) -> SpoolConfig:
        return self.file.spool

    @property
    def retry(self) -> RetryConfig:
        return self.file.retry

    @property
    def breaker(self) -> BreakerConfig:
        return self.file.breaker

    @property
    def classify(self) -> ClassifyConfig:
        return self.file.classify

    @property
    def limits(self) -> LimitsConfig:
        return self.file.limits

    @property
    def slurm(self) -> SlurmConfig:
        return self.file.slurm

    @property
    def hooks(self) -> HooksConfig:
        return self.file.hooks

    @property
    def verify(self) -> VerifyConfig:
        return self.file.verify

    @property
    def worktree(self) -> WorktreeConfig:
        return self.file.worktree

    def profile_names(self) -> frozenset[str]:
        """Every runner profile: ``default`` ([runner]) and each ``[runners.NAME]``."""
        return frozenset((DEFAULT_PROFILE, *self.file.runners))

    def profile(self, name: str) -> RunnerConfig:
        """The ``[runner]`` settings of profile ``name`` (KeyError for an unknown one)."""
        return profile_of(self.file, name)


def profile_of(cfg: FileConfig, name: str) -> RunnerConfig:
    """``[runners.NAME]`` over ``[runner]``: the keys it sets, the rest inherited."""
    if name == DEFAULT_PROFILE:
        return cfg.runner
    own = cfg.runners[name]
    changes = {
        key: value
        for key in RunnerProfile.__struct_fields__
        if (value := getattr(own, key)) is not UNSET
    }
    return msgspec.structs.replace(cfg.runner, **changes)


class ConfigProblems(ConfigError):
    """Every problem found in a configuration, each naming its file and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def decode_file_config(raw: Mapping[str, Any], source: Path | str) -> FileConfig:
    """The config file's settings; ``ConfigProblems`` naming every bad key."""
    cfg, problems, _ = check_file_config(raw, source)
    if problems:
        raise ConfigProblems(problems)
    return cfg


class FileCheck(NamedTuple):
    """A config file checked whole: its settings with each bad key at its default (so
    that the checks that follow, programs and directories, still run), every problem
    (``FILE: KEY: what``), and the keys at their default for a bad value."""

    file: FileConfig
    problems: list[str]
    dropped: frozenset[str]


def check_file_config(raw: Mapping[str, Any], source: Path | str) -> FileCheck:
    """Every problem of the file, not only the first (``FileCheck``)."""
    found, kept, dropped = structcheck.check(raw, FileConfig)
    try:
        cfg = msgspec.convert(kept, FileConfig)
    except msgspec.ValidationError as e:  # a rule across keys the key-by-key pass missed
        found.append(structcheck.describe(e, ""))
        cfg = FileConfig()
    found += semantic_problems(cfg)
    return FileCheck(cfg, [f"{source}: {problem}" for problem in found], dropped)


def semantic_problems(cfg: FileConfig) -> list[str]:
    """What a well-typed config can still get wrong: regexes that do not compile,
    placeholders, a relative cwd, an empty program, a profile named ``default``."""
    found = []
    patterns: list[tuple[str, Base, tuple[str, ...]]] = [
        ("classify", cfg.classify, ("transient_patterns", "permanent_patterns")),
        ("limits", cfg.limits, ("usage_patterns", "login_patterns")),
    ]
    for section, table, keys in patterns:
        for key in keys:
            for i, pattern in enumerate(getattr(table, key)):
                try:
                    re.compile(pattern)
                except re.error as e:
                    found.append(f"{section}.{key}[{i}]: invalid regular expression: {e}")
    if DEFAULT_PROFILE in cfg.runners:
        found.append(
            f"runners.{DEFAULT_PROFILE}: 'default' is [runner] itself; set those keys "
            "in [runner], or give this profile another name"
        )
    found += _runner_problems("runner", cfg.runner)
    for name, own in cfg.runners.items():
        found += _runner_problems(f"runners.{name}", own)
    argvs = [(f"hooks.{name}", getattr(cfg.hooks, name)) for name in HOOKS]
    argvs.append(("verify.command", cfg.verify.command))
    return found + [p for where, argv in argvs for p in _placeholders(where, argv)]


def _runner_problems(where: str, runner: RunnerConfig | RunnerProfile) -> list[str]:
    """The keys a runner profile sets itself (``[runner]``: all of them)."""
    found = []
    cwd, command = runner.cwd, runner.command
    if isinstance(cwd, str) and cwd and not cwd.startswith(("/", "~")):
        found.append(f"{where}.cwd: Expected an absolute path, got {cwd!r}")
    if isinstance(command, list):
        if not command[0]:
            found.append(f"{where}.command: the program (first element) is empty")
        found += _placeholders(f"{where}.command", command)
    if isinstance(runner.verify, list):
        found += _placeholders(f"{where}.verify", runner.verify)
    return found


def _placeholders(where: str, argv: list[str]) -> list[str]:
    """An unknown ``{name}`` or a lone brace in an argv (SPEC 2)."""
    try:
        template.check(argv, where)
    except ValueError as e:
        return [str(e)]
    return []


def load_config(env: Mapping[str, str], **where: str | None) -> Config:
    """Load and validate the config file, then apply environment and flags (``where``:
    ``config``, ``spool``, ``state_dir``, ``socket``, ``runner``, as for
    ``load_config_checked``); ``ConfigProblems`` naming every problem."""
    cfg, problems, _ = load_config_checked(env, **where)
    if problems:
        raise ConfigProblems(problems)
    return cfg


class ConfigCheck(NamedTuple):
    config: Config  # each bad key at its default
    problems: list[str]
    dropped: frozenset[str]  # the keys at their default for a bad value


def load_config_checked(
    env: Mapping[str, str],
    *,
    config: str | None = None,
    spool: str | None = None,
    state_dir: str | None = None,
    socket: str | None = None,
    runner: str | None = None,
) -> ConfigCheck:
    """``load_config`` listing every problem instead of raising on the first.
    ``ConfigError`` only when the file cannot be read or parsed, or a path is bad."""
    paths, raw = load_paths(env, config=config, spool=spool, state_dir=state_dir, socket=socket)
    file_cfg, problems, dropped = check_file_config(raw, paths.config)
    # A given --runner counts even when empty (an error); an empty BATCHD_RUNNER is unset,
    # as with the other variables, so `BATCHD_RUNNER= batchd` uses runner.command.
    if runner is not None:
        source, override = "--runner", runner
    else:
        source, override = "BATCHD_RUNNER", env.get("BATCHD_RUNNER", "")
    if runner is not None or override:
        try:
            argv = _split_runner(override, source)
            template.check(argv, "runner.command")
        except ValueError as e:
            problems.append(f"{source}: {e}")
        except ConfigError as e:
            problems.append(str(e))
        else:
            runner_cfg = msgspec.structs.replace(file_cfg.runner, command=argv)
            file_cfg = msgspec.structs.replace(file_cfg, runner=runner_cfg)
            dropped -= {"runner.command"}
    return ConfigCheck(Config(paths=paths, file=file_cfg), problems, dropped)


def _split_runner(text: str, source: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"{source}: cannot split {text!r}: {e}") from None
    if not argv:
        raise ConfigError(
            f"{source}: the runner command is empty; give a program and its arguments, "
            f"or leave {source} out to use runner.command from the config file"
        )
    return argv
