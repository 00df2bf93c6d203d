"""`batchd check-config [--config PATH]` (SPEC 9): exit 0, or 78 with every problem named.

Each case runs the real ``batchd`` command on a config file in a private directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchd.checkconfig import start_warnings
from batchd.config import load_config


def check(
    tmp_path: Path,
    config: str,
    *before: str,
    env_path: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``batchd [BEFORE] check-config --config FILE`` with private paths."""
    path = tmp_path / "config.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    env.update(
        BATCHD_SPOOL_DIR=str(tmp_path / "spool"),
        BATCHD_STATE_DIR=str(tmp_path / "state"),
        BATCHD_SOCKET=str(tmp_path / "run" / "batchd.sock"),
    )
    if env_path is not None:
        env["PATH"] = env_path
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "batchd", *before, "check-config", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_good_config_passes(tmp_path: Path) -> None:
    """A config whose runner, hooks and directories all exist: exit 0, saying which file."""
    out = check(
        tmp_path,
        f'[runner]\ncommand = ["{sys.executable}", "{{feature}}"]\ncwd = "{tmp_path}"\n'
        '[hooks]\non_batch_done = ["true", "{batch_id}"]\n',
    )
    assert out.returncode == 0, out
    assert out.stdout == f"configuration OK: {tmp_path / 'config.toml'}\n"


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ("[retry]\nno_such_key = 1\n", "retry.no_such_key: unknown key"),
        ('[runner]\ncommand = ["claude", "{nope}"]\n', "{nope}"),
        ('[runner]\noutput_format = "json"\n', "runner.output_format"),
        ('[runner]\ncommand = ["no-such-agent-xyz", "{feature}"]\n', "'no-such-agent-xyz' is not"),
        ('[runner]\ncommand = ["/nonexistent/agent"]\n', "'/nonexistent/agent' is not an exec"),
        ('[runner]\ncommand = ["true"]\ncwd = "/nonexistent/dir"\n', "runner.cwd"),
        ('[runner]\ncommand = ["true"]\n[hooks]\nafter_feature = ["/no/hook"]\n', "hooks.after"),
    ],
)
def test_a_bad_config_exits_78_naming_the_problem(tmp_path: Path, config: str, expect: str) -> None:
    """Bad keys, placeholders, enum values, a missing runner, cwd or hook: exit 78 and why."""
    out = check(tmp_path, config)
    assert out.returncode == 78, out
    assert "bad configuration" in out.stderr and expect in out.stderr, out.stderr
    assert str(tmp_path / "config.toml") in out.stderr


def test_unusable_directories_are_named(tmp_path: Path) -> None:
    """A state dir under a regular file cannot be created: 78, naming the key and the file."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = check(tmp_path, f'state_dir = "{blocker}/state"\n[runner]\ncommand = ["true"]\n')
    assert out.returncode == 0  # the environment's BATCHD_STATE_DIR wins over the file
    path = tmp_path / "config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    out = subprocess.run(
        [sys.executable, "-m", "batchd", "--config", str(path), "check-config"],
        env={**env, "BATCHD_SOCKET": str(tmp_path / "s.sock")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78, out
    assert f"state_dir: {blocker}/state: {blocker} is not a directory" in out.stderr


def bad_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The problems printed, one a line, the common prefix removed."""
    prefix = "batchd: bad configuration: "
    lines = out.stderr.splitlines()
    assert all(line.startswith(prefix) for line in lines), out.stderr
    return [line.removeprefix(prefix) for line in lines]


def test_a_file_with_five_problems_shows_five(tmp_path: Path) -> None:
    """Five problems in three sections, each named with its file and key, in file order
    for the keys and then the semantic and program checks."""
    out = check(
        tmp_path,
        "[retry]\nmax_global = -1\njitter = 'some'\nno_such_key = 1\n"
        "[limits]\nusage_patterns = ['(']\n"
        "[runner]\ncommand = ['no-such-agent-xyz', '{feature}']\n",
    )
    assert out.returncode == 78, out
    f = tmp_path / "config.toml"
    problems = bad_lines(out)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        [str(f), "retry.max_global"],
        [str(f), "retry.jitter"],
        [str(f), "retry.no_such_key"],
        [str(f), "limits.usage_patterns[0]"],
        [str(f), "runner.command"],
    ]
    assert problems[1].endswith("'some' is not one of full, none")
    assert "'no-such-agent-xyz' is not found on PATH" in problems[4]


