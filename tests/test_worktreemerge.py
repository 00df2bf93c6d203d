"""Merges into the batch branch and the fast-forward of the base (worktreemerge.py), in real
repositories: parallel features merged exactly once, conflicts aborted with their files,
merges killed half way, the base moved or checked out; the user's checkout compared
bitwise after every operation. Real git."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from batchd import worktree as wt
from batchd import worktreemerge as wm
from batchd import worktreesettle as ws
from batchd.worktreeplan import (
    Forward,
    Problem,
    RepoRecord,
    Stay,
    batch_branch,
    feature_branch,
    merge_message,
    worktree_dir,
)
from tests.gitrepo import commit, git, isolated_env, killed_midway, rev, snapshot, user_repo
from tests.harness import poll

pytestmark = pytest.mark.anyio

BID = "batch-20261124-050653-123456"
BRANCH = batch_branch(BID)
# What a user's global config may hold that batchd's merges must survive without writing
# anything: signing that cannot work unattended, tracking set up for every branch, merges
# refused unless fast-forward, no identity at all.
HOSTILE = """[commit]
gpgSign = true
[gpg]
program = false
[branch]
autoSetupMerge = always
[merge]
ff = only
[user]
useConfigOnly = true
[rerere]
enabled = true
"""


class Batch:
    """The user's repository and a parallel batch's worktree in it."""

    def __init__(self, tmp: Path, config: str = "") -> None:
        tmp = tmp.resolve()
        self.repo = user_repo(tmp / "repo")
        self.root = wt.prepare_root(str(tmp / "worktrees"))
        self.env = isolated_env(tmp, config)
        self.record = RepoRecord(repo=str(self.repo), base_ref="main", base_commit=rev(self.repo))
        self.path = worktree_dir(self.root, BRANCH)
        self.before = snapshot(self.repo)

    def untouched(self) -> None:
        assert snapshot(self.repo) == self.before

    async def start(self) -> None:
        base = self.record.base_commit
        await wt.ensure_worktree(str(self.repo), self.root, self.path, BRANCH, base, env=self.env)

    async def feature(self, index: int, attempt: int = 1) -> Path:
        """A feature attempt's worktree, branched from the batch branch's tip."""
        branch = feature_branch(BID, index, attempt)
        tip = await wt.tip_of(str(self.repo), BRANCH, env=self.env)
        assert tip is not None
        path = worktree_dir(self.root, branch)
        made = await wt.ensure_worktree(str(self.repo), self.root, path, branch, tip, env=self.env)
        return Path(made.path)

    async def merge(self, index: int, attempt: int = 1) -> wm.Merged | wm.Conflict:
        msg = merge_message(BID, index, f"feature number {index}")
        return await wm.merge_feature(
            self.root, self.path, feature_branch(BID, index, attempt), msg, env=self.env
        )

    def merges(self) -> list[str]:
        """The subjects of the merge commits on the batch branch, oldest first."""
        out = git(self.repo, "log", "--merges", "--reverse", "--format=%s", BRANCH)
        return out.splitlines()

    def clean(self) -> None:
        """The batch's worktree: nothing changed, no merge in progress."""
        assert git(Path(self.path), "status", "--porcelain", "--untracked-files=all") == ""
        assert not Path(ws.git_dir_of(self.path) or "", "MERGE_HEAD").exists()


@pytest.fixture
def b(tmp_path: Path) -> Batch:
    return Batch(tmp_path)


def subject(index: int) -> str:
    return f"batchd: feature {index} of {BID}: feature number {index}"


