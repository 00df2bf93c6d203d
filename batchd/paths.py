"""Where things live: config file, spool dir, state dir, control socket.

Shared by batchd and batchctl, so standard library (plus platformdirs) only:
batchctl must not pay for msgspec or anyio to find the socket. Precedence for
each path: platformdirs default < config file < environment < command-line flag.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

APP = "batchd"


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True)
class Paths:
    config: Path
    spool_dir: Path
    state_dir: Path
    socket: Path


def _runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / APP
    # No usable runtime dir (a root shell, a container): a private dir under /tmp.
    return Path("/tmp") / f"{APP}-{os.getuid()}"


def default_config_path(env: Mapping[str, str]) -> Path:
    if env.get("BATCHD_CONFIG"):
        return _expand(env["BATCHD_CONFIG"])
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml"


def _expand(p: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(p)))


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """Read the config file as a plain dict; a missing optional file is empty."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file") from None
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def resolve_paths(
    raw: Mapping[str, Any],
    config_path: Path,
    env: Mapping[str, str],
    *,
    spool: str | None = None,
    state_dir: str | None = None,
    socket: str | None = None,
) -> Paths:
    """Apply config, then environment, then flags over the platformdirs defaults."""

    def pick(key: str, env_key: str, flag: str | None, default: Path) -> Path:
        if flag:
            return _expand(flag)
        if env.get(env_key):
            return _expand(env[env_key])
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{config_path}: {key}: Expected a non-empty `str`")
            return _expand(value)
        return default

    return Paths(
        config=config_path,
        spool_dir=pick(
            "spool_dir",
            "BATCHD_SPOOL_DIR",
            spool,
            Path(platformdirs.user_data_dir(APP, appauthor=False)) / "spool",
        ),
        state_dir=pick(
            "state_dir",
            "BATCHD_STATE_DIR",
            state_dir,
            Path(platformdirs.user_state_dir(APP, appauthor=False)),
        ),
        socket=pick("socket", "BATCHD_SOCKET", socket, _runtime_dir() / "batchd.sock"),
    )


def load_paths(
    env: Mapping[str, str],
    *,
    config: str | None = None,
    spool: str | None = None,
    state_dir: str | None = None,
    socket: str | None = None,
) -> tuple[Paths, dict[str, Any]]:
    """Resolve every path the way both programs must agree on; return the raw config too."""
    explicit = bool(config or env.get("BATCHD_CONFIG"))
    config_path = _expand(config) if config else default_config_path(env)
    raw = read_toml(config_path, required=explicit)
    paths = resolve_paths(raw, config_path, env, spool=spool, state_dir=state_dir, socket=socket)
    return paths, raw
