"""The git evidence of an attempt (SPEC 14): parsers fed real git output, and the IO layer
run against repositories the tests make (real git; a fake ``git`` only to test the time limit)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from batchd import gitinfo
from batchd.model import GitEvidence
from tests.harness import alive

IDENTITY = ("-c", "user.name=Test Agent", "-c", "user.email=agent@example.invalid")
# The tests' own git calls ignore the machine's global and system config.
SETUP_ENV = {
    **gitinfo.git_env(os.environ),
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, check: bool = True) -> bytes:
    """Run real git in ``repo`` (test setup) and return its stdout."""
    done = subprocess.run(
        ["git", *IDENTITY, *args], cwd=repo, env=SETUP_ENV, capture_output=True, check=check
    )
    return done.stdout


def make_repo(path: Path, commits: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main", ".")
    for i in range(commits):
        (path / f"f{i}.txt").write_text(f"line {i}\n")
        git(path, "add", ".")
        git(path, "commit", "-q", "-m", f"commit {i}")
    return path


def commit_file(repo: Path, name: str, text: str, message: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)


def rev(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").decode().strip()


# --- the parsers, on real output --------------------------------------------------------


def test_the_head_is_read_from_rev_parse_and_an_unborn_head_is_none(tmp_path: Path) -> None:
    """``rev-parse --verify -q HEAD`` gives the commit id; a repository without a commit
    gives nothing, which reads as None."""
    repo = make_repo(tmp_path / "r")
    out = git(repo, "rev-parse", "--verify", "-q", "HEAD")
    assert gitinfo.parse_head(out) == out.decode().strip() and len(out.strip()) == 40
    empty = make_repo(tmp_path / "e", commits=0)
    assert (
        gitinfo.parse_head(git(empty, "rev-parse", "--verify", "-q", "HEAD", check=False)) is None
    )
    assert gitinfo.parse_head(b"fatal: not a git repository\n") is None


def test_commits_and_their_subjects_are_counted_newest_first_and_sanitised(tmp_path: Path) -> None:
    """``rev-list --count`` and ``log --format=%s`` of a range: 25 commits count 25, the
    subjects are the newest 20, with escape sequences and secrets taken out."""
    repo = make_repo(tmp_path / "r")
    before = rev(repo)
    for i in range(24):
        commit_file(repo, "n.txt", f"{i}\n", f"step {i} | done")
    commit_file(
        repo, "n.txt", "last\n", "\x1b[31mred\x1b[0m token ghp_abcdefghijklmnopqrstuvwxyz0123"
    )
    span = f"{before}..{rev(repo)}"
    assert gitinfo.parse_count(git(repo, "rev-list", "--count", span)) == 25
    subjects = gitinfo.parse_subjects(git(repo, "log", "-n20", "--format=%s", span))
    assert len(subjects) == 20
    assert subjects[0] == "red token [REDACTED]"
    assert subjects[1:3] == ["step 23 | done", "step 22 | done"]


def test_numstat_counts_files_and_lines_committed_and_not_together(tmp_path: Path) -> None:
    """``diff --numstat BASE`` against the work tree: a commit, an uncommitted edit, a
    deleted file and a binary file are all counted; binary files have no lines."""
    repo = make_repo(tmp_path / "r", commits=2)
    base = rev(repo)
    commit_file(repo, "new.py", "a\nb\nc\n", "add new.py")
    (repo / "f0.txt").write_text("changed\nand more\n")  # 1 line out, 2 in, not committed
    (repo / "f1.txt").unlink()  # 1 line out
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02")
    git(repo, "add", "blob.bin")
    out = git(repo, "diff", "--numstat", "--no-ext-diff", "--no-textconv", base, "--")
    assert gitinfo.parse_numstat(out) == gitinfo.DiffStat(files=4, insertions=5, deletions=2)
    assert gitinfo.parse_numstat(b"") == gitinfo.DiffStat(0, 0, 0)


def test_status_says_dirty_and_lists_untracked_files_from_the_top(tmp_path: Path) -> None:
    """``status --porcelain=v1 -z``: a clean tree is not dirty; an untracked file (in a
    subdirectory too, a name with a space) is listed relative to the top; an edit is dirty."""
    repo = make_repo(tmp_path / "r")
    args = ("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    assert gitinfo.parse_status(git(repo, *args)) == gitinfo.TreeStatus(False, ())
    (repo / "sub").mkdir()
    (repo / "sub" / "a b.txt").write_text("x\n")
    (repo / "f0.txt").write_text("edited\n")
    status = gitinfo.parse_status(git(repo / "sub", *args))
    assert status == gitinfo.TreeStatus(True, ("sub/a b.txt",))
    (repo / "sub" / "a b.txt").unlink()
    assert gitinfo.parse_status(git(repo, *args)) == gitinfo.TreeStatus(True, ())


@pytest.mark.parametrize(
    "data",
    [b"", b"one", b"one\n", b"one\ntwo", b"a\n\n\nb\n", b"\x00binary\n", "ünïcode\n".encode()],
)
def test_lines_of_a_new_file_are_counted_as_git_counts_them(tmp_path: Path, data: bytes) -> None:
    """``count_lines`` agrees with ``git diff --numstat`` of the same new file (a binary
    file, which git shows as ``-``, counts 0)."""
    path = tmp_path / "new"
    path.write_bytes(data)
    out = git(tmp_path, "diff", "--no-index", "--numstat", os.devnull, str(path), check=False)
    added = out.split(b"\t")[0] if out else b"0"
    assert gitinfo.count_lines(data) == (int(added) if added.isdigit() else 0)


@pytest.mark.parametrize(
    ("ev", "nothing"),
    [
        (GitEvidence(head_before="a" * 40, head_after="a" * 40), True),
        (GitEvidence(head_before=None, head_after=None), True),
        (GitEvidence(head_before="a" * 40, head_after="b" * 40, commits=1), False),
        (
            GitEvidence(head_before="a" * 40, head_after="a" * 40, dirty=True, files_changed=1),
            False,
        ),
        (GitEvidence(head_before="a" * 40, head_after="b" * 40), False),  # a reset is a change
    ],
)
def test_changed_nothing_means_no_commit_and_no_change(ev: GitEvidence, nothing: bool) -> None:
    """``verify.require_change``: the same head, no commit and a clean tree."""
    assert gitinfo.changed_nothing(ev) is nothing


def test_the_environment_of_git_points_nowhere_else() -> None:
    """GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE (set by a hook, say) never reach git."""
    env = gitinfo.git_env(
        {"PATH": "/bin", "GIT_DIR": "/x", "GIT_WORK_TREE": "/y", "GIT_INDEX_FILE": "/z", "A": "1"}
    )
    assert env["PATH"] == "/bin" and env["A"] == "1" and env["GIT_OPTIONAL_LOCKS"] == "0"
    assert not {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"} & env.keys()


# --- the IO layer, on real repositories ----------------------------------------------------


@pytest.mark.anyio
async def test_evidence_of_an_attempt_that_committed(tmp_path: Path, anyio_backend: str) -> None:
    """Two commits after ``head_before``: both counted, subjects newest first, their lines."""
    repo = make_repo(tmp_path / "r")
    before = await gitinfo.head(str(repo))
    assert before == rev(repo)
    commit_file(repo, "a.py", "1\n2\n", "add a")
    commit_file(repo, "f0.txt", "new\n", "rewrite f0")
    ev = await gitinfo.evidence(str(repo), before)
    assert ev == GitEvidence(
        head_before=before,
        head_after=rev(repo),
        commits=2,
        subjects=["rewrite f0", "add a"],
        files_changed=2,
        insertions=3,
        deletions=1,
        dirty=False,
    )
    assert not gitinfo.changed_nothing(ev)


@pytest.mark.anyio
async def test_evidence_counts_an_uncommitted_change_and_an_untracked_file(
    tmp_path: Path, anyio_backend: str
) -> None:
    """No commit, but an edited file and a new untracked one (lines counted, from a
    subdirectory cwd too): dirty, and both files in the figures."""
    repo = make_repo(tmp_path / "r")
    before = rev(repo)
    (repo / "f0.txt").write_text("line 0\nline 1\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "new.py").write_text("a\nb\nc")
    (repo / "pkg" / "link").symlink_to("/etc/passwd")  # a link counts as a file, never read
    ev = await gitinfo.evidence(str(repo / "pkg"), before)
    assert ev is not None
    assert (ev.commits, ev.files_changed, ev.insertions, ev.deletions) == (0, 3, 4, 0)
    assert ev.dirty and ev.head_after == before and not gitinfo.changed_nothing(ev)


@pytest.mark.anyio
async def test_evidence_of_an_attempt_that_changed_nothing(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The same head and a clean tree: ``changed_nothing`` (an ignored file does not count)."""
    repo = make_repo(tmp_path / "r")
    commit_file(repo, ".gitignore", "*.log\n", "ignore logs")
    (repo / "agent.log").write_text("noise\n")
    before = await gitinfo.head(str(repo))
    ev = await gitinfo.evidence(str(repo), before)
    assert ev == GitEvidence(head_before=before, head_after=before)
    assert gitinfo.changed_nothing(ev)


