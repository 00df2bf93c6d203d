"""Configuration (SPEC section 2): defaults, precedence, and errors that name file and key.

Every test writes a real config file under tmp_path and passes an explicit
environment dict; nothing reads the user's own configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from batchd.config import DEFAULT_RUNNER, FileConfig, decode_file_config, load_config
from batchd.paths import ConfigError

# SPEC section 2's TOML block, as data.
SPEC_DEFAULTS = {
    "spool_dir": None,
    "state_dir": None,
    "socket": None,
    "queue": {"slots": 1},
    "runner": {
        "engine": "local",
        "command": ["claude", "-p", "/auto-implement {feature}", "--output-format", "json"],
        "cwd": "",
        "timeout": 7200,
        "kill_grace": 10,
        "max_log_bytes": 10485760,
        "output_format": "auto",
        "env": {},
        "allow_permission_denials": False,
        "stall_timeout": 0,
        "on_stop": "stop",
        "verify": [],
    },
    "runners": {},
    "spool": {
        "max_file_bytes": 1048576,
        "max_features": 1000,
        "max_line_chars": 2000,
        "settle_ms": 200,
    },
    "retry": {
        "max_per_feature": 3,
        "max_global": 50,
        "backoff_initial": 10,
        "backoff_multiplier": 2,
        "backoff_max": 600,
        "jitter": "full",
        "max_hint_wait": 18000,
    },
    "breaker": {"threshold": 5, "on_open": "continue", "cooldown": 0},
    "classify": {"transient_patterns": [], "permanent_patterns": [], "transient_exit_codes": [75]},
    "limits": {
        "max_cost_usd": 0,
        "usage_patterns": [],
        "login_patterns": [],
        "reset_margin": 120,
        "probe_interval": 1800,
        "max_limit_wait": 691200,
    },
    "verify": {"command": [], "timeout": 1800, "failure": "transient", "require_change": False},
    "worktree": {"dir": "", "merge_into_base": False},
    "slurm": {"sbatch_args": [], "poll_interval": 5},
    "hooks": {
        "on_batch_done": [],
        "on_breaker_open": [],
        "before_feature": [],
        "after_feature": [],
        "on_limit": [],
        "timeout": 60,
    },
}


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def env_for(config: Path, **extra: str) -> dict[str, str]:
    return {"BATCHD_CONFIG": str(config), **extra}


def config_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(env_for(path))
    return path, str(e.value)


# --- defaults -----------------------------------------------------------------------


def test_defaults_are_the_spec_table(tmp_path: Path) -> None:
    """An empty config file gives exactly the defaults of SPEC section 2."""
    c = load_config(env_for(write(tmp_path, "")))
    assert msgspec.to_builtins(c.file) == SPEC_DEFAULTS
    assert c.runner.command == DEFAULT_RUNNER


def test_missing_default_config_file_is_fine(tmp_path: Path) -> None:
    """No config file at the default location: every default applies."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "nowhere")}
    c = load_config(env)
    assert c.paths.config == tmp_path / "nowhere" / "batchd" / "config.toml"
    assert msgspec.to_builtins(c.file) == SPEC_DEFAULTS


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    """A config file named by BATCHD_CONFIG or --config must exist."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config({"BATCHD_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config({}, config=str(missing))


def test_a_full_config_file_is_read(tmp_path: Path) -> None:
    """Every section of the file reaches the Config, durations as int or float."""
    path = write(
        tmp_path,
        """
