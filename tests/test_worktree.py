"""batchd's worktrees in real repositories (worktree.py): the record, the worktree made and
made again whatever a killed step left, the stale index.lock, the removal, and the
cheap check; the user's checkout compared bitwise after every operation. Real git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from batchd import worktree as wt
from batchd import worktreecheck
from batchd import worktreesettle as ws
from batchd.worktreeplan import (
    HALF_MADE,
    Problem,
    batch_branch,
    feature_branch,
    parse_worktree_list,
    worktree_dir,
)
from tests.gitrepo import commit, git, isolated_env, killed_midway, rev, snapshot, user_repo
from tests.harness import REPO, alive, poll

pytestmark = pytest.mark.anyio

BID = "batch-20261124-050653-123456"
BRANCH = batch_branch(BID)


class Setup:
    """The user's repository, batchd's worktree.dir, and the environment of its git."""

    def __init__(self, tmp: Path) -> None:
        tmp = tmp.resolve()
        self.repo = user_repo(tmp / "repo")
        self.root = wt.prepare_root(str(tmp / "state" / "worktrees"))
        self.env = isolated_env(tmp)
        self.before = snapshot(self.repo)
        self.base = rev(self.repo)
        self.path = worktree_dir(self.root, BRANCH)

    def untouched(self) -> None:
        """The user's checkout is bitwise what it was."""
        assert snapshot(self.repo) == self.before

    async def ensure(self, path: str | None = None, branch: str = BRANCH) -> wt.Worktree:
        start = self.base
        return await wt.ensure_worktree(
            str(self.repo), self.root, path or self.path, branch, start, env=self.env
        )

    def records(self) -> list[str]:
        out = git(self.repo, "worktree", "list", "--porcelain", "-z").encode()
        return [e.path for e in parse_worktree_list(out)]

    def whole(self, path: str, branch: str, at: str) -> None:
        """``path`` is a checked-out worktree on ``branch`` at ``at``, listed once by git,
        clean, with no trash beside it."""
        assert self.records().count(path) == 1
        assert git(Path(path), "symbolic-ref", "HEAD").strip() == f"refs/heads/{branch}"
        assert rev(Path(path)) == at
        assert git(Path(path), "status", "--porcelain") == ""
        assert (Path(path) / "src" / "app.py").read_text() == "print('app')\n"
        assert not os.path.lexists(path + ".removing")


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


# --- names git can and cannot make ---------------------------------------------------------


async def test_git_refuses_a_branch_under_the_batch_branch_so_features_sit_beside_it(
    s: Setup, anyio_backend: str
) -> None:
    """SPEC 15's batchd/<id>/<index> cannot exist beside batchd/<id> ("cannot lock ref");
    the feature branch batchd/<id>-<index>-a<attempt> can, and sorts with its batch."""
    await s.ensure()
    done = subprocess.run(
        ["git", "branch", f"{BRANCH}/0", BRANCH], cwd=s.repo, capture_output=True, env=s.env
    )
    assert done.returncode != 0 and b"cannot lock ref" in done.stderr
    feature = await s.ensure(
        worktree_dir(s.root, feature_branch(BID, 0, 1)), feature_branch(BID, 0, 1)
    )
    assert feature.branch == f"{BRANCH}-0-a1" and feature.head == s.base
    listed = git(s.repo, "branch", "--format=%(refname:short)", "--list", "batchd/*").split()
    assert listed == [BRANCH, f"{BRANCH}-0-a1"]
    s.untouched()


# --- the record ------------------------------------------------------------------------------


async def test_the_record_is_the_real_top_level_the_branch_the_commit_and_the_subdir(
    s: Setup, tmp_path: Path, anyio_backend: str
) -> None:
    """From a subdirectory reached through a symlink: the repository's real top level,
    the branch checked out, its commit, and where the cwd is inside it."""
    link = tmp_path / "link"
    link.symlink_to(s.repo)
    record = await wt.record_repo(str(link / "src"), env=s.env)
    assert (record.repo, record.base_ref, record.base_commit, record.subdir) == (
        str(s.repo),
        "main",
        s.base,
        "src",
    )
    s.untouched()


async def test_a_detached_head_records_no_base_branch(s: Setup, anyio_backend: str) -> None:
    """A repository on a detached HEAD: base_ref is None, base_commit its commit."""
    git(s.repo, "stash", "push", "-q", "--include-untracked", "-m", "test setup")
    git(s.repo, "switch", "-q", "--detach", "HEAD~1")
    record = await wt.record_repo(str(s.repo), env=s.env)
    assert record.base_ref is None and record.base_commit == rev(s.repo, "main~1")
    made = await wt.ensure_worktree(
        str(s.repo), s.root, s.path, BRANCH, record.base_commit, env=s.env
    )
    assert made.head == record.base_commit


