"""Config loading: precedence, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchd.config import load_config
from batchd.paths import ConfigError


def cfg(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"BATCHD_CONFIG": str(path), "HOME": str(tmp_path)}


def test_precedence_default_config_env_flag(tmp_path: Path) -> None:
    """Flag beats environment beats config file beats default, for every path."""
    env = cfg(tmp_path, f'spool_dir = "{tmp_path}/c-spool"\nstate_dir = "{tmp_path}/c-state"\n')
    c = load_config(env)
    assert c.paths.spool_dir == tmp_path / "c-spool" and c.paths.state_dir == tmp_path / "c-state"
    env["BATCHD_SPOOL_DIR"] = str(tmp_path / "e-spool")
    assert load_config(env).paths.spool_dir == tmp_path / "e-spool"
    assert load_config(env, spool=str(tmp_path / "f-spool")).paths.spool_dir == tmp_path / "f-spool"


def test_runner_override_is_shlex_split(tmp_path: Path) -> None:
    """--runner / BATCHD_RUNNER are split like a shell would, never run by one."""
    env = cfg(tmp_path, "")
    env["BATCHD_RUNNER"] = "agent --flag 'two words' {feature}"
    assert load_config(env).runner.command == ["agent", "--flag", "two words", "{feature}"]
    assert load_config(env, runner="x 'y z'").runner.command == ["x", "y z"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[retry]\nmax_per_feature = -1\n", "retry.max_per_feature: Expected `int` >= 0"),
        ("[retry]\nbogus = 1\n", "retry.bogus: unknown key"),
        ("bogus = 1\n", "bogus: unknown key"),
        ("[runner]\ntimeout = 'long'\n", "runner.timeout"),
        ("[breaker]\non_open = 'explode'\n", "breaker.on_open"),
        (
            "[classify]\ntransient_patterns = ['(']\n",
            "classify.transient_patterns[0]: invalid regular expression",
        ),
        ("[runner]\ncwd = 'relative'\n", "runner.cwd"),
        ("[runner]\ncommand = []\n", "runner.command"),
        ("[retry\n", "config.toml"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    """Each bad key or type names the file and the key."""
    with pytest.raises(ConfigError) as e:
        load_config(cfg(tmp_path, text))
    assert "config.toml" in str(e.value) and needle.replace("`", "") in str(e.value).replace(
        "`", ""
    )


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    """An explicitly named config file that does not exist is an error; the default may be absent."""
    with pytest.raises(ConfigError, match="no such config file"):
        load_config({"BATCHD_CONFIG": str(tmp_path / "nope.toml")})
    assert (
        load_config(
            {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "x")}
        ).retry.max_global
        == 50
    )
