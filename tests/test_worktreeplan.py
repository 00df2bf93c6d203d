"""The pure part of worktree batches (worktreeplan.py): names, directories, git's records
parsed, and the decisions (make a worktree whole, fast-forward the base) as tables."""

from __future__ import annotations

import pytest

from batchd.worktreeplan import (
    HALF_MADE,
    DirState,
    Forward,
    Problem,
    RepoRecord,
    Seen,
    Stay,
    WorktreeEntry,
    batch_branch,
    changed_paths,
    feature_branch,
    is_ours,
    merge_message,
    parse_worktree_list,
    plan_ensure,
    plan_forward,
    run_dir,
    worktree_dir,
)

BID = "batch-20261124-050653-123456"
A, B, C = "a" * 40, "b" * 40, "c" * 40
ROOT = "/state/worktrees"
PATH = f"{ROOT}/{BID}"
BRANCH = f"batchd/{BID}"


def test_branch_and_directory_names_sort_with_their_batch() -> None:
    """The batch branch is batchd/<id>; a feature attempt's is batchd/<id>-<index>-a<attempt>
    (beside the batch's, not under it), and each worktree directory is named after its
    branch under worktree.dir."""
    assert batch_branch(BID) == BRANCH
    assert feature_branch(BID, 3, 2) == f"batchd/{BID}-3-a2"
    names = sorted([feature_branch(BID, 1, 1), batch_branch(BID), "main", "batchd/other"])
    assert names[names.index(BRANCH) + 1] == feature_branch(BID, 1, 1)
    assert worktree_dir(ROOT, BRANCH) == PATH
    assert worktree_dir(ROOT, feature_branch(BID, 0, 1)) == f"{ROOT}/{BID}-0-a1"
    for bad in ("main", "batchd/a/b", "feature/x"):
        with pytest.raises(ValueError):
            worktree_dir(ROOT, bad)


@pytest.mark.parametrize(
    ("path", "ours"),
    [
        (PATH, True),
        (f"{PATH}-2-a1", True),
        (f"{PATH}.removing", True),
        (f"{ROOT}/", False),
        (f"{ROOT}/repo", False),
        (f"{ROOT}/sub/{BID}", False),
        (f"/home/user/repo/{BID}", False),
        (f"{ROOT}/batch-..", False),
    ],
)
def test_only_directories_batchd_names_under_its_root_are_its_own(path: str, ours: bool) -> None:
    """The guard before anything is deleted: a direct child of worktree.dir named batch-*."""
    assert is_ours(ROOT, path) is ours


@pytest.mark.parametrize(
    ("worktree", "subdir", "expected"),
    [
        (PATH, "", PATH),
        (PATH, "pkg", f"{PATH}/pkg"),
        (PATH, "pkg/sub/", f"{PATH}/pkg/sub"),
        (f"{PATH}-1-a1", "a b", f"{PATH}-1-a1/a b"),
    ],
)
def test_a_feature_runs_in_its_worktree_plus_the_batchs_subdirectory(
    worktree: str, subdir: str, expected: str
) -> None:
    """The batch's cwd was a subdirectory of its repository: its features run in the same
    subdirectory of the worktree."""
    assert run_dir(worktree, subdir) == expected


@pytest.mark.parametrize("subdir", ["/etc", "..", "pkg/../..", "./pkg"])
def test_a_subdirectory_that_leaves_the_worktree_is_refused(subdir: str) -> None:
    """A recorded subdir is never trusted to stay inside the worktree."""
    with pytest.raises(ValueError):
        run_dir(PATH, subdir)


def test_the_merge_message_names_the_feature_in_a_short_subject() -> None:
    """Subject: batch, index and the start of the feature text (one line, at most 72
    characters); body: the whole text, sanitised."""
    text = "Add a login page\nwith a form and a password reset link, in the style of the rest"
    msg = merge_message(BID, 4, text)
    subject, blank, body = msg.split("\n", 2)
    assert subject.startswith(f"batchd: feature 4 of {BID}: Add a login")
    assert len(subject) <= 72 and subject.endswith("...") and blank == ""
    assert body == " ".join(text.split()) + "\n"
    assert merge_message(BID, 0, "short").split("\n")[0] == f"batchd: feature 0 of {BID}: short"


REAL_LIST = (  # in the form of git 2.39 ``worktree list --porcelain -z`` (test_worktree reads live output)
    b"worktree /r\0HEAD " + A.encode() + b"\0branch refs/heads/main\0\0"
    b"worktree /w/two words\0HEAD " + B.encode() + b"\0branch refs/heads/batchd/x\0"
    b"locked initializing\0\0"
    b"worktree /w/gone\0HEAD " + C.encode() + b"\0detached\0prunable gitdir file points to "
    b"non-existent location\0\0"
    b"worktree /bare\0bare\0\0"
    b"worktree /w/l\0HEAD " + C.encode() + b"\0branch refs/heads/l\0locked\0\0"
)


def test_git_worktree_list_is_parsed_with_locks_and_stale_records() -> None:
    """Each record: path (spaces kept), head, branch or detached, lock reason ("" when
    none), why git would prune it, bare."""
    assert parse_worktree_list(REAL_LIST) == [
        WorktreeEntry("/r", A, "refs/heads/main"),
        WorktreeEntry("/w/two words", B, "refs/heads/batchd/x", locked=HALF_MADE),
        WorktreeEntry("/w/gone", C, None, prunable="gitdir file points to non-existent location"),
        WorktreeEntry("/bare", None, None, bare=True),
        WorktreeEntry("/w/l", C, "refs/heads/l", locked=""),
    ]
    assert parse_worktree_list(b"") == []


