"""Path resolution (SPEC section 2), shared by batchd and batchctl.

Defaults come from platformdirs; each path can be set by the config file, then
the environment, then a flag. The platformdirs defaults read the process
environment, so those tests set the XDG variables with monkeypatch; every other
test passes an explicit environment dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest

from batchd.paths import (
    APP,
    ConfigError,
    Paths,
    default_config_path,
    load_paths,
    read_toml,
    resolve_paths,
    resolve_socket,
)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private XDG directories for the process (platformdirs reads os.environ)."""
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
    }
    (tmp_path / "xdg-runtime").mkdir(mode=0o700)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BATCHD_CONFIG", raising=False)
    return env


def test_defaults_come_from_platformdirs(xdg: dict[str, str]) -> None:
    """With nothing set, every path is the platformdirs location for app 'batchd'."""
    paths, raw = load_paths(xdg)
    assert raw == {}
    assert paths == Paths(
        config=Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml",
        spool_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)) / "spool",
        state_dir=Path(platformdirs.user_state_dir(APP, appauthor=False)),
        socket=Path(platformdirs.user_runtime_dir(APP, appauthor=False)) / "batchd.sock",
    )
    assert paths.config == Path(xdg["XDG_CONFIG_HOME"]) / "batchd" / "config.toml"
    assert paths.spool_dir == Path(xdg["XDG_DATA_HOME"]) / "batchd" / "spool"
    assert paths.state_dir == Path(xdg["XDG_STATE_HOME"]) / "batchd"
    assert paths.socket == Path(xdg["XDG_RUNTIME_DIR"]) / "batchd" / "batchd.sock"