async def test_two_features_from_one_tip_are_each_merged_exactly_once(
    b: Batch, anyio_backend: str
) -> None:
    """Both attempts start at the same tip; each merge makes one --no-ff merge commit of
    batchd's, named after the feature; every repetition finds it merged."""
    await b.start()
    tip = rev(b.repo, BRANCH)
    f0, f1 = await b.feature(0), await b.feature(1)
    assert rev(f0) == rev(f1) == tip
    commit(f0, "a.txt", "from feature 0\n")
    commit(f1, "b.txt", "from feature 1\n")
    m0 = await b.merge(0)
    assert isinstance(m0, wm.Merged) and m0.created
    assert await b.merge(0) == wm.Merged(m0.head, created=False)
    b.untouched()
    m1 = await b.merge(1)
    assert isinstance(m1, wm.Merged) and m1.created and rev(b.repo, BRANCH) == m1.head
    for _ in range(2):
        assert await b.merge(1) == wm.Merged(m1.head, created=False)
        assert await b.merge(0) == wm.Merged(m1.head, created=False)
    assert b.merges() == [subject(0), subject(1)]
    who = git(b.repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%P", BRANCH).split("|")
    assert who[:2] == ["batchd <batchd@localhost>"] * 2 and len(who[2].split()) == 2
    assert Path(b.path, "a.txt").exists() and Path(b.path, "b.txt").exists()
    for index in (0, 1):
        assert await wm.is_merged(str(b.repo), feature_branch(BID, index, 1), BRANCH, env=b.env)
    b.clean()
    b.untouched()


async def test_a_conflict_is_aborted_naming_its_files_and_a_retry_from_the_new_tip_merges(
    b: Batch, anyio_backend: str
) -> None:
    """Feature 1's merge conflicts with feature 0's: aborted, the batch worktree clean and
    its branch unmoved, the files named; its attempt branch keeps the commit; attempt 2
    starts from the new tip and merges."""
    await b.start()
    f0, f1 = await b.feature(0), await b.feature(1)
    commit(f0, "README", "feature 0 wrote this\n")
    commit(f1, "README", "feature 1 wrote that\n")
    lost = commit(f1, "src/other.py", "x = 1\n")
    m0 = await b.merge(0)
    assert isinstance(m0, wm.Merged)
    conflict = await b.merge(1)
    assert conflict == wm.Conflict(("README",))
    assert conflict.message(feature_branch(BID, 1, 1), BRANCH) == (
        f"merging {BRANCH}-1-a1 into {BRANCH} conflicts in 1 files: README; "
        f"the retry starts from the new tip of {BRANCH}"
    )
    assert rev(b.repo, BRANCH) == m0.head
    b.clean()
    assert rev(b.repo, feature_branch(BID, 1, 1)) == lost
    assert not await wm.is_merged(str(b.repo), feature_branch(BID, 1, 1), BRANCH, env=b.env)
    again = await b.feature(1, attempt=2)
    assert rev(again) == m0.head
    commit(again, "README", "feature 0 wrote this\nand feature 1 added that\n")
    m1 = await b.merge(1, attempt=2)
    assert isinstance(m1, wm.Merged) and m1.created
    assert b.merges() == [subject(0), subject(1)]
    b.clean()
    b.untouched()


async def test_a_half_done_merge_is_undone_and_merged_once(b: Batch, anyio_backend: str) -> None:
    """What a killed merge leaves in the batch's worktree (MERGE_HEAD and a staged tree; a
    half-written tree with a stray file and a stale index.lock) is undone first."""
    await b.start()
    f0, f1 = await b.feature(0), await b.feature(1)
    commit(f0, "a.txt", "0\n")
    commit(f1, "b.txt", "1\n")
    git(Path(b.path), "merge", "--no-ff", "--no-commit", "-q", feature_branch(BID, 0, 1))
    assert Path(ws.git_dir_of(b.path) or "", "MERGE_HEAD").exists()
    m0 = await b.merge(0)
    assert isinstance(m0, wm.Merged) and m0.created
    Path(b.path, "a.txt").write_text("half written\n")
    Path(b.path, "stray.txt").write_text("from the killed merge\n")
    Path(ws.git_dir_of(b.path) or "", "index.lock").write_text("")
    m1 = await b.merge(1)
    assert isinstance(m1, wm.Merged) and m1.created
    assert b.merges() == [subject(0), subject(1)]
    assert Path(b.path, "a.txt").read_text() == "0\n" and not Path(b.path, "stray.txt").exists()
    b.clean()
    b.untouched()


SLOW_DRIVER = (
    'touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; git merge-file "$1" "$2" "$3"'
)
MERGE_CHILD = """
import sys, anyio
from batchd import worktreemerge
root, path, branch = sys.argv[1:4]
anyio.run(lambda: worktreemerge.merge_feature(root, path, branch, "killed merge"))
"""


@pytest.mark.parametrize("its_git", ["runs_on", "killed_too"])
async def test_a_merge_killed_half_way_is_merged_exactly_once(
    b: Batch, tmp_path: Path, its_git: str, anyio_backend: str
) -> None:
    """A batchd killed -9 inside a merge (held in a merge driver): its git either finishes
    on its own, or is killed too and leaves its index.lock. The merge repeated waits for
    it, then finds it merged, or undoes the half and merges: one merge commit either way."""
    (b.repo / ".gitattributes").write_text("shared.txt merge=slow\n")
    (b.repo / "shared.txt").write_text("one\ntwo\nthree\nfour\nfive\n")
    git(b.repo, "add", ".gitattributes", "shared.txt")
    git(b.repo, "commit", "-q", "-m", "shared", "--", ".gitattributes", "shared.txt")
    b.record, b.before = (
        RepoRecord(repo=str(b.repo), base_ref="main", base_commit=rev(b.repo)),
        snapshot(b.repo),
    )
    await b.start()
    f0, f1 = await b.feature(0), await b.feature(1)
    commit(f0, "shared.txt", "ONE\ntwo\nthree\nfour\nfive\n")
    commit(f1, "shared.txt", "one\ntwo\nthree\nfour\nFIVE\n")
    assert isinstance(await b.merge(0), wm.Merged)
    started, release = tmp_path / "started", tmp_path / "release"
    driver = SLOW_DRIVER.format(started=started, release=release)
    env = {
        **b.env,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "merge.slow.driver",
        "GIT_CONFIG_VALUE_0": f"sh -c '{driver}' slow %A %O %B",
    }
    fb1 = feature_branch(BID, 1, 1)
    with killed_midway(MERGE_CHILD, [b.root, b.path, fb1], env, started, release):
        assert ws.busy(b.path)
        if its_git == "killed_too":
            for pid in ws.busy(b.path):
                with contextlib.suppress(ProcessLookupError):  # a child may end meanwhile
                    os.kill(pid, signal.SIGKILL)
            poll(lambda: not ws.busy(b.path), 30, "the killed git to go", lambda: "")
            assert Path(ws.git_dir_of(b.path) or "", "index.lock").exists()
        else:
            with pytest.raises(Problem, match=r"still work in batchd's worktree"):
                await wm.merge_feature(b.root, b.path, fb1, "again", env=env, timeout=1.0)
        release.write_text("")
        m1 = await wm.merge_feature(b.root, b.path, fb1, "again", env=env)
    # The git left running may finish the merge, or die writing to the killed batchd's
    # pipe before it does: the repeated merge completes it either way, once.
    assert isinstance(m1, wm.Merged) and m1.head == rev(b.repo, BRANCH)
    assert m1.created or its_git == "runs_on"
    assert len(b.merges()) == 2 and b.merges()[1] in ("killed merge", "again")
    assert Path(b.path, "shared.txt").read_text() == "ONE\ntwo\nthree\nfour\nFIVE\n"
    b.clean()
    b.untouched()


async def test_the_users_checkout_is_bitwise_the_same_after_every_step(
    b: Batch, anyio_backend: str
) -> None:
    """HEAD, every branch outside batchd/, the index, the files, the uncommitted changes
    and the stash of the user: the same after each step of a parallel batch's life, a
    conflict and a refused fast-forward included."""
    making: list[Callable[[], Awaitable[object]]] = [
        lambda: wt.record_repo(str(b.repo / "src"), env=b.env),
        b.start,
        lambda: b.feature(0),
        lambda: b.feature(1),
    ]
    for make in making:
        await make()
        b.untouched()
    f0, f1 = (
        Path(worktree_dir(b.root, feature_branch(BID, 0, 1))),
        Path(worktree_dir(b.root, feature_branch(BID, 1, 1))),
    )
    commit(f0, "README", "0\n")
    commit(f1, "README", "1\n")
    Path(f1, "left.txt").write_text("not committed\n")
    repo = str(b.repo)
    steps: list[Callable[[], Awaitable[object]]] = [
        lambda: b.merge(0),
        lambda: b.merge(1),
        lambda: wm.is_merged(repo, feature_branch(BID, 0, 1), BRANCH, env=b.env),
        lambda: ws.settle(b.root, str(f0)),
        lambda: wt.remove_worktree(repo, b.root, str(f0), env=b.env),
        lambda: wt.remove_worktree(repo, b.root, str(f1), env=b.env),
        lambda: wm.drop_merged_branch(repo, feature_branch(BID, 0, 1), BRANCH, env=b.env),
        lambda: wm.fast_forward_base(b.record, BRANCH, env=b.env),
        lambda: wt.remove_worktree(repo, b.root, b.path, env=b.env),
        lambda: wt.remove_worktree(repo, b.root, str(f1), discard=True, env=b.env),
    ]
    results: list[object] = []
    for step in steps:
        results.append(await step())
        b.untouched()
    assert isinstance(results[1], wm.Conflict) and isinstance(results[5], wt.Kept)
    assert isinstance(results[7], Stay) and results[8] == wt.Removed(b.path)
    assert os.listdir(b.root) == []


async def test_merges_survive_a_hostile_user_config_and_write_none(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The user's global config asks for signing (that fails), tracking of every branch,
    fast-forward-only merges, no identity, rerere: batchd's worktrees and merges work and
    the repository's config is bitwise the same."""
    b = Batch(tmp_path, HOSTILE)
    await b.start()
    f0, f1 = await b.feature(0), await b.feature(1)
    commit(f0, "a.txt", "0\n")
    commit(f1, "README", "changed\n")
    commit(f0, "README", "differently\n")
    assert isinstance(await b.merge(0), wm.Merged)
    assert await b.merge(1) == wm.Conflict(("README",))
    assert b.merges() == [subject(0)]
    assert not Path(b.repo, ".git", "rr-cache").exists()
    b.clean()
    b.untouched()


# --- the base --------------------------------------------------------------------------------


async def merged_batch(b: Batch) -> str:
    await b.start()
    commit(await b.feature(0), "a.txt", "0\n")
    m = await b.merge(0)
    assert isinstance(m, wm.Merged)
    return m.head


async def test_the_base_checked_out_by_the_user_is_not_moved(b: Batch, anyio_backend: str) -> None:
    """main is checked out in the user's checkout: the fast-forward is refused with the
    reason and what to run; nothing moves."""
    await merged_batch(b)
    got = await wm.fast_forward_base(b.record, BRANCH, env=b.env)
    assert got == Stay(
        f"main is checked out in {b.repo}: batchd never moves a branch under a work tree; "
        f"there, run git merge --ff-only {BRANCH}"
    )
    b.untouched()


async def test_a_base_checked_out_nowhere_is_fast_forwarded_once(
    b: Batch, anyio_backend: str
) -> None:
    """The user switched to another branch: main moves forward to the batch branch (with
    a reflog entry of batchd's); repeated, it is done; nothing else of the user moves."""
    git(b.repo, "switch", "-q", "topic")
    b.before = snapshot(b.repo)
    head = await merged_batch(b)
    got = await wm.fast_forward_base(b.record, BRANCH, env=b.env)
    assert got == Forward("main", b.record.base_commit, head)
    assert rev(b.repo, "main") == head
    assert git(b.repo, "reflog", "-1", "--format=%gs", "main").strip() == (
        f"batchd: fast-forward main to {BRANCH}"
    )
    again = await wm.fast_forward_base(b.record, BRANCH, env=b.env)
    assert again == Stay(f"main is already at {BRANCH} ({head[:12]})", done=True)
    after = snapshot(b.repo)
    moved = [r for r in after["refs"] if r not in b.before["refs"]]
    assert moved == [f"refs/heads/main {head}"]
    assert {k: v for k, v in after.items() if k != "refs"} == {
        k: v for k, v in b.before.items() if k != "refs"
    }


async def test_a_base_that_moved_while_the_batch_waited_is_refused(
    b: Batch, anyio_backend: str
) -> None:
    """The user committed to main (not checked out) meanwhile: main is no ancestor of the
    batch branch, so it stays, and the reason names both commits."""
    git(b.repo, "switch", "-q", "topic")
    await merged_batch(b)
    moved = git(b.repo, "commit-tree", "main^{tree}", "-p", "main", "-m", "user").strip()
    git(b.repo, "branch", "-f", "main", moved)
    b.before = snapshot(b.repo)
    got = await wm.fast_forward_base(b.record, BRANCH, env=b.env)
    assert got == Stay(
        f"main moved from {b.record.base_commit[:12]} to {moved[:12]} while the batch ran "
        f"and is not an ancestor of {BRANCH}, so it cannot be fast-forwarded: merge "
        f"{BRANCH} into main yourself (git merge {BRANCH})"
    )
    assert rev(b.repo, "main") == moved
    b.untouched()


async def test_a_batch_begun_on_a_detached_head_moves_no_branch(
    b: Batch, anyio_backend: str
) -> None:
    """base_ref None: nothing to fast-forward, said so."""
    await merged_batch(b)
    detached = RepoRecord(repo=str(b.repo), base_ref=None, base_commit=b.record.base_commit)
    got = await wm.fast_forward_base(detached, BRANCH, env=b.env)
    assert isinstance(got, Stay) and got.reason.startswith("the batch began on a detached HEAD")
    b.untouched()


async def test_only_a_merged_feature_branch_without_a_worktree_is_deleted(
    b: Batch, anyio_backend: str
) -> None:
    """A feature branch goes when its commits are in the batch branch and its worktree is
    removed; an unmerged one stays; a branch outside batchd/ is refused."""
    await b.start()
    f0, f1 = await b.feature(0), await b.feature(1)
    commit(f0, "a.txt", "0\n")
    unmerged = commit(f1, "b.txt", "1\n")
    await b.merge(0)
    fb0, fb1 = feature_branch(BID, 0, 1), feature_branch(BID, 1, 1)
    assert await wm.drop_merged_branch(str(b.repo), fb0, BRANCH, env=b.env) is False  # checked out
    await wt.remove_worktree(str(b.repo), b.root, str(f0), env=b.env)
    await wt.remove_worktree(str(b.repo), b.root, str(f1), env=b.env)
    assert await wm.drop_merged_branch(str(b.repo), fb0, BRANCH, env=b.env) is True
    assert await wm.drop_merged_branch(str(b.repo), fb0, BRANCH, env=b.env) is True
    assert git(b.repo, "branch", "--list", fb0) == ""
    assert await wm.drop_merged_branch(str(b.repo), fb1, BRANCH, env=b.env) is False
    assert rev(b.repo, fb1) == unmerged
    with pytest.raises(Problem, match="only its own feature branches, not main"):
        await wm.drop_merged_branch(str(b.repo), "main", BRANCH, env=b.env)
    b.untouched()
