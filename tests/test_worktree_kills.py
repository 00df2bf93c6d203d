"""kill -9 of the daemon during worktree batches (SPEC 15), in real repositories: at each git
step's failpoint (worktree creation, the agent's run, the merge, the removal, the base's
fast-forward) and in storms of kills one after another. After the last start, every
feature completed, nothing was merged twice, every commit an agent made is reachable from
a batchd/ branch, no worktree is left, and the user's checkout is bitwise untouched.
Real daemons on both backends; the runs outlive the daemon (SPEC 16), as a kill leaves
them."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepo import snapshot
from tests.harness import Daemon
from tests.worktree_setup import MakeDaemon, Repo, settled, submit, worktree_daemon

FEATURES = [f"commit=f{i}.txt sleep=0.{i % 3}" for i in range(4)]


def ended_runs(d: Daemon, batch_id: str) -> Counter[tuple[int, int]]:
    """(feature, attempt) -> agent runs of the batch that ended having committed."""
    return Counter(
        (int(r["index"]), int(r["attempt"]))
        for r in d.agent_runs()
        if r["event"] == "end" and r["code"] == 0 and r["batch_id"] == batch_id
    )


def check_whole(d: Daemon, repo: Repo, st: dict[str, Any]) -> None:
    """The batch completed, each feature merged once (parallel), every agent commit kept
    on a batchd/ branch, no worktree left, the user's checkout untouched."""
    rec, bid = st["git"], st["batch_id"]
    n = st["total_features"]
    assert st["status"] == "completed", st["failed_features"]
    assert sorted(st["completed_features"]) == list(range(n))
    if st["parallel"]:
        assert repo.merges(rec["branch"]) == Counter(range(n))
    made = repo.agent_commits(f"refs/heads/{rec['branch']}")
    assert made == ended_runs(d, bid), (made, ended_runs(d, bid))
    files = set(repo.git("ls-tree", "--name-only", rec["branch"]).split())
    assert {f"f{i}.txt" for i in range(n)} <= files
    assert rec["step"] == "removed" and all(f["step"] == "removed" for f in rec["features"])
    assert not Path(rec["worktree"]).exists()


def no_worktrees(d: Daemon, repo: Repo) -> None:
    assert repo.worktrees() == []
    root = d.state / "worktrees"
    assert not root.exists() or os.listdir(root) == []
    repo.untouched()


def killed_then_finished(d: Daemon, point: str, count: int) -> list[dict[str, Any]]:
    """The daemon was started with ``point``: it dies there; the next start finishes."""
    assert d.proc is not None
    assert d.proc.wait(60) == -9, d.stderr()
    d.start()
    d.wait_for(lambda: _all_settled(d, count), 90, f"the batches' end after a kill at {point}")
    return d.batch_states()


def _all_settled(d: Daemon, count: int) -> bool:
    states = d.batch_states()
    return len(states) == count and all(settled(s) for s in states)


@pytest.mark.parametrize(
    "point",
    [
        "before_worktree_create@3",
        "after_worktree_create@3",
        "after_attempt_record@2",
        "after_runner_exit@2",
        "before_merge@2",
        "after_merge@2",
        "before_worktree_remove@2",
        "after_worktree_remove@2",
    ],
)
def test_a_kill_at_each_git_step_of_a_parallel_batch(
    make_daemon: MakeDaemon, tmp_path: Path, point: str
) -> None:
    """A parallel batch of four under two slots, the daemon killed -9 at one git step (or
    during an agent's run): after the restart every feature is merged exactly once, no
    commit is lost, no worktree is left, the user's checkout is untouched."""
    repo = Repo(tmp_path / "repo")
    d = worktree_daemon(make_daemon, slots=2)
    d.start(env={"BATCHD_FAILPOINTS": point})
    submit(d, "p.json", repo.path, FEATURES, parallel=True)
    [st] = killed_then_finished(d, point, 1)
    check_whole(d, repo, st)
    no_worktrees(d, repo)