spool_dir = "/s"
[runner]
engine = "slurm"
command = ["agent", "{feature}"]
cwd = "/work"
timeout = 1.5
kill_grace = 3
max_log_bytes = 2048
output_format = "claude-json"
env = { PATH = "/usr/bin", API_KEY = "x" }
allow_permission_denials = true
[spool]
max_file_bytes = 10
max_features = 2
max_line_chars = 3
settle_ms = 0
[retry]
max_per_feature = 0
max_global = 1
backoff_initial = 0.5
backoff_multiplier = 1
backoff_max = 5
jitter = "none"
max_hint_wait = 60
[breaker]
threshold = 1
on_open = "pause"
cooldown = 30
[classify]
transient_patterns = ["quota"]
permanent_patterns = ["^fatal"]
transient_exit_codes = [75, 111]
[limits]
max_cost_usd = 2.5
[slurm]
sbatch_args = ["--partition=gpu", "--gres=gpu:1"]
poll_interval = 0.5
[hooks]
on_batch_done = ["notify-send", "done"]
timeout = 5
""",
    )
    c = load_config(env_for(path))
    assert c.runner.command == ["agent", "{feature}"] and c.runner.cwd == "/work"
    assert (c.runner.timeout, c.runner.kill_grace, c.runner.max_log_bytes) == (1.5, 3.0, 2048)
    assert c.runner.output_format == "claude-json"
    assert c.runner.env == {"PATH": "/usr/bin", "API_KEY": "x"}
    assert c.runner.allow_permission_denials is True
    assert (c.spool.max_file_bytes, c.spool.max_features, c.spool.settle_ms) == (10, 2, 0)
    assert (c.retry.max_per_feature, c.retry.backoff_initial, c.retry.jitter) == (0, 0.5, "none")
    assert (c.breaker.threshold, c.breaker.on_open, c.breaker.cooldown) == (1, "pause", 30.0)
    assert c.classify.transient_exit_codes == [75, 111]
    assert c.limits.max_cost_usd == 2.5
    assert c.runner.engine == "slurm"
    assert (c.slurm.sbatch_args, c.slurm.poll_interval) == (
        ["--partition=gpu", "--gres=gpu:1"],
        0.5,
    )
    assert (c.hooks.on_batch_done, c.hooks.timeout) == (["notify-send", "done"], 5.0)
    assert c.paths.spool_dir == Path("/s")


def test_runner_cwd_may_start_with_tilde(tmp_path: Path) -> None:
    """runner.cwd may be absolute or start with ~ (the user's home)."""
    assert load_config(env_for(write(tmp_path, "[runner]\ncwd = '~/src'\n"))).runner.cwd == "~/src"


# --- precedence: default < config file < environment < flag --------------------------

PATH_KEYS = [
    # (config key, env var, load_config flag, Paths attribute)
    ("spool_dir", "BATCHD_SPOOL_DIR", "spool", "spool_dir"),
    ("state_dir", "BATCHD_STATE_DIR", "state_dir", "state_dir"),
    ("socket", "BATCHD_SOCKET", "socket", "socket"),
]


@pytest.mark.parametrize(("key", "env_key", "flag", "attr"), PATH_KEYS)
def test_path_precedence(tmp_path: Path, key: str, env_key: str, flag: str, attr: str) -> None:
    """For spool, state dir and socket: config beats default, env beats config, flag beats env."""
    empty = write(tmp_path, "", "empty.toml")
    default = getattr(load_config(env_for(empty)).paths, attr)
    assert default != tmp_path / "from-config"

    path = write(tmp_path, f'{key} = "{tmp_path}/from-config"\n')
    env = env_for(path)
    assert getattr(load_config(env).paths, attr) == tmp_path / "from-config"

    env[env_key] = str(tmp_path / "from-env")
    assert getattr(load_config(env).paths, attr) == tmp_path / "from-env"

    flagged = load_config(env, **{flag: str(tmp_path / "from-flag")})
    assert getattr(flagged.paths, attr) == tmp_path / "from-flag"


def test_runner_precedence(tmp_path: Path) -> None:
    """runner.command: config beats default, BATCHD_RUNNER beats config, --runner beats both."""
    assert load_config(env_for(write(tmp_path, "", "e.toml"))).runner.command == DEFAULT_RUNNER
    env = env_for(write(tmp_path, '[runner]\ncommand = ["from-config", "{feature}"]\n'))
    assert load_config(env).runner.command == ["from-config", "{feature}"]
    env["BATCHD_RUNNER"] = "from-env {feature}"
    assert load_config(env).runner.command == ["from-env", "{feature}"]
    assert load_config(env, runner="from-flag -x").runner.command == ["from-flag", "-x"]


def test_runner_override_keeps_the_rest_of_runner(tmp_path: Path) -> None:
    """Overriding the command keeps the file's other runner settings."""
    env = env_for(write(tmp_path, "[runner]\ntimeout = 5\ncwd = '/w'\n"))
    c = load_config(env, runner="agent")
    assert (c.runner.command, c.runner.timeout, c.runner.cwd) == (["agent"], 5.0, "/w")


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    """--config wins over BATCHD_CONFIG."""
    a = write(tmp_path, "[retry]\nmax_global = 1\n", "a.toml")
    b = write(tmp_path, "[retry]\nmax_global = 2\n", "b.toml")
    c = load_config(env_for(a), config=str(b))
    assert (c.paths.config, c.retry.max_global) == (b, 2)


@pytest.mark.parametrize(
    ("text", "argv"),
    [
        ("agent --flag 'two words' {feature}", ["agent", "--flag", "two words", "{feature}"]),
        ('claude -p "/auto-implement {feature}"', ["claude", "-p", "/auto-implement {feature}"]),
        ("a\\ b c", ["a b", "c"]),
        ("x $(rm -rf ~) ; y", ["x", "$(rm", "-rf", "~)", ";", "y"]),
    ],
)
def test_runner_is_split_like_a_shell_never_run_by_one(
    tmp_path: Path, text: str, argv: list[str]
) -> None:
    """--runner and BATCHD_RUNNER are split with shlex; shell syntax stays plain text."""
    env = env_for(write(tmp_path, ""))
    assert load_config(env, runner=text).runner.command == argv
    assert load_config({**env, "BATCHD_RUNNER": text}).runner.command == argv


@pytest.mark.parametrize(
    ("flag", "env_value", "needle"),
    [
        ("agent 'unclosed", None, "--runner: cannot split"),
        (None, 'agent "unclosed', "BATCHD_RUNNER: cannot split"),
        (None, "   ", "BATCHD_RUNNER: the runner command is empty"),
        ("", None, "--runner: the runner command is empty; give a program"),
        ("", "agent {feature}", "--runner: the runner command is empty"),
        ("   ", None, "--runner: the runner command is empty"),
        (
            "echo {featur} {Feature}",
            None,
            "--runner: runner.command[1]: unknown placeholder {featur}",
        ),
        (None, "agent {feature", "BATCHD_RUNNER: runner.command[1]: a lone '{'"),
    ],
)
def test_bad_runner_override_names_its_source(
    tmp_path: Path, flag: str | None, env_value: str | None, needle: str
) -> None:
    """An unsplittable, empty or badly templated runner override is an error naming the flag
    or variable; a given --runner '' counts (it does not fall back to BATCHD_RUNNER)."""
    env = env_for(write(tmp_path, ""))
    if env_value is not None:
        env["BATCHD_RUNNER"] = env_value
    with pytest.raises(ConfigError) as e:
        load_config(env, runner=flag)
    assert str(e.value).startswith(needle)


def test_empty_batchd_runner_means_unset(tmp_path: Path) -> None:
    """BATCHD_RUNNER='' is treated as not set: runner.command from the file applies."""
    env = env_for(write(tmp_path, '[runner]\ncommand = ["from-config", "{feature}"]\n'))
    env["BATCHD_RUNNER"] = ""
    assert load_config(env).runner.command == ["from-config", "{feature}"]
    assert load_config(env, runner="flag {index}").runner.command == ["flag", "{index}"]


# --- errors name the file and the key ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        pytest.param("bogus = 1\n", "bogus", "unknown key", id="unknown-top"),
        pytest.param("[retry]\nbogus = 1\n", "retry.bogus", "unknown key", id="unknown-nested"),
        pytest.param("[nosuch]\na = 1\n", "nosuch", "unknown key", id="unknown-table"),
        pytest.param(
            "[retry]\nmax_per_feature = -1\n",
            "retry.max_per_feature",
            "Expected int >= 0",
            id="negative-int",
        ),
        pytest.param(
            "[retry]\nmax_global = 1.5\n", "retry.max_global", "Expected int", id="float-for-int"
        ),
        pytest.param(
            "[runner]\ntimeout = 'long'\n", "runner.timeout", "Expected float", id="str-for-float"
        ),
        pytest.param("[runner]\ntimeout = -1\n", "runner.timeout", ">= 0", id="negative-duration"),
        pytest.param("[spool]\nmax_features = 0\n", "spool.max_features", ">= 1", id="zero"),
        pytest.param(
            "[retry]\nbackoff_multiplier = 0.5\n", "retry.backoff_multiplier", ">= 1", id="mult"
        ),
        pytest.param(
            "[runner]\nmax_log_bytes = 10\n", "runner.max_log_bytes", ">= 1024", id="log-bytes"
        ),
        pytest.param(
            "[breaker]\non_open = 'explode'\n",
            "breaker.on_open",
            "not one of continue, pause",
            id="enum",
        ),
        pytest.param(
            "[retry]\njitter = 'half'\n", "retry.jitter", "not one of full, none", id="jitter"
        ),
        pytest.param(
            "[runner]\noutput_format = 'xml'\n",
            "runner.output_format",
            "not one of auto",
            id="format",
        ),
        pytest.param("runner = 5\n", "runner", "Expected object", id="table-as-int"),
        pytest.param(
            "[runner]\ncommand = 'claude -p'\n", "runner.command", "Expected array", id="str-argv"
        ),
        pytest.param("[runner]\ncommand = []\n", "runner.command", "length >= 1", id="empty-argv"),
        pytest.param("[runner]\ncommand = ['']\n", "runner.command", "program", id="empty-program"),
        pytest.param("[runner]\nenv = { A = 1 }\n", "runner.env[...]", "Expected str", id="env"),
        pytest.param(
            "[classify]\ntransient_exit_codes = ['x']\n",
            "classify.transient_exit_codes[0]",
            "Expected int",
            id="exit-codes",
        ),
        pytest.param(
            "[classify]\ntransient_patterns = ['(']\n",
            "classify.transient_patterns[0]",
            "invalid regular expression",
            id="bad-regex-transient",
        ),
        pytest.param(
            "[classify]\npermanent_patterns = ['ok', '[a-']\n",
            "classify.permanent_patterns[1]",
            "invalid regular expression",
            id="bad-regex-permanent",
        ),
        pytest.param(
            "[runner]\ncwd = 'relative/dir'\n",
            "runner.cwd",
            "Expected an absolute path, got 'relative/dir'",
            id="relative-cwd",
        ),
        pytest.param("spool_dir = 3\n", "spool_dir", "Expected a non-empty", id="path-type"),
        pytest.param("socket = ''\n", "socket", "Expected a non-empty", id="path-empty"),
        pytest.param("[hooks]\ntimeout = true\n", "hooks.timeout", "Expected float", id="bool"),
        pytest.param(
            "[runner]\nengine = 'k8s'\n", "runner.engine", "not one of local, slurm", id="engine"
        ),
        pytest.param("[slurm]\npoll_interval = 0\n", "slurm.poll_interval", "> 0", id="poll-zero"),
        pytest.param(
            "[slurm]\nsbatch_args = '-p x'\n", "slurm.sbatch_args", "Expected array", id="args-str"
        ),
        pytest.param(
            "[runner]\ncommand = ['agent', '-p', 'do {featur}']\n",
            "runner.command[2]",
            "unknown placeholder {featur}; the placeholders are {feature}, {index}, "
            "{batch_id}, {attempt}, {issue}",
            id="unknown-placeholder",
        ),
        pytest.param(
            "[runner]\ncommand = ['agent', '{feature} }']\n",
            "runner.command[1]",
            "a lone '}' at character 11 (write }})",
            id="lone-brace",
        ),
        pytest.param(
            "[hooks]\nafter_feature = ['notify', '{outcome}']\n",
            "hooks.after_feature[1]",
            "unknown placeholder {outcome}",
            id="hook-placeholder",
        ),
        pytest.param(
            "[hooks]\non_batch_done = ['{'] \n",
            "hooks.on_batch_done[0]",
            "a lone '{'",
            id="hook-lone-brace",
        ),
        pytest.param(
            "[runner]\nallow_permission_denials = 'yes'\n",
            "runner.allow_permission_denials",
            "Expected bool",
            id="allow-denials",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    """Each bad key, type or value is a ConfigError of the form 'FILE: KEY: what is wrong'."""
    path, message = config_error(tmp_path, text)
    assert message.startswith(f"{path}: {key}: "), message
    assert detail in message.replace("`", ""), message


@pytest.mark.parametrize(
    "text",
    ["[retry\n", "a = \n", "x = 'unterminated\n", "[retry]\nmax_global = 1\nmax_global = 2\n"],
)
def test_toml_syntax_error_names_file_and_line(tmp_path: Path, text: str) -> None:
    """A TOML syntax error names the file and where in it."""
    path, message = config_error(tmp_path, text)
    assert message.startswith(f"{path}: ")
    assert "line" in message or "end of document" in message


def test_non_utf8_config_is_an_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is refused, naming the file."""
    path = tmp_path / "config.toml"
    path.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError) as e:
        load_config(env_for(path))
    assert str(e.value).startswith(f"{path}: not UTF-8")


def test_env_path_does_not_hide_a_bad_config_value(tmp_path: Path) -> None:
    """A wrong type in the file is an error even when the environment overrides that key."""
    path = write(tmp_path, "spool_dir = 3\n")
    with pytest.raises(ConfigError, match="spool_dir"):
        load_config(env_for(path, BATCHD_SPOOL_DIR=str(tmp_path / "s")))


def test_decode_file_config_names_the_given_source() -> None:
    """decode_file_config (used for SIGHUP reloads too) names the source it is given."""
    with pytest.raises(ConfigError) as e:
        decode_file_config({"retry": {"max_global": -2}}, "/etc/batchd.toml")
    assert str(e.value) == "/etc/batchd.toml: retry.max_global: Expected int >= 0"
    assert decode_file_config({}, "x") == FileConfig()
    bad_hook = {"hooks": {"before_feature": ["x", "{Feature}"]}}
    with pytest.raises(ConfigError, match=r"^/etc/b\.toml: hooks\.before_feature\[1\]: unknown"):
        decode_file_config(bad_hook, "/etc/b.toml")


def test_every_hook_is_checked_for_placeholders() -> None:
    """Each [hooks] argv is checked, and literal braces written {{ }} pass."""
    hooks = [name for name in FileConfig().hooks.__struct_fields__ if name != "timeout"]
    assert len(hooks) == 5
    for name in hooks:
        with pytest.raises(ConfigError, match=rf": hooks\.{name}\[0\]: unknown placeholder"):
            decode_file_config({"hooks": {name: ["{nope}"]}}, "c.toml")
        decode_file_config({"hooks": {name: ["jq", "{{.x}}", "{batch_id}"]}}, "c.toml")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"runner": {"output_format": "json"}},
            "runner.output_format: 'json' is not one of auto, text, claude-json, codex-jsonl",
        ),
        ({"retry": {"jitter": "some"}}, "retry.jitter: 'some' is not one of full, none"),
        ({"runner": {"engine": "k8s"}}, "runner.engine: 'k8s' is not one of local, slurm"),
        ({"breaker": {"on_open": "stop"}}, "breaker.on_open: 'stop' is not one of continue, pause"),
    ],
)
def test_a_wrong_choice_lists_the_valid_ones(raw: dict[str, Any], message: str) -> None:
    """A value that is not one of a key's choices names the key and every valid choice."""
    with pytest.raises(ConfigError) as e:
        decode_file_config(raw, "c.toml")
    assert str(e.value) == f"c.toml: {message}"


# --- runner profiles (SPEC 13) ------------------------------------------------------------


def test_a_profile_takes_its_keys_and_inherits_the_rest(tmp_path: Path) -> None:
    """[runners.codex] sets command and output_format; timeout and env come from [runner]."""
    path = write(
        tmp_path,
        """
[runner]
timeout = 60
env = { A = "1" }
[runners.codex]
command = ["codex", "exec", "--json", "{feature}"]
output_format = "codex-jsonl"
""",
    )
    c = load_config(env_for(path))
    assert c.profile_names() == frozenset({"default", "codex"})
    codex = c.profile("codex")
    assert codex.command == ["codex", "exec", "--json", "{feature}"]
    assert (codex.output_format, codex.timeout, codex.env) == ("codex-jsonl", 60, {"A": "1"})
    assert c.profile("default") == c.runner
    with pytest.raises(KeyError):
        c.profile("nope")


def test_a_profile_key_that_runner_does_not_have_is_named(tmp_path: Path) -> None:
    """An unknown key in a profile is an error naming the profile and the key."""
    _, message = config_error(tmp_path, '[runners.codex]\ncomand = ["x"]\n')
    assert "runners.codex.comand: unknown key" in message
