"""add/submit --runner, --verify, --worktree, --parallel (SPEC 8, 13-15): the request written
into the spool, the directives of a plain file, the local refusals, and the completion of
--runner from the config's profiles.

Every command runs as a real ``python -m batchctl`` in a temp setup (``tests/harness.py``'s
paths, no daemon started: these options are checked before any daemon is asked).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchd.parse import Limits, parse_spool_file, with_runners
from tests.harness import Daemon

PROFILES = """
[runners.codex]
command = ["codex", "exec", "--json", "{feature}"]
output_format = "codex-jsonl"

[runners.fast]
timeout = 60
"""


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    """batchctl's paths and a config with the profiles default, codex and fast (not started)."""
    return Daemon(tmp_path / "d", config=PROFILES)


def spooled(d: Daemon) -> list[dict[str, Any]]:
    if not d.spool.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.spool.glob("*.json"))]


def accepted(request: dict[str, Any]) -> None:
    """The daemon's own parser, with the config's profiles, accepts the request as written."""
    limits = with_runners(Limits(), frozenset({"default", "codex", "fast"}))
    parse_spool_file("r.json", json.dumps(request).encode(), limits)


def in_git(d: Daemon) -> None:
    """The workdir becomes a git work tree: --worktree asks for one."""
    subprocess.run(["git", "init", "-q", str(d.workdir)], check=True)


def test_add_writes_every_choice_into_the_request(d: Daemon) -> None:
    """add --runner --verify --worktree --parallel: runner, verify split as a shell would,
    isolation "worktree" and parallel true, in a request the daemon accepts."""
    in_git(d)
    out = d.ctl(
        "add",
        "--runner",
        "codex",
        "--verify",
        "make test ARGS='-k \"login page\"'",
        "--worktree",
        "--parallel",
        "one",
        "two",
        cwd=d.workdir,
    )
    assert out.returncode == 0, out
    [req] = spooled(d)
    assert req == {
        "features": ["one", "two"],
        "source_type": "file",
        "issue_numbers": None,
        "cwd": str(d.workdir),
        "name": "one (+1 more)",
        "runner": "codex",
        "verify": ["make", "test", 'ARGS=-k "login page"'],
        "isolation": "worktree",
        "parallel": True,
    }
    accepted(req)


def test_a_plain_add_writes_the_request_it_always_wrote(d: Daemon) -> None:
    """Without the options the request has no new field (a daemon of the version before,
    which refuses unknown fields, still reads it)."""
    assert d.ctl("add", "one", cwd=d.workdir).returncode == 0
    [req] = spooled(d)
    assert set(req) == {"features", "source_type", "issue_numbers", "cwd", "name"}


def test_a_worktree_batch_outside_a_git_work_tree_is_refused_before_anything_is_queued(
    d: Daemon, tmp_path: Path
) -> None:
    """add --worktree (or a file's isolation directive) in a directory outside any git work
    tree: exit 1, what and what to do, and nothing in the spool."""
    out = d.ctl("add", "--worktree", "--cwd", str(d.workdir), "one")
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"batchctl: add: isolation = worktree needs the batch's cwd inside a git work tree, "
        f"and {d.workdir} is not (no .git in it or above it): give the batch the directory "
        "of a git repository"
    ), out.stderr
    todo = tmp_path / "todo.txt"
    todo.write_text("# batchd: isolation = worktree\nfirst\n")
    out = d.ctl("submit", str(todo), "--cwd", str(d.workdir))
    assert out.returncode == 1 and "or drop the isolation" in out.stderr
    assert spooled(d) == []
    in_git(d)
    assert d.ctl("add", "--worktree", "--cwd", str(d.workdir / ".."), "two").returncode == 1
    assert d.ctl("add", "--worktree", "--cwd", str(d.workdir), "two").returncode == 0