def test_changed_paths_are_every_entry_of_git_status() -> None:
    """Modified, staged, deleted and untracked paths all count; names keep their spaces."""
    out = b" M a.txt\0A  new file\0 D gone\0?? dir/x y\0"
    assert changed_paths(out) == ["a.txt", "new file", "gone", "dir/x y"]
    assert changed_paths(b"") == []


def entry(
    branch: str | None = BRANCH, locked: str | None = None, prunable: str | None = None
) -> WorktreeEntry:
    ref = None if branch is None else f"refs/heads/{branch}"
    return WorktreeEntry(PATH, A, ref, locked=locked, prunable=prunable)


HOLDER_GONE = WorktreeEntry("/old/x", A, f"refs/heads/{BRANCH}", prunable="gone")
HOLDER_LIVE = WorktreeEntry("/home/u/wt", A, f"refs/heads/{BRANCH}")


@pytest.mark.parametrize(
    ("entry_", "holder", "tip", "dir_", "steps"),
    [
        # Nothing yet; or the branch made and the kill came before the worktree.
        (None, None, None, "missing", ("add_new_branch",)),
        (None, None, B, "missing", ("add",)),
        # A directory without a record: debris or empty, cleared.
        (None, None, None, "debris", ("clear", "add_new_branch")),
        (None, None, B, "empty", ("clear", "add")),
        # Whole: reused.
        (entry(), None, A, "tree", ("reuse",)),
        # Half made (git's lock), its directory gone, or no .git in it.
        (entry(locked=HALF_MADE), None, A, "tree", ("clear", "add")),
        (entry(prunable="gone"), None, A, "missing", ("clear", "add")),
        (entry(), None, A, "debris", ("clear", "add")),
        # The branch held by a stale record elsewhere: that record is forgotten.
        (None, HOLDER_GONE, A, "missing", ("forget_holder", "add")),
        (entry(prunable="gone"), HOLDER_GONE, A, "missing", ("forget_holder", "clear", "add")),
    ],
)
def test_what_makes_a_worktree_whole(
    entry_: WorktreeEntry | None,
    holder: WorktreeEntry | None,
    tip: str | None,
    dir_: DirState,
    steps: tuple[str, ...],
) -> None:
    """Every state a killed creation or removal can leave has its steps to a whole
    worktree; an existing branch is checked out as it is, never made again."""
    seen = Seen(PATH, BRANCH, entry_, holder, tip, dir_)
    assert plan_ensure(seen) == steps


@pytest.mark.parametrize(
    ("entry_", "holder", "dir_", "words"),
    [
        (None, HOLDER_LIVE, "missing", "is checked out in /home/u/wt, not in batchd's"),
        (entry(locked="on a usb disk"), None, "tree", "is locked (on a usb disk)"),
        (entry("main"), None, "tree", "is on main, not on batchd/"),
        (entry(None), None, "tree", "is on a detached HEAD"),
        (None, None, "tree", "holds a work tree that git's records do not list"),
    ],
)
def test_what_batchd_did_not_make_is_left_with_the_reason(
    entry_: WorktreeEntry | None, holder: WorktreeEntry | None, dir_: DirState, words: str
) -> None:
    """A worktree switched, locked or checked out by someone else is never cleared: the
    refusal says what, where and what to do."""
    seen = Seen(PATH, BRANCH, entry_, holder, A, dir_)
    with pytest.raises(Problem, match="resume") as err:
        plan_ensure(seen)
    assert words in err.value.message


ON_MAIN = RepoRecord(repo="/r", base_ref="main", base_commit=A)


@pytest.mark.parametrize(
    ("record", "base_tip", "held", "ancestor", "expected"),
    [
        (ON_MAIN, A, (), True, Forward("main", A, C)),
        (ON_MAIN, B, (), True, Forward("main", B, C)),  # moved, but within the batch branch
        (ON_MAIN, C, (), True, Stay(f"main is already at {BRANCH} (cccccccccccc)", done=True)),
        (ON_MAIN, C, ("/r",), True, Stay(f"main is already at {BRANCH} (cccccccccccc)", True)),
        (
            ON_MAIN,
            A,
            ("/r",),
            True,
            Stay(
                "main is checked out in /r: batchd never moves a branch under a work tree; "
                f"there, run git merge --ff-only {BRANCH}"
            ),
        ),
        (
            ON_MAIN,
            B,
            (),
            False,
            Stay(
                "main moved from aaaaaaaaaaaa to bbbbbbbbbbbb while the batch ran and is not "
                f"an ancestor of {BRANCH}, so it cannot be fast-forwarded: merge {BRANCH} "
                f"into main yourself (git merge {BRANCH})"
            ),
        ),
        (
            ON_MAIN,
            None,
            (),
            False,
            Stay(f"the base branch main no longer exists; merge {BRANCH} where you want it"),
        ),
        (
            RepoRecord(repo="/r", base_ref=None, base_commit=A),
            None,
            (),
            False,
            Stay(
                "the batch began on a detached HEAD (aaaaaaaaaaaa): there is no base branch "
                f"to move; merge {BRANCH} where you want it"
            ),
        ),
    ],
)
def test_whether_the_base_may_be_fast_forwarded_and_why_not(
    record: RepoRecord,
    base_tip: str | None,
    held: tuple[str, ...],
    ancestor: bool,
    expected: Forward | Stay,
) -> None:
    """Only a base branch that exists, is checked out nowhere and is an ancestor of the
    batch branch moves; otherwise the reason in words, with what to do."""
    got = plan_forward(
        record=record,
        branch=BRANCH,
        base_tip=base_tip,
        batch_tip=C,
        checked_out_in=held,
        base_is_ancestor=ancestor,
    )
    assert got == expected
