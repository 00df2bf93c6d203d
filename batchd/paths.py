"""Where things live: config file, spool dir, state dir, control socket.

Shared by batchd and batchctl, so standard library (plus platformdirs) only:
batchctl must not pay for msgspec or anyio to find the socket. Precedence for
each path: platformdirs default < config file < environment < command-line flag.

``batchctl status`` must start about as fast as Python itself, so this module
imports nothing heavy up front: platformdirs and tomllib are loaded only when a
default or the config file is really needed, and ``resolve_socket`` reads the
config file only when it can mention a socket at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from typing import Any

APP = "batchd"


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


class Paths:
    """The four resolved locations (a plain class: dataclasses costs 5 ms to import)."""

    __slots__ = ("config", "socket", "spool_dir", "state_dir")

    def __init__(self, *, config: Path, spool_dir: Path, state_dir: Path, socket: Path) -> None:
        self.config = config
        self.spool_dir = spool_dir
        self.state_dir = state_dir
        self.socket = socket

    def _key(self) -> tuple[Path, Path, Path, Path]:
        return (self.config, self.spool_dir, self.state_dir, self.socket)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Paths(config={self.config!r}, spool_dir={self.spool_dir!r}, "
            f"state_dir={self.state_dir!r}, socket={self.socket!r})"
        )


def xdg_config_home(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME`` or ``~/.config``: what platformdirs answers on Linux, without
    its import cost (a test keeps the two equal)."""
    value = env.get("XDG_CONFIG_HOME", "").strip()
    return Path(value) if value else Path(os.path.expanduser("~/.config"))


def _platform_dir(kind: str) -> Path:
    import platformdirs

    if kind == "data":
        return Path(platformdirs.user_data_dir(APP, appauthor=False))
    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def _runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / APP
    # No usable runtime dir (a root shell, a container): a private dir under /tmp.
    return Path("/tmp") / f"{APP}-{os.getuid()}"


def default_config_path(env: Mapping[str, str]) -> Path:
    if env.get("BATCHD_CONFIG"):
        return _expand(env["BATCHD_CONFIG"])
    return xdg_config_home(env) / APP / "config.toml"


def _expand(p: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(p)))


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """Read the config file as a plain dict; a missing optional file is empty."""
    data = _read_config_bytes(path, required=required)
    return _parse_toml(path, data) if data is not None else {}


def _read_config_bytes(path: Path, *, required: bool) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file") from None
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def _parse_toml(path: Path, data: bytes) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


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

    def pick(key: str, env_key: str, flag: str | None, default: Path | None) -> Path | None:
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
        spool_dir=pick("spool_dir", "BATCHD_SPOOL_DIR", spool, None)
        or _platform_dir("data") / "spool",
        state_dir=pick("state_dir", "BATCHD_STATE_DIR", state_dir, None) or _platform_dir("state"),
        socket=pick("socket", "BATCHD_SOCKET", socket, None) or _runtime_dir() / "batchd.sock",
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


def resolve_socket(
    env: Mapping[str, str], *, config: str | None = None, socket: str | None = None
) -> Path:
    """Only the control socket, as ``load_paths`` would resolve it, at the least cost."""
    if socket:
        return _expand(socket)
    if env.get("BATCHD_SOCKET"):
        return _expand(env["BATCHD_SOCKET"])
    explicit = bool(config or env.get("BATCHD_CONFIG"))
    config_path = _expand(config) if config else default_config_path(env)
    data = _read_config_bytes(config_path, required=explicit)
    if data is not None and b"socket" in data:  # else no key can name a socket: skip parsing
        raw = _parse_toml(config_path, data)
        value = raw.get("socket")
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{config_path}: socket: Expected a non-empty `str`")
            return _expand(value)
    return _runtime_dir() / "batchd.sock"
