"""A worktree batch's git record (worktreerecord.py): made at the first feature, moved only
as the table of worktreesteps allows, where each feature runs, what is left to remove; and
what the report says of it. Pure."""

from __future__ import annotations

import msgspec
import pytest

from batchd import report, reportmd, reportrender
from batchd.batch import Batch, new_batch
from batchd.model import BatchState, DaemonState, GitRecord
from batchd.parse import Options, ParsedBatch
from batchd.worktreeplan import Problem, RepoRecord
from batchd.worktreerecord import (
    Place,
    advance,
    feature,
    kept,
    leftovers,
    new_record,
    place,
    planned_dir,
    steps_of,
)
from batchd.worktreesteps import GitSteps

T0 = 1_800_000_000.0
BID = "batch-20261124-050653-123456"
ROOT = "/state/worktrees"
FOUND = RepoRecord(repo="/src/app", base_ref="main", base_commit="c" * 40, subdir="web")


def make(parallel: bool, n: int = 3) -> Batch:
    options = Options(isolation="worktree", parallel=parallel)
    parsed = ParsedBatch(features=[f"f{i}" for i in range(n)], name="w", options=options)
    return new_batch(
        batch_id=BID, seq=1, parsed=parsed, features_file="w.json", source_sha256="0" * 64, now=T0
    )


def test_the_record_names_the_batch_branch_and_its_worktree() -> None:
    """The first feature's record: what git found, the branch batchd/<id>, its worktree under
    worktree.dir; nothing made yet."""
    rec = new_record(FOUND, BID, ROOT)
    assert rec == GitRecord(
        repo="/src/app",
        base_ref="main",
        base_commit="c" * 40,
        subdir="web",
        branch=f"batchd/{BID}",
        worktree=f"{ROOT}/{BID}",
    )
    assert steps_of(rec) == GitSteps()


def test_feature_attempts_are_added_by_their_create_and_moved_by_the_table() -> None:
    """A feature attempt's entry appears with its create (branch and worktree named after
    the batch, the index and the attempt); an event the table refuses changes nothing."""
    rec = new_record(FOUND, BID, ROOT)
    with pytest.raises(Problem, match="create needs the batch's worktree ready"):
        advance(rec, "create", (0, 1))
    assert rec.features == []
    advance(rec, "create")
    advance(rec, "created")
    advance(rec, "create", (0, 1))
    entry = feature(rec, 0, 1)
    assert entry is not None
    assert (entry.branch, entry.worktree, entry.step) == (
        f"batchd/{BID}-0-a1",
        f"{ROOT}/{BID}-0-a1",
        "creating",
    )
    before = msgspec.structs.replace(rec, features=[msgspec.structs.replace(entry)])
    with pytest.raises(Problem, match="'merge' does not apply"):
        advance(rec, "merge", (0, 1))
    assert rec == before
    for event in ("created", "merge", "merged", "remove", "removed"):
        advance(rec, event, (0, 1))
    assert steps_of(rec) == GitSteps("ready", {(0, 1): "removed"})


def test_where_a_feature_runs_before_and_after_the_record() -> None:
    """Before anything is made, the scheduler's directory: the batch's worktree (sequential)
    or the attempt's (parallel); once made, the runner's cwd is it plus the subdirectory,
    and a record made under another worktree.dir keeps its own."""
    seq, par = make(False), make(True)
    assert planned_dir(seq.state, ROOT, 2, 1) == f"{ROOT}/{BID}"
    assert planned_dir(par.state, ROOT, 2, 3) == f"{ROOT}/{BID}-2-a3"
    assert planned_dir(par.state, ROOT) == f"{ROOT}/{BID}"
    assert place(seq.state, 0, 1) is None
    for b in (seq, par):
        b.state.git = new_record(FOUND, BID, "/old/root")
        advance(b.state.git, "create")
        advance(b.state.git, "created")
    assert planned_dir(par.state, ROOT, 2, 3) == f"/old/root/{BID}-2-a3"
    assert place(seq.state, 1, 1) == Place(
        f"/old/root/{BID}", f"batchd/{BID}", f"/old/root/{BID}/web"
    )
    assert place(par.state, 1, 1) is None
    assert par.state.git is not None
    advance(par.state.git, "create", (1, 1))
    assert place(par.state, 1, 1) == Place(
        f"/old/root/{BID}-1-a1", f"batchd/{BID}-1-a1", f"/old/root/{BID}-1-a1/web"
    )


def test_leftovers_are_the_worktrees_no_attempt_will_use_again() -> None:
    """Removed: a settled feature's, an earlier attempt's; kept: the one the next attempt
    reuses (an interrupted run), one in its merge, one removed or kept already."""
    rec = new_record(FOUND, BID, ROOT)
    advance(rec, "create")
    advance(rec, "created")
    for key in ((0, 1), (1, 1), (1, 2), (2, 1), (3, 1), (4, 1)):
        advance(rec, "create", key)
        advance(rec, "created", key)
    advance(rec, "merge", (2, 1))
    advance(rec, "remove", (4, 1))
    advance(rec, "kept", (4, 1))
    numbers = {0: 1, 1: 2, 2: 1, 3: 1, 4: 2}
    got = leftovers(rec, numbers.__getitem__, settled={0})
    assert [(f.feature_index, f.attempt) for f in got] == [(0, 1), (1, 1)]
    rec.features[-1].note = "worktree /x kept: 1 changed files no commit holds"
    assert kept(rec) == [(f"{ROOT}/{BID}-4-a1", f"batchd/{BID}-4-a1", rec.features[-1].note)]


def test_the_report_names_the_branch_what_became_of_the_base_and_kept_worktrees() -> None:
    """A worktree batch's report says its branch and base, merge_into_base's words and the
    worktrees kept until prune, in text and Markdown; other batches' reports do not change."""
    b = make(False, n=1)
    state: BatchState = b.state
    state.git = new_record(FOUND, BID, ROOT)
    state.git.step = "kept"
    state.git.forward = "main not moved: main is checked out in /src/app: ..."
    built = report.build([b], queue=DaemonState(), log_path=lambda *_: "/log", now=T0 + 5)
    [item] = built["batches"]
    note = item.get("git_note") or ""
    assert item.get("branch") == f"batchd/{BID}"
    assert note.startswith(f"branch batchd/{BID} from main at {'c' * 12}; main not moved: ")
    assert note.endswith(f"kept (uncommitted changes; 'batchctl prune' removes): {ROOT}/{BID}")
    assert "main not moved" in reportrender.render_text(built, width=100)
    assert "main not moved" in reportmd.render_markdown(built)
    plain = make(False, n=1)
    plain.state.isolation = None
    [other] = report.build([plain], queue=DaemonState(), log_path=lambda *_: "/log", now=T0 + 5)[
        "batches"
    ]
    assert "branch" not in other and "git_note" not in other