@pytest.mark.anyio
async def test_a_first_commit_in_an_empty_repository_is_evidence(
    tmp_path: Path, anyio_backend: str
) -> None:
    """No head before (a new repository): the commits from the root and their lines count."""
    repo = make_repo(tmp_path / "r", commits=0)
    assert await gitinfo.head(str(repo)) is None and await gitinfo.in_work_tree(str(repo))
    commit_file(repo, "README", "hello\nworld\n", "first")
    ev = await gitinfo.evidence(str(repo), None)
    assert ev is not None and (ev.commits, ev.subjects, ev.insertions) == (1, ["first"], 2)
    untouched = await gitinfo.evidence(str(make_repo(tmp_path / "e", commits=0)), None)
    assert untouched == GitEvidence() and gitinfo.changed_nothing(untouched)


@pytest.mark.anyio
async def test_outside_a_repository_there_is_no_evidence(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Not a work tree (a plain directory, a missing one): None, False, None; no exception."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (tmp_path / "plain" / ".git").mkdir()  # an empty .git is not a repository
    assert await gitinfo.evidence(str(plain), None) is None
    assert not await gitinfo.in_work_tree(str(plain))
    assert await gitinfo.head(str(plain)) is None
    assert await gitinfo.evidence(str(tmp_path / "missing"), None) is None


@pytest.mark.anyio
async def test_git_variables_of_the_environment_are_ignored(
    tmp_path: Path, anyio_backend: str
) -> None:
    """GIT_DIR and GIT_WORK_TREE pointing at another repository (a hook set them) do not
    change whose evidence is read."""
    repo, other = make_repo(tmp_path / "r"), make_repo(tmp_path / "o", commits=3)
    env = {**os.environ, "GIT_DIR": str(other / ".git"), "GIT_WORK_TREE": str(other)}
    assert await gitinfo.head(str(repo), env=env) == rev(repo)
    ev = await gitinfo.evidence(str(repo), rev(repo), env=env)
    assert ev is not None and ev.head_after == rev(repo) and ev.commits == 0


@pytest.mark.anyio
async def test_a_head_before_that_is_not_a_commit_id_never_reaches_git(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A corrupted ``head_before`` (an option, say) gives no evidence instead of an argument."""
    repo = make_repo(tmp_path / "r")
    target = tmp_path / "written"
    assert await gitinfo.evidence(str(repo), f"--output={target}") is None
    assert not target.exists()


@pytest.mark.anyio
async def test_a_git_that_hangs_is_stopped_at_the_time_limit(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A ``git`` that never answers (a fake one on PATH) is killed with its group at the
    limit; the answer is None, and nothing of it is left running."""
    fake = tmp_path / "bin"
    fake.mkdir()
    pids = tmp_path / "pids"
    (fake / "git").write_text(
        f'#!/bin/sh\necho $$ >> "{pids}"\nsleep 600 &\necho $! >> "{pids}"\nwait\n'
    )
    (fake / "git").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    with anyio.fail_after(60):
        assert await gitinfo.evidence(str(tmp_path), None, timeout=3.0, env=env) is None
        assert await gitinfo.head(str(tmp_path), timeout=3.0, env=env) is None
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 4, started  # two calls, each a shell and its sleep
    assert not any(alive(p) for p in started)
