"""The fast path resolution batchctl uses agrees with the full one (and with platformdirs)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest

from batchd.paths import APP, ConfigError, load_paths, resolve_socket, xdg_config_home


@pytest.mark.parametrize("xdg", [None, "", "/tmp/some-xdg-config"])
def test_config_home_matches_platformdirs(monkeypatch: pytest.MonkeyPatch, xdg: str | None) -> None:
    """Our XDG rule gives platformdirs' user_config_dir, set, empty or unset."""
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    expected = Path(platformdirs.user_config_dir(APP, appauthor=False))
    assert xdg_config_home(dict(os.environ)) / APP == expected


def test_resolve_socket_agrees_with_load_paths(tmp_path: Path) -> None:
    """Flag > env > config > default, the same as load_paths, in every case."""
    cfg = tmp_path / "c.toml"
    cases: list[tuple[dict[str, str], str | None, str]] = [
        ({}, None, ""),
        ({}, None, f'socket = "{tmp_path}/from-config.sock"\n'),
        ({"BATCHD_SOCKET": str(tmp_path / "env.sock")}, None, f'socket = "{tmp_path}/x.sock"\n'),
        ({}, str(tmp_path / "flag.sock"), f'socket = "{tmp_path}/x.sock"\n'),
        ({}, None, "# mentions socket only in a comment\n[runner]\ncwd = '/'\n"),
    ]
    for env, flag, text in cases:
        cfg.write_text(text)
        env = {**env, "BATCHD_CONFIG": str(cfg)}
        full, _ = load_paths(env, socket=flag)
        assert resolve_socket(env, socket=flag) == full.socket, (env, flag, text)


def test_resolve_socket_reports_bad_config(tmp_path: Path) -> None:
    """A broken config that could name the socket is an error naming the file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("socket = [1\n")
    with pytest.raises(ConfigError, match=r"c\.toml"):
        resolve_socket({"BATCHD_CONFIG": str(cfg)})
    cfg.write_text("socket = 3\n")
    with pytest.raises(ConfigError, match="socket"):
        resolve_socket({"BATCHD_CONFIG": str(cfg)})
