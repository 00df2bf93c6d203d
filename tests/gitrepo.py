"""Real git repositories for the worktree tests: made with real git, a fixed identity and
no machine config, and a bitwise snapshot of everything of the user's checkout that
batchd must never touch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchd.gitinfo import git_env
from tests.harness import poll

IDENTITY = ("-c", "user.name=Test User", "-c", "user.email=user@example.invalid")


def isolated_env(tmp: Path, config: str = "") -> dict[str, str]:
    """An environment whose git reads no config of the machine: a global config file of
    the test's own (``config``, TOML-like git config text) and no system config."""
    gitconfig = tmp / "global.gitconfig"
    gitconfig.write_text(config)
    return {**os.environ, "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run real git in ``repo`` as the test's user would; its stdout."""
    done = subprocess.run(
        ["git", *IDENTITY, *args],
        cwd=repo,
        env=git_env(env if env is not None else setup_env()),
        capture_output=True,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {args} in {repo}: {done.stderr.decode()}")
    return done.stdout.decode()


def setup_env() -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def commit(repo: Path, name: str, text: str, message: str | None = None) -> str:
    """Write ``name``, commit it; the new commit id."""
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(repo, "add", "--", name)
    git(repo, "commit", "-q", "-m", message or f"write {name}")
    return rev(repo)


def rev(repo: Path, what: str = "HEAD") -> str:
    return git(repo, "rev-parse", "--verify", what).strip()


def user_repo(path: Path) -> Path:
    """The user's repository as a user leaves it overnight: ``main`` checked out, a branch
    ``topic``, a stash entry, a staged change, an unstaged change and an untracked file."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main", ".")
    commit(path, "README", "hello\n", "first")
    commit(path, "src/app.py", "print('app')\n", "app")
    git(path, "branch", "topic")
    (path / "README").write_text("stashed edit\n")
    git(path, "stash", "push", "-q", "-m", "the user's stash")
    (path / "src" / "app.py").write_text("print('staged')\n")
    git(path, "add", "src/app.py")
    (path / "README").write_text("unstaged edit\n")
    (path / "notes.txt").write_text("untracked\n")
    return path


def snapshot(repo: Path) -> dict[str, Any]:
    """Every part of the user's checkout batchd must leave as it is, bitwise: HEAD and its
    reflog, every ref outside ``refs/heads/batchd/``, the index, the config, the stash,
    and every file of the work tree (with its mode)."""
    dot = repo / ".git"
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    files = {}
    for here, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if not (here == str(repo) and d == ".git")]
        for name in names:
            p = Path(here, name)
            files[str(p.relative_to(repo))] = (p.lstat().st_mode, p.read_bytes())
    return {
        "HEAD": (dot / "HEAD").read_bytes(),
        "HEAD log": (dot / "logs" / "HEAD").read_bytes(),
        "refs": [r for r in refs if not r.startswith("refs/heads/batchd/")],
        "index": (dot / "index").read_bytes(),
        "config": (dot / "config").read_bytes(),
        "stash": git(repo, "stash", "list", "--format=%H %gs"),
        "files": files,
    }


@contextlib.contextmanager
def killed_midway(
    code: str, args: list[str], env: dict[str, str], started: Path, release: Path
) -> Iterator[None]:
    """A batchd step (``code``, run by a child Python) killed -9 once its git reached
    ``started`` (a filter or merge driver that then waits for ``release``): its git runs
    on in a session of its own, as after a real kill. At the end ``release`` is made,
    so nothing waits for ever."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    try:
        poll(started.exists, 60, f"the step to reach {started.name}", lambda: "")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        yield
    finally:
        release.touch()
        if child.poll() is None:
            child.kill()
            child.wait()
