"""Worktree batches driven through a real daemon (SPEC 15): the user's repository made by
real git (``gitrepo.user_repo``), the daemon's config, requests, and what git says at the
end (merges per feature, agent commits, worktrees left). Shared by the daemon tests of
worktree batches; nothing here imitates batchd."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.gitrepo import git, snapshot, user_repo
from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]
# The daemon's git (and the agents') read no config of the machine; retries are on.
ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "BATCH_RETRY_ENABLED": "true"}
FAST_RETRY = '[retry]\nbackoff_initial = 0.05\nbackoff_max = 0.1\njitter = "none"\n'
_MERGE_RE = re.compile(r"^batchd: feature (\d+) of (batch-[0-9-]+): ")
_AGENT_RE = re.compile(r"^feature (\d+) attempt (\d+)$")


class Repo:
    """The user's repository as left overnight, and the bitwise picture of it."""

    def __init__(self, path: Path) -> None:
        self.path = user_repo(path)
        self.before = snapshot(self.path)

    def untouched(self) -> None:
        """HEAD, every branch outside batchd/, the index, the files, the uncommitted change
        and the stash are bitwise what they were."""
        assert snapshot(self.path) == self.before

    def git(self, *args: str) -> str:
        return git(self.path, *args)

    def branches(self) -> list[str]:
        return self.git("for-each-ref", "--format=%(refname:short)", "refs/heads/").split()

    def worktrees(self) -> list[str]:
        """The work trees git lists besides the user's own."""
        lines = self.git("worktree", "list", "--porcelain").splitlines()
        paths = [line.removeprefix("worktree ") for line in lines if line.startswith("worktree ")]
        return [p for p in paths if Path(p).resolve() != self.path.resolve()]

    def merges(self, branch: str) -> Counter[int]:
        """How often each feature was merged into ``branch`` (batchd's merge commits)."""
        subjects = self.git("log", "--merges", "--format=%s", branch).splitlines()
        return Counter(int(m.group(1)) for s in subjects if (m := _MERGE_RE.match(s)))

    def agent_commits(self, refs: str = "refs/heads/batchd/") -> Counter[tuple[int, int]]:
        """The agents' commits reachable from batchd's branches: (feature, attempt) -> how
        many (an attempt run again after an interruption commits again)."""
        subjects = self.git("log", "--format=%s", "--author=Agent", f"--glob={refs}*")
        found = (_AGENT_RE.match(s) for s in subjects.splitlines())
        return Counter((int(m.group(1)), int(m.group(2))) for m in found if m)


def worktree_daemon(make_daemon: MakeDaemon, slots: int = 1, extra: str = "", **kw: Any) -> Daemon:
    return make_daemon(config=f"[queue]\nslots = {slots}\n{FAST_RETRY}{extra}", env=ENV, **kw)


def submit(
    d: Daemon, name: str, cwd: Path, features: Iterable[str], *, parallel: bool = False
) -> None:
    """A worktree batch (parallel or not) in ``cwd``, as ``batchctl submit --worktree`` writes
    it into the spool."""
    request = {"features": list(features), "cwd": str(cwd), "isolation": "worktree"}
    d.drop_request(name, {**request, "parallel": parallel})


def settled(state: dict[str, Any]) -> bool:
    """A finished batch whose worktrees have had their end (removed, or kept with changes)."""
    git_rec = state.get("git")
    if state["status"] not in ("completed", "failed", "cancelled"):
        return False
    if git_rec is None:
        return True
    steps = [git_rec["step"], *(f["step"] for f in git_rec["features"])]
    return all(s in ("removed", "kept") for s in steps)


def wait_settled(d: Daemon, count: int = 1, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Every batch finished and its git end done; the states, by seq."""

    def done() -> bool:
        states = d.batch_states()
        return len(states) >= count and all(settled(s) for s in states)

    d.wait_for(done, timeout, f"{count} batches finished with their worktrees' end")
    return d.batch_states()


def agent_starts(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.agent_runs() if r["event"] == "start"]