def test_submit_takes_a_files_directives_and_the_options_win(d: Daemon, tmp_path: Path) -> None:
    """submit FILE: the file's runner, verify and isolation directives go into the request;
    an option given on the command line wins over the directive; --parallel may rely on the
    file's isolation."""
    todo = tmp_path / "todo.txt"
    todo.write_text(
        "# batchd: runner = fast\n# batchd: verify = pytest -q\n"
        "# batchd: isolation = worktree\nfirst\nsecond\n"
    )
    in_git(d)
    assert d.ctl("submit", str(todo), cwd=d.workdir).returncode == 0
    out = d.ctl("submit", str(todo), "--runner", "codex", "--verify", "make check", "--parallel")
    assert out.returncode == 0, out
    first, second = sorted(spooled(d), key=lambda r: "parallel" in r)
    assert (first["runner"], first["verify"], first["isolation"]) == (
        "fast",
        ["pytest", "-q"],
        "worktree",
    )
    assert "parallel" not in first
    assert (second["runner"], second["verify"], second["parallel"]) == (
        "codex",
        ["make", "check"],
        True,
    )
    accepted(first)
    accepted(second)


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["add", "--runner", "gpt", "x"], 1, "--runner 'gpt': no such runner profile; "),
        (["add", "--verify", "", "x"], 2, "--verify is empty; give the check command"),
        (["add", "--verify", "   ", "x"], 2, "--verify is empty"),
        (["add", "--verify", "make 'test", "x"], 2, "No closing quotation; quote the command"),
        (["add", "--parallel", "x"], 2, "--parallel needs --worktree"),
        (["submit", "FILE", "--parallel"], 2, "add --worktree"),
        (["submit", "FILE", "--runner", "gpt"], 1, "the profiles are codex, default, fast"),
        (["add", "--worktree", "--runner", "", "x"], 1, "no such runner profile"),
    ],
)
def test_bad_choices_are_refused_and_nothing_is_queued(
    d: Daemon, tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    """An unknown profile exits 1 naming the profiles; an empty or unbalanced --verify and
    --parallel without a worktree are usage errors (2) naming the fix; nothing is queued."""
    todo = tmp_path / "todo.txt"
    todo.write_text("first\n")
    out = d.ctl(*[str(todo) if a == "FILE" else a for a in args], cwd=d.workdir)
    assert out.returncode == code, out
    assert said in out.stderr
    assert spooled(d) == []


def test_a_files_unknown_runner_names_the_line_and_the_profiles(d: Daemon, tmp_path: Path) -> None:
    """'# batchd: runner = gpt' is refused (exit 1) naming the file, the line and the profiles."""
    todo = tmp_path / "todo.txt"
    todo.write_text("# batchd: name = x\n# batchd: runner = gpt\nfirst\n")
    out = d.ctl("submit", str(todo))
    assert out.returncode == 1
    assert "todo.txt: line 2: unknown runner profile 'gpt'" in out.stderr
    assert "codex, default, fast" in out.stderr
    assert spooled(d) == []


BASH_COMPLETE = """
source <(batchctl completion bash)
read -ra COMP_WORDS <<< "$1"
[[ $1 == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_batchctl
echo "${COMPREPLY[*]}"
"""


def ctl_on_path(tmp_path: Path) -> str:
    """A PATH whose `batchctl` is this checkout's, run by this python."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "batchctl"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m batchctl "$@"\n')
    exe.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


def test_bash_completes_runner_with_the_configs_profiles(d: Daemon, tmp_path: Path) -> None:
    """`add --runner <TAB>` offers default and the [runners.NAME] of the config; `--config`
    on the line is the config asked; the hidden --runner-names is never offered."""
    env = {**d.env, "PATH": ctl_on_path(tmp_path)}
    other = tmp_path / "other.toml"
    other.write_text('[runners.slow]\ncommand = ["x"]\n')

    def complete(line: str) -> str:
        out = subprocess.run(
            ["bash", "-c", BASH_COMPLETE, "bash", line],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert complete("batchctl add --runner ") == "codex default fast"
    assert complete("batchctl submit f.txt --runner c") == "codex"
    assert complete(f"batchctl --config {other} add --runner ") == "default slow"
    assert "--runner-names" not in complete("batchctl completion --")
    assert "--runner-names" not in d.ctl("completion", "--help").stdout
    assert "--worktree" in complete("batchctl add --w").split()


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_runner_with_the_configs_profiles(d: Daemon, tmp_path: Path) -> None:
    """fish offers the config's profiles after --runner, too."""
    env = {**d.env, "PATH": ctl_on_path(tmp_path), "HOME": str(tmp_path)}
    script = tmp_path / "batchctl.fish"
    script.write_text(d.ctl("completion", "fish").stdout)
    out = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script}; complete -C 'batchctl add --runner '"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(line.split("\t")[0] for line in out.stdout.splitlines()) == [
        "codex",
        "default",
        "fast",
    ]