@pytest.mark.parametrize(
    "point",
    [
        "before_worktree_create",
        "after_worktree_create",
        "after_attempt_record@2",
        "before_forward",
        "after_forward",
        "before_worktree_remove",
        "after_worktree_remove",
    ],
)
def test_a_kill_at_each_git_step_of_a_sequential_batch(
    make_daemon: MakeDaemon, tmp_path: Path, point: str
) -> None:
    """A sequential batch with merge_into_base (the user leaves its base while it runs),
    killed at one git step: after the restart its features ran once each, in order, in its
    worktree, the base was fast-forwarded exactly to the batch branch, the worktree is
    gone and nothing else of the user's moved."""
    repo = Repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    d = worktree_daemon(make_daemon, extra="[worktree]\nmerge_into_base = true\n")
    d.start(env={"BATCHD_FAILPOINTS": point})
    submit(d, "s.json", repo.path, [f"{FEATURES[0]} wait={gate}", *FEATURES[1:3]])

    def started() -> bool:
        return any(r["event"] == "start" for r in d.agent_runs())

    d.wait_for(lambda: started() or dead(d), 60, "the first run, or the kill before it")
    early = dead(d)  # killed while its worktree was made
    if early:
        assert d.proc is not None and d.proc.wait() == -9
        d.start()
        d.wait_for(started, 60, "the first run after the restart")
    repo.git("checkout", "-q", "--detach")  # the user leaves main: checked out nowhere now
    repo.before = snapshot(repo.path)
    gate.touch()
    if not early:
        assert d.proc is not None and d.proc.wait(60) == -9, d.stderr()
        d.start()
    d.wait_for(lambda: _all_settled(d, 1), 90, f"the batch's end after a kill at {point}")
    [st] = d.batch_states()
    check_whole(d, repo, st)
    rec = st["git"]
    assert rec["base_ref"] == "main"
    assert repo.git("rev-parse", "main") == repo.git("rev-parse", rec["branch"])
    done = (f"main fast-forwarded to {rec['branch']}", f"main is already at {rec['branch']}")
    assert rec["forward"].startswith(done[1] if point == "after_forward" else done[0])
    starts = Counter(r["index"] for r in d.agent_runs() if r["event"] == "start")
    assert starts == Counter({"0": 1, "1": 1, "2": 1})
    assert repo.worktrees() == [] and os.listdir(d.state / "worktrees") == []
    after, main = snapshot(repo.path), f"refs/heads/main {rec['base_commit']}"
    moved = f"refs/heads/main {repo.git('rev-parse', 'main').strip()}"
    assert after["refs"] == [moved if r == main else r for r in repo.before["refs"]]
    assert {**after, "refs": []} == {**repo.before, "refs": []}  # only main moved, forward


STORM_POINTS = [
    "before_worktree_create",
    "after_worktree_create",
    "after_attempt_record",
    "after_runner_exit",
    "before_merge",
    "after_merge",
    "before_worktree_remove",
    "after_worktree_remove",
]


def test_kill_storms_lose_no_commit_and_merge_nothing_twice(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A parallel batch of six and a sequential batch of three on one repository under
    three slots, the daemon killed -9 again and again: at git steps picked at random
    (each step's failpoint armed once) and at random moments. At the end both batches
    completed, every feature merged once, every agent commit kept, no worktree left, the
    user's checkout untouched."""
    rng = random.Random(int(os.environ.get("BATCHD_TORTURE_SEED", "22")))
    repo = Repo(tmp_path / "repo")
    d = worktree_daemon(make_daemon, slots=3)
    points = [f"{p}@{rng.randint(1, 2)}" for p in STORM_POINTS] + [""] * 4
    rng.shuffle(points)
    features = [f"commit=f{i}.txt sleep=0.{2 + i % 4}" for i in range(6)]
    kills = 0
    for n, point in enumerate(points):
        start_armed(d, point)
        if n == 0:
            submit(d, "p.json", repo.path, features, parallel=True)
            submit(d, "s.json", repo.path, [f"commit=f{i}.txt sleep=0.3" for i in range(3)])
        if point:  # it dies there, unless the batches end first
            d.wait_for(lambda: dead(d) or _all_settled(d, 2), 60, f"a kill at {point}")
        else:  # a kill at a random moment, once something more has happened
            seen = len(d.agent_runs())
            d.wait_for(lambda: len(d.agent_runs()) > seen or _all_settled(d, 2), 60)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.2))
        if _all_settled(d, 2):
            break
        d.kill9()
        kills += 1
    if dead(d):
        d.start()
    d.wait_for(lambda: _all_settled(d, 2), 120, "both batches' end after the storm")
    for st in d.batch_states():
        check_whole(d, repo, st)
    no_worktrees(d, repo)
    assert kills >= 4


def dead(d: Daemon) -> bool:
    return d.proc is None or d.proc.poll() is not None


def start_armed(d: Daemon, point: str) -> None:
    """Start with ``point`` armed: ready, or already dead there (a begun step repeated at
    start may reach it before the first ping)."""
    d.start(env={"BATCHD_FAILPOINTS": point}, wait=False)

    def answering() -> bool:
        try:
            return bool(d.request("ping", timeout=2)["ok"])
        except OSError:
            return False

    d.wait_for(lambda: dead(d) or answering(), 60, "the start")
