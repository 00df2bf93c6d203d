"""The daemon's configuration: TOML decoded and validated by msgspec.

Every key of SPEC section 2 is a field here, with its default, so this module
is the single source of truth for the configuration reference (the README's
table is checked against it by a test). A bad key or value raises
``ConfigError`` whose message names the file and the key.
"""

from __future__ import annotations

import re
import shlex
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from batchd import template
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


_PATH_RE = re.compile(r"`\$\.?([^`]*)`")


def _describe(e: msgspec.ValidationError) -> str:
    """``Expected `int` >= 0 - at `$.retry.max_global``` -> ``retry.max_global: ...``."""
    text = str(e)
    head, sep, tail = text.rpartition(" - at ")
    if not sep:
        head, key = text, ""  # an error at the top level of the file
    else:
        m = _PATH_RE.match(tail)
        key = m.group(1) if m else tail
    if "Object contains unknown field" in head:
        field = re.search(r"`([^`]*)`", head)
        name = field.group(1) if field else "?"
        key = f"{key}.{name}" if key else name
        return f"{key}: unknown key (see the configuration reference in the README)"
    enum = re.match(r"Invalid enum value (.*)", head)
    if enum and key:
        choices = ", ".join(_choices(key)) or "?"
        return f"{key}: {enum.group(1)} is not one of {choices}"
    return f"{key}: {head.replace('`', '')}" if key else head.replace("`", "")


def _choices(key: str) -> list[str]:
    """The values a ``Literal`` key of the config file allows (``runner.output_format``)."""
    kind: Any = FileConfig
    for part in key.split("."):
        hints = typing.get_type_hints(kind) if isinstance(kind, type) else {}
        if part not in hints:
            return []
        kind = hints[part]
    return [str(v) for v in typing.get_args(kind)] if typing.get_origin(kind) is Literal else []


def decode_file_config(raw: Mapping[str, Any], source: Path | str) -> FileConfig:
    _check_profiles(raw, source)
    try:
        cfg = msgspec.convert(dict(raw), FileConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None
    _check_semantics(cfg, source)
    return cfg


def _check_profiles(raw: Mapping[str, Any], source: Path | str) -> None:
    """Each ``[runners.NAME]`` on its own, so that an error names the profile (msgspec
    would say ``runners[...]``)."""
    profiles = raw.get("runners")
    if not isinstance(profiles, dict):
        return  # not a table: the whole-file check says so
    for name, table in profiles.items():
        if name == DEFAULT_PROFILE:
            raise ConfigError(
                f"{source}: runners.{name}: 'default' is [runner] itself; set those keys "
                "in [runner], or give this profile another name"
            )
        try:
            msgspec.convert(table, RunnerProfile)
        except msgspec.ValidationError as e:
            raise ConfigError(f"{source}: runners.{name}.{_describe(e)}") from None


def _check_semantics(cfg: FileConfig, source: Path | str) -> None:
    for key in ("transient_patterns", "permanent_patterns"):
        for i, pattern in enumerate(getattr(cfg.classify, key)):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{source}: classify.{key}[{i}]: invalid regular expression: {e}"
                ) from None
    if cfg.runner.cwd and not cfg.runner.cwd.startswith(("/", "~")):
        raise ConfigError(
            f"{source}: runner.cwd: Expected an absolute path, got {cfg.runner.cwd!r}"
        )
    if not cfg.runner.command[0]:
        raise ConfigError(f"{source}: runner.command: the program (first element) is empty")
    _check_placeholders(cfg, source)


def _check_placeholders(cfg: FileConfig, source: Path | str) -> None:
    """An unknown ``{name}`` or a lone brace in the runner's or a hook's argv (SPEC 2)."""
    argvs = [("runner.command", cfg.runner.command)]
    argvs += [(f"hooks.{name}", getattr(cfg.hooks, name)) for name in HOOKS]
    for where, argv in argvs:
        try:
            template.check(argv, where)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None


def load_config(
    env: Mapping[str, str],
    *,
    config: str | None = None,
    spool: str | None = None,
    state_dir: str | None = None,
    socket: str | None = None,
    runner: str | None = None,
) -> Config:
    """Load and validate the config file, then apply environment and flags."""
    paths, raw = load_paths(env, config=config, spool=spool, state_dir=state_dir, socket=socket)
    file_cfg = decode_file_config(raw, paths.config)
    # A given --runner counts even when empty (an error); an empty BATCHD_RUNNER is unset,
    # as with the other variables, so `BATCHD_RUNNER= batchd` uses runner.command.
    if runner is not None:
        source, override = "--runner", runner
    else:
        source, override = "BATCHD_RUNNER", env.get("BATCHD_RUNNER", "")
    if runner is not None or override:
        argv = _split_runner(override, source)
        try:
            template.check(argv, "runner.command")
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        file_cfg = msgspec.structs.replace(
            file_cfg, runner=msgspec.structs.replace(file_cfg.runner, command=argv)
        )
    return Config(paths=paths, file=file_cfg)


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
