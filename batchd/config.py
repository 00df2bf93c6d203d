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

from batchd import template
from batchd.paths import ConfigError, Paths, load_paths

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Argv = list[str]

DEFAULT_RUNNER = ["claude", "-p", "/auto-implement {feature}", "--output-format", "json"]


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
    output_format: Literal["auto", "text", "claude-json"] = "auto"
    env: dict[str, str] = msgspec.field(default_factory=dict)
    allow_permission_denials: bool = False


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


class SlurmConfig(Base):
    sbatch_args: Argv = msgspec.field(default_factory=list)
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5


class HooksConfig(Base):
    on_batch_done: Argv = msgspec.field(default_factory=list)
    on_breaker_open: Argv = msgspec.field(default_factory=list)
    before_feature: Argv = msgspec.field(default_factory=list)
    after_feature: Argv = msgspec.field(default_factory=list)
    timeout: Seconds = 60


HOOKS = tuple(name for name in HooksConfig.__struct_fields__ if name != "timeout")


class FileConfig(Base):
    """The config file as written by the user (paths still unresolved)."""

    spool_dir: str | None = None
    state_dir: str | None = None
    socket: str | None = None
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    runner: RunnerConfig = msgspec.field(default_factory=RunnerConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    classify: ClassifyConfig = msgspec.field(default_factory=ClassifyConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
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
    try:
        cfg = msgspec.convert(dict(raw), FileConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None
    _check_semantics(cfg, source)
    return cfg


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