async def test_a_cwd_git_cannot_branch_from_is_refused_with_the_reason(
    s: Setup, tmp_path: Path, anyio_backend: str
) -> None:
    """Outside a work tree, a repository without a commit, and a subdirectory that no
    commit holds: each a Problem saying what and what to do."""
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(Problem, match="not inside a git work tree"):
        await wt.record_repo(str(plain), env=s.env)
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", ".")
    with pytest.raises(Problem, match=r"has no commit yet: .* make a first commit"):
        await wt.record_repo(str(empty), env=s.env)
    (s.repo / "newpkg").mkdir()
    (s.repo / "newpkg" / "x.py").write_text("")
    with pytest.raises(Problem, match=r"the directory newpkg of .* commit it"):
        await wt.record_repo(str(s.repo / "newpkg"), env=s.env)


def test_the_cheap_check_finds_a_work_tree_without_running_git(s: Setup, tmp_path: Path) -> None:
    """A .git directory or a linked worktree's .git file above the path is found; a plain
    directory is refused naming the directory and the fix."""
    git(s.repo, "worktree", "add", "-q", str(tmp_path / "linked"))
    assert worktreecheck.find_work_tree(str(s.repo / "src")) == str(s.repo)
    (tmp_path / "link").symlink_to(s.repo / "src")
    assert worktreecheck.find_work_tree(str(tmp_path / "link")) == str(s.repo)
    assert worktreecheck.find_work_tree(str(tmp_path / "linked")) == str(
        tmp_path.resolve() / "linked"
    )
    assert worktreecheck.work_tree_refusal(str(s.repo / "src"), "todo.txt") is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert worktreecheck.find_work_tree(str(plain)) is None
    why = worktreecheck.work_tree_refusal(str(plain), "todo.txt")
    assert why is not None and why.startswith("todo.txt: isolation = worktree needs")
    assert str(plain) in why and "--cwd" in why
    assert "does not exist" in (worktreecheck.work_tree_refusal(str(plain / "gone"), "x") or "")


# --- made, and made again ------------------------------------------------------------------


async def test_a_batch_worktree_is_made_once_and_reused(s: Setup, anyio_backend: str) -> None:
    """The batch branch at base_commit with its worktree; made again, the same worktree is
    reused and a commit on the branch is kept (never moved back)."""
    made = await s.ensure()
    assert made == wt.Worktree(s.path, BRANCH, s.base)
    s.whole(s.path, BRANCH, s.base)
    s.untouched()
    ahead = commit(Path(s.path), "feature.txt", "done\n")
    again = await s.ensure()
    assert again.head == ahead and rev(s.repo, BRANCH) == ahead
    s.untouched()


HALF_MADE_STATES = [
    "dir_only",
    "branch_only",
    "branch_ahead",
    "stale_record",
    "locked_half",
    "trash",
    "holder",
]


@pytest.mark.parametrize("state", HALF_MADE_STATES)
async def test_a_half_made_worktree_is_made_whole(
    s: Setup, tmp_path: Path, state: str, anyio_backend: str
) -> None:
    """Each state a kill can leave (a directory but no branch, a branch but no worktree, a
    record whose directory is gone, git's "initializing" lock over a half checkout, the
    trash of a removal, the branch held by a stale record elsewhere) ends whole; a branch
    that exists keeps its commit (an agent's commit is never dropped)."""
    if state == "dir_only":
        os.makedirs(os.path.join(s.path, "src"))
        Path(s.path, "src", "partial").write_text("x")
    elif state in ("branch_only", "branch_ahead"):
        tip = s.base
        if state == "branch_ahead":
            tip = git(s.repo, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "agent").strip()
        git(s.repo, "branch", BRANCH, tip)
    elif state in ("stale_record", "locked_half", "trash"):
        git(s.repo, "worktree", "add", "-q", "-b", BRANCH, s.path, s.base)
        if state == "stale_record":
            subprocess.run(["rm", "-rf", s.path], check=True)
        elif state == "locked_half":
            (Path(ws.git_dir_of(s.path) or "") / "locked").write_text(HALF_MADE)
            os.unlink(os.path.join(s.path, "README"))
            Path(s.path, "src", "app.py").write_text("half written")
        else:
            os.rename(s.path, s.path + ".removing")
    else:
        elsewhere = tmp_path / "elsewhere"
        git(s.repo, "worktree", "add", "-q", "-b", BRANCH, str(elsewhere), s.base)
        subprocess.run(["rm", "-rf", str(elsewhere)], check=True)
    at = rev(s.repo, BRANCH) if state.startswith("branch_") else s.base
    made = await s.ensure()
    assert made.head == at
    s.whole(s.path, BRANCH, at)
    assert s.records() == [str(s.repo), s.path]
    s.untouched()


