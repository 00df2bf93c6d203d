"""`batchd check-config [--config PATH]` (SPEC 9): exit 0, or 78 with every problem named.

Each case runs the real ``batchd`` command on a config file in a private directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def check(tmp_path: Path, config: str, *before: str) -> subprocess.CompletedProcess[str]:
    """``batchd [BEFORE] check-config --config FILE`` with private paths."""
    path = tmp_path / "config.toml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    env.update(
        BATCHD_SPOOL_DIR=str(tmp_path / "spool"),
        BATCHD_STATE_DIR=str(tmp_path / "state"),
        BATCHD_SOCKET=str(tmp_path / "run" / "batchd.sock"),
    )
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