def test_every_runner_profile_is_checked(tmp_path: Path) -> None:
    """Each [runners.NAME]: its program, its placeholders, its choices, its verify argv,
    its cwd; [verify].command's placeholders and the login patterns too."""
    out = check(
        tmp_path,
        f'[runner]\ncommand = ["{sys.executable}", "{{feature}}"]\n'
        '[runners.codex]\ncommand = ["no-codex-xyz", "exec", "{feature}"]\n'
        'verify = ["make", "{nope}"]\n'
        '[runners.fast]\noutput_format = "yaml"\ncwd = "/no/such/dir"\n'
        "[runners.default]\ntimeout = 1\n"
        '[verify]\ncommand = ["pytest", "{oops}"]\n'
        "[limits]\nlogin_patterns = ['[']\n",
    )
    assert out.returncode == 78, out
    f = tmp_path / "config.toml"
    problems = bad_lines(out)
    expected = [
        "runners.fast.output_format: 'yaml' is not one of auto, text, claude-json, codex-jsonl",
        "limits.login_patterns[0]: invalid regular expression",
        "runners.default: 'default' is [runner] itself",
        "runners.codex.verify[1]: unknown placeholder {nope}",
        "verify.command[1]: unknown placeholder {oops}",
        "runners.codex.command: 'no-codex-xyz' is not found on PATH",
        "runners.fast.cwd: '/no/such/dir' is not a directory; create it",
    ]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(f"{f}: {start}"), (problem, start)


def test_a_bad_value_at_its_default_is_not_blamed_twice(tmp_path: Path) -> None:
    """A runner.command of the wrong type is reported once: its default (claude, absent
    here) is not checked in its place."""
    out = check(tmp_path, '[runner]\ncommand = "claude -p {feature}"\n', env_path="/nonexistent")
    assert out.returncode == 78, out
    assert bad_lines(out) == [
        f"{tmp_path / 'config.toml'}: runner.command: Expected array, got str"
    ]


def test_a_bad_path_names_where_it_came_from(tmp_path: Path) -> None:
    """A spool under a regular file, given by --spool: the flag is named; a state dir
    from the environment: the variable is named."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = check(
        tmp_path,
        f'[runner]\ncommand = ["{sys.executable}"]\n',
        "--spool",
        f"{blocker}/spool",
        env_extra={"BATCHD_STATE_DIR": f"{blocker}/state"},
    )
    assert out.returncode == 78, out
    assert bad_lines(out) == [
        f"spool_dir (--spool): {blocker}/spool: {blocker} is not a directory; "
        "choose another spool_dir",
        f"state_dir (BATCHD_STATE_DIR): {blocker}/state: {blocker} is not a directory; "
        "choose another state_dir",
    ]


@pytest.mark.parametrize("flag", ["--spool", "--state-dir"])
def test_the_daemon_refuses_a_spool_or_state_path_under_a_file(tmp_path: Path, flag: str) -> None:
    """`batchd --spool FILE/spool` (or --state-dir): exit 78 with check-config's message,
    not 'Not a directory' and exit 1; nothing is created."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    env.update(
        BATCHD_SPOOL_DIR=str(tmp_path / "spool"),
        BATCHD_STATE_DIR=str(tmp_path / "state"),
        BATCHD_SOCKET=str(tmp_path / "batchd.sock"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),  # no config file: the defaults
    )
    out = subprocess.run(
        [sys.executable, "-m", "batchd", flag, f"{blocker}/dir", "--runner", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = "spool_dir" if flag == "--spool" else "state_dir"
    assert out.returncode == 78, out
    assert f"bad configuration: {key}: {blocker}/dir: {blocker} is not a directory" in out.stderr
    assert "Errno" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_start_warnings_name_each_runner_without_its_program(tmp_path: Path) -> None:
    """What the daemon says at start: each profile whose program is missing, by name,
    with the fix; an installed one says nothing."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[runner]\ncommand = ["{sys.executable}"]\n'
        '[runners.codex]\ncommand = ["no-codex-xyz", "exec"]\n'
        '[runners.other]\ncommand = ["/no/such/agent"]\n'
    )
    cfg = load_config({"BATCHD_CONFIG": str(path)})
    warnings = start_warnings(cfg, {"PATH": "/usr/bin:/bin"})
    assert warnings == [
        "runner 'codex': runners.codex.command: 'no-codex-xyz' is not found on PATH "
        "(/usr/bin:/bin); install it, give its absolute path, or set PATH in the daemon's "
        "environment (under systemd: ~/.config/batchd/environment); its batches will pause "
        "until it is fixed (then `batchctl reload` or restart batchd)",
        "runner 'other': runners.other.command: '/no/such/agent' is not an executable file; "
        "its batches will pause until it is fixed (then `batchctl reload` or restart batchd)",
    ]
    path.write_text(f'[runner]\ncommand = ["{sys.executable}"]\n')
    assert start_warnings(load_config({"BATCHD_CONFIG": str(path)}), {"PATH": "/bin"}) == []