async def test_a_failing_post_checkout_hook_of_the_user_leaves_a_whole_worktree(
    s: Setup, anyio_backend: str
) -> None:
    """The repository's hooks run as for the user; git reports the hook's failure, but
    the worktree it made is whole, so it is used."""
    hook = s.repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\necho 'hook says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    made = await s.ensure()
    assert made == wt.Worktree(s.path, BRANCH, s.base)
    s.whole(s.path, BRANCH, s.base)
    s.untouched()


async def test_what_batchd_did_not_make_is_never_cleared(s: Setup, anyio_backend: str) -> None:
    """The batch branch checked out in the user's own worktree, and batchd's worktree
    switched to another branch by hand: a Problem, nothing deleted."""
    user_wt = s.path.replace("/state/worktrees/", "/")
    git(s.repo, "worktree", "add", "-q", "-b", BRANCH, user_wt, s.base)
    with pytest.raises(Problem, match=f"checked out in {user_wt}, not in batchd's"):
        await s.ensure()
    assert Path(user_wt, "README").exists() and not os.path.lexists(s.path)
    git(s.repo, "worktree", "remove", user_wt)
    await s.ensure()
    git(Path(s.path), "switch", "-q", "-c", "mine")
    s.before = snapshot(s.repo)  # the user made the branch "mine"
    with pytest.raises(Problem, match="is on mine, not on batchd/"):
        await s.ensure()
    assert Path(s.path, "README").exists()
    s.untouched()


SLOW_FILTER = "touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; cat"
ENSURE_CHILD = """
import sys, anyio
from batchd import worktree
repo, root, path, branch, start = sys.argv[1:6]
anyio.run(lambda: worktree.ensure_worktree(repo, root, path, branch, start))
"""


async def test_a_creation_killed_with_its_git_left_running_is_finished_after_it_ends(
    s: Setup, tmp_path: Path, anyio_backend: str
) -> None:
    """A batchd killed -9 while `git worktree add` checks out (held in a smudge filter):
    its git runs on in its own session. The next start waits for that git (refusing at
    its time limit while it runs), then finds the worktree whole, or makes it so."""
    (s.repo / ".gitattributes").write_text("*.py filter=slow\n")
    git(s.repo, "add", ".gitattributes")
    git(s.repo, "commit", "-q", "-m", "attributes", "--", ".gitattributes")  # the user's
    s.base, s.before = rev(s.repo), snapshot(s.repo)
    started, release = tmp_path / "started", tmp_path / "release"
    env = {
        **s.env,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "filter.slow.smudge",
        "GIT_CONFIG_VALUE_0": SLOW_FILTER.format(started=started, release=release),
        "PYTHONPATH": str(REPO),
    }
    args = [str(s.repo), s.root, s.path, BRANCH, s.base]
    with killed_midway(ENSURE_CHILD, args, env, started, release):
        left = ws.busy(s.path)
        assert left and all(alive(p) for p in left)  # its git lives on
        with pytest.raises(Problem, match=r"still work in batchd's worktree .* resume"):
            await wt.ensure_worktree(
                str(s.repo), s.root, s.path, BRANCH, s.base, env=s.env, timeout=1.0
            )
        assert git(s.repo, "worktree", "list").count(s.path) == 1
        release.write_text("")
        made = await s.ensure()
    assert made.head == s.base
    poll(lambda: not ws.busy(s.path), 30, "the earlier git to end", lambda: "")
    s.whole(s.path, BRANCH, s.base)
    s.untouched()


# --- settling and removal ------------------------------------------------------------------


async def test_a_stale_index_lock_is_removed_only_in_batchds_idle_worktree(
    s: Setup, anyio_backend: str
) -> None:
    """A lock a killed git left in batchd's worktree goes when nothing works there; while
    a process works there it stays (refused at the time limit); the user's own lock is
    never touched."""
    await s.ensure()
    lock = Path(ws.git_dir_of(s.path) or "", "index.lock")
    lock.write_text("")
    sleeper = subprocess.Popen(["sleep", "600"], cwd=s.path)
    try:
        poll(lambda: ws.busy(s.path), 10, "the process in the worktree", lambda: "")
        with pytest.raises(Problem, match=f"processes \\[{sleeper.pid}\\] still work"):
            await ws.settle(s.root, s.path, timeout=0.5)
        assert lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert await ws.settle(s.root, s.path) is True and not lock.exists()
    assert await ws.settle(s.root, s.path) is False
    user_lock = s.repo / ".git" / "index.lock"
    user_lock.write_text("")
    with pytest.raises(Problem, match="is not a worktree of batchd"):
        await ws.settle(s.root, str(s.repo))
    assert user_lock.exists()
    user_lock.unlink()
    s.untouched()