def test_socket_default_without_a_runtime_dir(
    xdg: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a usable XDG_RUNTIME_DIR the socket goes to a private per-user dir under /tmp."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    expected = Path("/tmp") / f"batchd-{os.getuid()}" / "batchd.sock"
    assert load_paths(xdg)[0].socket == expected
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent/runtime")
    assert load_paths(xdg)[0].socket == expected
    assert resolve_socket(xdg) == expected


def test_config_path_default_env_and_flag(tmp_path: Path) -> None:
    """The config file: XDG default < BATCHD_CONFIG < --config."""
    assert default_config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/batchd/config.toml")
    assert default_config_path({"XDG_CONFIG_HOME": "/x", "BATCHD_CONFIG": "/y.toml"}) == Path(
        "/y.toml"
    )
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text("")
    b.write_text("")
    assert load_paths({"BATCHD_CONFIG": str(a)})[0].config == a
    assert load_paths({"BATCHD_CONFIG": str(a)}, config=str(b))[0].config == b


@pytest.mark.parametrize(
    ("key", "env_key", "flag"),
    [
        ("spool_dir", "BATCHD_SPOOL_DIR", "spool"),
        ("state_dir", "BATCHD_STATE_DIR", "state_dir"),
        ("socket", "BATCHD_SOCKET", "socket"),
    ],
)
def test_each_path_precedence(
    xdg: dict[str, str], tmp_path: Path, key: str, env_key: str, flag: str
) -> None:
    """default < config file < environment < flag, for spool, state dir and socket."""
    cfg = tmp_path / "config.toml"
    env = {**xdg, "BATCHD_CONFIG": str(cfg)}
    cfg.write_text("")
    default = getattr(load_paths(env)[0], key)
    cfg.write_text(f'{key} = "{tmp_path}/config-value"\n')
    assert default != tmp_path / "config-value"
    assert getattr(load_paths(env)[0], key) == tmp_path / "config-value"
    env[env_key] = str(tmp_path / "env-value")
    assert getattr(load_paths(env)[0], key) == tmp_path / "env-value"
    flagged = load_paths(env, **{flag: str(tmp_path / "flag-value")})[0]
    assert getattr(flagged, key) == tmp_path / "flag-value"


def test_empty_env_or_flag_does_not_override(tmp_path: Path) -> None:
    """An empty environment variable or flag counts as unset."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'spool_dir = "{tmp_path}/cfg"\n')
    paths, _ = load_paths({"BATCHD_CONFIG": str(cfg), "BATCHD_SPOOL_DIR": ""}, spool="")
    assert paths.spool_dir == tmp_path / "cfg"


def test_paths_are_expanded_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~ is expanded and relative paths become absolute (from the current directory)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    raw = {"spool_dir": "~/spool", "state_dir": "rel/state"}
    paths = resolve_paths(raw, tmp_path / "c.toml", {}, socket="~/s.sock")
    assert paths.spool_dir == tmp_path / "home" / "spool"
    assert paths.state_dir == tmp_path / "rel" / "state"
    assert paths.socket == tmp_path / "home" / "s.sock"
    assert all(p.is_absolute() for p in (paths.spool_dir, paths.state_dir, paths.socket))


@pytest.mark.parametrize("key", ["spool_dir", "state_dir", "socket"])
@pytest.mark.parametrize("value", ["3", "''", "['a']", "true"])
def test_bad_path_value_names_file_and_key(tmp_path: Path, key: str, value: str) -> None:
    """A path key that is not a non-empty string is an error naming the file and the key."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_paths({"BATCHD_CONFIG": str(cfg)})
    assert str(e.value) == f"{cfg}: {key}: Expected a non-empty `str`"


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('spool_dir = "/a"\n[retry\n')
    with pytest.raises(ConfigError) as e:
        load_paths({"BATCHD_CONFIG": str(cfg)})
    assert str(e.value).startswith(f"{cfg}: ") and "line 2" in str(e.value)


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    """A config path that cannot be read (a directory) is an error naming it."""
    with pytest.raises(ConfigError) as e:
        read_toml(tmp_path, required=True)
    assert str(e.value).startswith(f"{tmp_path}: cannot read: ")


def test_optional_missing_config_is_empty(tmp_path: Path) -> None:
    """A missing config file that was not asked for reads as empty."""
    assert read_toml(tmp_path / "absent.toml", required=False) == {}
    with pytest.raises(ConfigError, match="no such config file"):
        read_toml(tmp_path / "absent.toml", required=True)


def test_resolve_socket_agrees_with_load_paths(xdg: dict[str, str], tmp_path: Path) -> None:
    """batchctl's fast socket lookup gives what load_paths gives, at every precedence level."""
    cfg = tmp_path / "c.toml"
    cases: list[tuple[dict[str, str], str | None, str]] = [
        ({}, None, ""),
        ({}, None, f'socket = "{tmp_path}/from-config.sock"\n'),
        ({"BATCHD_SOCKET": str(tmp_path / "env.sock")}, None, f'socket = "{tmp_path}/x.sock"\n'),
        ({}, str(tmp_path / "flag.sock"), f'socket = "{tmp_path}/x.sock"\n'),
        ({}, None, "# socket only in a comment\n[runner]\ncwd = '/'\n"),
    ]
    for extra, flag, text in cases:
        cfg.write_text(text)
        env = {**xdg, **extra, "BATCHD_CONFIG": str(cfg)}
        assert resolve_socket(env, socket=flag) == load_paths(env, socket=flag)[0].socket


def test_paths_value_semantics() -> None:
    """Paths compare, hash and print by their four locations."""
    a = Paths(config=Path("/c"), spool_dir=Path("/s"), state_dir=Path("/t"), socket=Path("/k"))
    b = Paths(config=Path("/c"), spool_dir=Path("/s"), state_dir=Path("/t"), socket=Path("/k"))
    c = Paths(config=Path("/c"), spool_dir=Path("/s"), state_dir=Path("/t"), socket=Path("/z"))
    assert a == b and hash(a) == hash(b) and a != c and a != "x"
    assert repr(a).startswith("Paths(config=") and "/k" in repr(a)