async def test_a_clean_worktree_is_removed_and_its_branch_stays(
    s: Setup, anyio_backend: str
) -> None:
    """Removal deletes the directory and git's record, never the branch and its commits;
    repeated, it is a no-op."""
    await s.ensure()
    done = commit(Path(s.path), "result.txt", "the batch's work\n")
    assert await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env) == wt.Removed(s.path)
    assert not os.path.lexists(s.path) and s.records() == [str(s.repo)]
    assert rev(s.repo, BRANCH) == done
    assert await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env) == wt.Removed(s.path)
    assert os.listdir(s.root) == []
    s.untouched()


async def test_a_worktree_with_uncommitted_changes_is_kept_until_discarded(
    s: Setup, anyio_backend: str
) -> None:
    """Changes no commit holds (an edit, a new file) keep the worktree, naming them; an
    ignored build output does not; ``discard`` (prune) removes it."""
    await s.ensure()
    Path(s.path, "README").write_text("edited by the agent\n")
    Path(s.path, "new.py").write_text("x = 1\n")
    kept = await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env)
    assert kept == wt.Kept(s.path, "2 changed files no commit holds", ("README", "new.py"))
    assert Path(s.path, "new.py").exists()
    git(s.repo, "worktree", "lock", "--reason", "keep it", s.path)
    assert await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env) == wt.Kept(
        s.path, "it is locked (keep it)"
    )
    gone = await wt.remove_worktree(str(s.repo), s.root, s.path, discard=True, env=s.env)
    assert gone == wt.Removed(s.path) and s.records() == [str(s.repo)]
    s.untouched()


async def test_a_worktree_git_no_longer_lists_is_kept(s: Setup, anyio_backend: str) -> None:
    """Someone deleted git's record of batchd's worktree: its files may hold work, so it
    is kept with the reason until prune discards it."""
    await s.ensure()
    Path(s.path, "work.txt").write_text("an agent's work\n")
    subprocess.run(["rm", "-rf", ws.git_dir_of(s.path) or ""], check=True)
    kept = await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env)
    assert kept == wt.Kept(s.path, "git's records do not list it; look at it, then prune")
    assert Path(s.path, "work.txt").exists()
    gone = await wt.remove_worktree(str(s.repo), s.root, s.path, discard=True, env=s.env)
    assert gone == wt.Removed(s.path) and os.listdir(s.root) == []
    s.untouched()


async def test_an_interrupted_removal_is_finished(s: Setup, anyio_backend: str) -> None:
    """A kill after the rename (the trash and git's record left) or after the record went
    (only the trash left): removal again finishes it, nothing kept by mistake."""
    await s.ensure()
    Path(s.path, "README").unlink()  # half deleted: it must not look like a change
    os.rename(s.path, s.path + ".removing")
    assert await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env) == wt.Removed(s.path)
    assert os.listdir(s.root) == [] and s.records() == [str(s.repo)]
    os.makedirs(s.path + ".removing/deep/er")
    assert await wt.remove_worktree(str(s.repo), s.root, s.path, env=s.env) == wt.Removed(s.path)
    assert os.listdir(s.root) == []
    s.untouched()


async def test_only_batchds_stale_records_are_forgotten(
    s: Setup, tmp_path: Path, anyio_backend: str
) -> None:
    """Like git worktree prune, but a stale record of the user's own (a worktree on a disk
    not mounted now) stays: only records under worktree.dir go."""
    await s.ensure()
    users = tmp_path / "usb" / "wt"
    git(s.repo, "worktree", "add", "-q", "-b", "usb", str(users))
    s.before = snapshot(s.repo)
    subprocess.run(["rm", "-rf", s.path, str(users)], check=True)
    forgotten = await wt.forget_stale(str(s.repo), s.root, env=s.env)
    assert forgotten == [s.path]
    assert s.records() == [str(s.repo), str(users)]
    assert await wt.forget_stale(str(s.repo), s.root, env=s.env) == []
    s.untouched()


async def test_removal_refuses_a_directory_that_is_not_batchds(
    s: Setup, tmp_path: Path, anyio_backend: str
) -> None:
    """A path outside worktree.dir (the user's checkout, a typo) is never removed."""
    for path in (str(s.repo), str(tmp_path), s.root):
        with pytest.raises(Problem, match="is not a worktree of batchd"):
            await wt.remove_worktree(str(s.repo), s.root, path, discard=True, env=s.env)
    s.untouched()
    assert await anyio.to_thread.run_sync(os.path.isdir, s.root)
