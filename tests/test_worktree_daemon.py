"""Worktree batches end to end (SPEC 15), in real repositories made by the tests and a real
daemon on both backends: sequential batches side by side on one repository, a parallel
batch merged feature by feature, conflicts retried from the new tip or kept, the base
moved or detached, kept worktrees until prune, and the refusal outside a work tree. The
user's checkout is compared bitwise before and after; the agent is the fake agent, which
commits with real git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.gitrepo import commit, git, rev, snapshot
from tests.harness import Daemon, agent_command, toml_list
from tests.worktree_setup import (
    ENV,
    MakeDaemon,
    Repo,
    agent_starts,
    submit,
    wait_settled,
    worktree_daemon,
)


def overlap(d_runs: list[dict[str, object]]) -> int:
    """The most agent runs alive at once, from the order of their start and end records."""
    live = top = 0
    for r in d_runs:
        live += 1 if r["event"] == "start" else -1 if r["event"] == "end" else 0
        top = max(top, live)
    return top


def test_two_sequential_batches_on_one_repository_run_side_by_side(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Two sequential worktree batches on one repository under two slots run at once (their
    first features meet at a barrier), each in its own worktree on its own branch, each
    feature on the commits of the one before; the worktrees go, the branches stay, and the
    user's checkout is bitwise untouched."""
    repo = Repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    gate.mkdir()
    d = worktree_daemon(make_daemon, slots=2)
    d.start()
    submit(d, "a.json", repo.path, [f"commit=a0.txt barrier={gate}:2", "commit=a1.txt"])
    submit(d, "b.json", repo.path, [f"commit=b0.txt barrier={gate}:2", "commit=b1.txt"])
    states = wait_settled(d, 2)
    base = rev(repo.path)
    for st, mine, other in ((states[0], "a", "b"), (states[1], "b", "a")):
        rec, h = st["git"], st["processing_history"]
        assert st["status"] == "completed" and rec["step"] == "removed"
        assert (rec["base_ref"], rec["base_commit"]) == ("main", base)
        assert rec["branch"] == f"batchd/{st['batch_id']}"
        files = set(repo.git("ls-tree", "--name-only", rec["branch"]).split())
        assert {f"{mine}0.txt", f"{mine}1.txt"} <= files and f"{other}0.txt" not in files
        log = repo.git("log", "--format=%s", f"main..{rec['branch']}").splitlines()
        assert log == ["feature 1 attempt 1", "feature 0 attempt 1"]
        assert h[1]["git"]["head_before"] == h[0]["git"]["head_after"]
        assert {a["worktree"] for a in h} == {rec["worktree"]}
    assert {r["cwd"] for r in agent_starts(d)} == {s["git"]["worktree"] for s in states}
    assert repo.worktrees() == [] and not any(Path(s["git"]["worktree"]).exists() for s in states)
    assert sorted(repo.branches()) == sorted(
        [*(s["git"]["branch"] for s in states), "main", "topic"]
    )
    repo.untouched()


def test_a_parallel_batch_of_6_under_3_slots_merges_every_feature_exactly_once(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Six features under three slots: three run at once (a barrier) and never more, each
    in its own worktree on its own branch from the batch branch's tip; each is merged into
    the batch branch exactly once, its worktree and its merged branch go; the user's
    checkout is bitwise untouched."""
    repo = Repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    gate.mkdir()
    d = worktree_daemon(make_daemon, slots=3)
    d.start()
    features = [f"commit=f{i}.txt barrier={gate}:3" for i in range(3)]
    features += [f"commit=f{i}.txt sleep=0.2" for i in range(3, 6)]
    submit(d, "p.json", repo.path, features, parallel=True)
    [st] = wait_settled(d)
    rec, bid = st["git"], st["batch_id"]
    assert st["status"] == "completed" and st["completed_features"] != []
    assert repo.merges(rec["branch"]) == Counter(range(6))
    assert {f"f{i}.txt" for i in range(6)} <= set(
        repo.git("ls-tree", "--name-only", rec["branch"]).split()
    )
    assert repo.agent_commits() == Counter((i, 1) for i in range(6))
    assert overlap(d.agent_runs()) == 3
    by_index = {a["feature_index"]: a for a in st["processing_history"]}
    for i, a in by_index.items():
        assert a["branch"] == f"batchd/{bid}-{i}-a1"
        assert a["worktree"] == str(Path(rec["worktree"]).with_name(f"{bid}-{i}-a1"))
    assert {r["cwd"] for r in agent_starts(d)} == {a["worktree"] for a in by_index.values()}
    assert [f["step"] for f in rec["features"]] == ["removed"] * 6
    assert sorted(repo.branches()) == [rec["branch"], "main", "topic"]
    assert repo.worktrees() == []
    repo.untouched()


def conflict_setup(
    make_daemon: MakeDaemon, tmp_path: Path, retries: int
) -> tuple[Repo, dict[str, object]]:
    """Two parallel features that write one file from one tip (they meet at a barrier):
    the second to be merged conflicts. The runner gets ``{last_error}``."""
    repo = Repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    gate.mkdir()
    d = worktree_daemon(
        make_daemon,
        slots=2,
        extra=f"max_per_feature = {retries}\n",
        runner=agent_command("{last_error}"),
    )
    d.start()
    features = [f"commit=shared.txt barrier={gate}:2 {w}" for w in ("left", "right")]
    submit(d, "c.json", repo.path, features, parallel=True)
    [st] = wait_settled(d)
    return repo, {"state": st, "runs": agent_starts(d), "daemon": d}


def test_a_conflict_is_retried_from_the_new_tip_and_resolved(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """The feature whose merge conflicts fails transient, its message naming the file; the
    retry gets that message as {last_error}, starts from the batch branch's new tip on a
    new branch, and merges; the first attempt's commit stays on its branch."""
    repo, got = conflict_setup(make_daemon, tmp_path, retries=2)
    st = got["state"]
    assert isinstance(st, dict)
    rec, bid = st["git"], st["batch_id"]
    assert st["status"] == "completed"
    failed = [a for a in st["processing_history"] if a["outcome"] == "failed"]
    assert len(failed) == 1
    loser = failed[0]["feature_index"]
    winner = 1 - loser
    message = failed[0]["error_message"]
    assert failed[0]["failure_type"] == "transient"
    assert (
        f"merging batchd/{bid}-{loser}-a1 into {rec['branch']} conflicts in 1 files: shared.txt"
        in message
    )
    retry = [
        a for a in st["processing_history"] if a["feature_index"] == loser and a["attempt"] == 2
    ]
    assert retry[0]["outcome"] == "completed" and retry[0]["branch"] == f"batchd/{bid}-{loser}-a2"
    winner_merge = repo.git("log", "--merges", "--format=%H %s", rec["branch"]).splitlines()
    tip_after_winner = next(
        line.split()[0] for line in winner_merge if f"feature {winner} of" in line
    )
    assert retry[0]["git"]["head_before"] == tip_after_winner
    runs = got["runs"]
    assert isinstance(runs, list)
    second = [r for r in runs if r["index"] == str(loser) and r["attempt"] == 2]
    assert second[0]["argv"][1] == message
    assert repo.merges(rec["branch"]) == Counter({0: 1, 1: 1})
    assert repo.git("show", f"{rec['branch']}:shared.txt").endswith("attempt 2\n")
    first = repo.git("log", "-1", "--format=%s", f"batchd/{bid}-{loser}-a1").strip()
    assert first == f"feature {loser} attempt 1"
    assert repo.agent_commits() == Counter({(0, 1): 1, (1, 1): 1, (loser, 2): 1})
    assert repo.worktrees() == []
    repo.untouched()


def test_a_conflict_that_stays_fails_the_feature_and_keeps_its_branch(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """With its retries used up, a conflicting feature fails (the batch fails); its branch
    stays with its commit, which is not in the batch branch; its worktree goes. batchctl
    retry runs it again, from the batch branch's tip in a worktree made again, and merges."""
    repo, got = conflict_setup(make_daemon, tmp_path, retries=0)
    st = got["state"]
    assert isinstance(st, dict)
    rec, bid = st["git"], st["batch_id"]
    assert st["status"] == "failed"
    [failed] = st["failed_features"]
    loser = failed["feature_index"]
    assert "conflicts in 1 files: shared.txt" in failed["error_message"]
    branch = f"batchd/{bid}-{loser}-a1"
    assert branch in repo.branches()
    assert repo.git("log", "-1", "--format=%s", branch).strip() == f"feature {loser} attempt 1"
    merged = subprocess.run(
        ["git", "-C", str(repo.path), "merge-base", "--is-ancestor", branch, rec["branch"]],
        env={**ENV, "PATH": "/usr/bin:/bin"},
    )
    assert merged.returncode == 1
    assert repo.merges(rec["branch"]) == Counter({1 - loser: 1})
    assert repo.worktrees() == [] and rec["step"] == "removed"
    repo.untouched()
    d = got["daemon"]
    assert isinstance(d, Daemon)
    assert d.ctl("retry", bid).returncode == 0  # run again: the batch's worktree is made again
    d.wait_for(lambda: wait_settled(d) and d.batch_states()[0]["status"] == "completed")
    rec = d.batch_states()[0]["git"]
    assert repo.merges(rec["branch"]) == Counter({0: 1, 1: 1})
    assert rec["step"] == "removed" and repo.worktrees() == []
    assert branch in repo.branches()  # the failed attempt's commit stays reachable
    repo.untouched()


def clean_repo(path: Path) -> Path:
    """A repository with nothing uncommitted: ``main`` with two commits."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main", ".")
    commit(path, "README", "hello\n", "first")
    commit(path, "src/app.py", "print('app')\n", "app")
    return path


def moved_main(repo: Path, name: str) -> str:
    """A commit on ``main`` made without touching any work tree (as a push would)."""
    tree = rev(repo, "main^{tree}")
    new = git(repo, "commit-tree", tree, "-p", "main", "-m", name).strip()
    git(repo, "update-ref", "refs/heads/main", new)
    return new


def test_a_base_that_moved_while_the_batch_waited_and_while_it_ran(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """The base is recorded when the first feature starts, not when the batch is queued:
    main moved while the batch waited, and the batch branches from the new main. With
    merge_into_base, a main that moved again while the batch ran is not moved: status and
    show say why."""
    repo = clean_repo(tmp_path / "repo")
    first, second = tmp_path / "first", tmp_path / "second"
    d = worktree_daemon(make_daemon, extra="[worktree]\nmerge_into_base = true\n")
    d.start()
    d.drop("hold.txt", [f"# batchd: cwd = {tmp_path}", f"wait={first}"])
    d.wait_for(lambda: len(agent_starts(d)) == 1, what="the first batch's run")
    submit(d, "w.json", repo, [f"commit=w.txt wait={second}"])
    d.wait_for(lambda: len(d.batch_states()) == 2, what="the worktree batch queued")
    waited = moved_main(repo, "moved while the batch waited")
    first.touch()
    d.wait_for(lambda: len(agent_starts(d)) == 2, what="the worktree batch's run")
    git(repo, "checkout", "-q", "--detach")
    ran = moved_main(repo, "moved while the batch ran")
    second.touch()
    st = wait_settled(d, 2)[1]
    rec = st["git"]
    assert (rec["base_ref"], rec["base_commit"]) == ("main", waited)
    assert rev(repo, f"{rec['branch']}~1") == waited
    assert rev(repo, "main") == ran
    why = f"main not moved: main moved from {waited[:12]} to {ran[:12]} while the batch ran"
    assert rec["forward"].startswith(why) and "git merge" in rec["forward"]
    item = next(b for b in d.status()["batches"] if b["batch_id"] == st["batch_id"])
    assert item["base_forward"] == rec["forward"]
    shown = d.ctl("show", st["batch_id"])
    assert "base: main not moved" in shown.stdout
    assert "not an ancestor" in d.stderr()


def test_merge_into_base_moves_a_base_checked_out_nowhere_and_never_a_checked_out_one(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """merge_into_base fast-forwards main when nobody has it checked out; the same batch on a
    repository with main checked out leaves main where it is and says why."""
    free = clean_repo(tmp_path / "free")
    held = Repo(tmp_path / "held")
    d = worktree_daemon(make_daemon, slots=2, extra="[worktree]\nmerge_into_base = true\n")
    gate = tmp_path / "gate"
    d.start()
    submit(d, "free.json", free, [f"commit=x.txt wait={gate}"])
    submit(d, "held.json", held.path, ["commit=y.txt"])
    d.wait_for(lambda: len(agent_starts(d)) == 2, what="both runs")
    git(free, "checkout", "-q", "--detach")
    gate.touch()
    a, b = wait_settled(d, 2)
    assert rev(free, "main") == rev(free, a["git"]["branch"])
    assert a["git"]["forward"].startswith("main fast-forwarded to " + a["git"]["branch"])
    assert b["git"]["forward"].startswith(f"main not moved: main is checked out in {held.path}")
    held.untouched()


def test_a_batch_begun_on_a_detached_head(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """A detached HEAD records no base branch: the batch branch starts at its commit, no
    branch outside batchd/ moves, merge_into_base says why, and on_batch_done gets
    BATCHD_REPO and BATCHD_BRANCH."""
    repo = Repo(tmp_path / "repo")
    git(repo.path, "checkout", "-q", "--detach")
    repo.before = snapshot(repo.path)
    out = tmp_path / "hook.out"
    hook = [
        "sh",
        "-c",
        'printf "%s\\n%s\\n%s\\n" "$BATCHD_REPO" "$BATCHD_BRANCH" "$PWD" > "$0.tmp" && mv "$0.tmp" "$0"',
    ]
    extra = f"[worktree]\nmerge_into_base = true\n[hooks]\non_batch_done = {toml_list([*hook, str(out)])}\n"
    d = worktree_daemon(make_daemon, extra=extra)
    d.start()
    submit(d, "d.json", repo.path, ["commit=d.txt"])
    [st] = wait_settled(d)
    rec = st["git"]
    assert (rec["base_ref"], rec["base_commit"]) == (None, rev(repo.path))
    assert "the batch began on a detached HEAD" in rec["forward"]
    d.wait_for(out.exists, what="the on_batch_done hook")
    assert out.read_text().splitlines()[:2] == [str(repo.path.resolve()), rec["branch"]]
    repo.untouched()


def test_a_worktree_with_uncommitted_changes_is_kept_and_shown_until_prune(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A batch whose agent left a change no commit holds keeps its worktree: show prints its
    path and the file; prune removes it (the change with it), the branch stays."""
    repo = Repo(tmp_path / "repo")
    d = worktree_daemon(make_daemon)
    d.start()
    submit(d, "k.json", repo.path, ["commit=one.txt", "dirty=notes.md"])
    [st] = wait_settled(d)
    rec = st["git"]
    assert st["status"] == "completed" and rec["step"] == "kept"
    assert rec["note"].startswith(f"worktree {rec['worktree']} kept: 1 changed files")
    assert "notes.md" in rec["note"] and Path(rec["worktree"], "notes.md").exists()
    shown = d.ctl("show", st["batch_id"])
    assert shown.returncode == 0 and f"kept: {rec['worktree']} ({rec['branch']})" in shown.stdout
    assert d.ctl("prune", "--older-than", "0").returncode == 0
    assert not Path(rec["worktree"]).exists() and repo.worktrees() == []
    assert rec["branch"] in repo.branches()
    assert repo.git("log", "-1", "--format=%s", rec["branch"]).strip() == "feature 0 attempt 1"
    repo.untouched()


def test_a_worktree_batch_outside_a_git_work_tree_is_refused(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Outside a git work tree, the spool rejects a worktree batch with the reason in its
    .error (a request, and a plain file whose cwd is runner.cwd), and no batch is made
    (batchctl's own refusal: tests/test_batchctl_choices.py)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    d = worktree_daemon(make_daemon)
    d.start()
    submit(d, "r.json", plain, ["one"])
    d.drop("f.txt", ["# batchd: isolation = worktree", "two"])
    rejected = d.spool / "rejected"
    d.wait_for(lambda: len(list(rejected.glob("*.error"))) == 2, what="two rejections")
    why = (rejected / "r.json.error").read_text()
    assert why.startswith(
        f"r.json: isolation = worktree needs the batch's cwd inside a git work tree, and {plain} is not"
    )
    assert "'# batchd: cwd = /path/to/repo' or --cwd" in why
    assert (
        (rejected / "f.txt.error")
        .read_text()
        .startswith(
            f"f.txt: isolation = worktree needs the batch's cwd inside a git work tree, and {d.workdir} is not"
        )
    )
    assert d.batch_states() == []


def test_status_show_and_list_give_each_running_features_worktree_and_branch(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """While two features of a parallel batch run (its cwd a subdirectory of the
    repository), status, show and watch name each one's worktree and branch and the agent
    runs in the worktree's subdirectory; list names the batch branch."""
    repo = Repo(tmp_path / "repo")
    gate = tmp_path / "gate"
    d = worktree_daemon(make_daemon, slots=2)
    d.start()
    submit(
        d,
        "s.json",
        repo.path / "src",
        [f"commit=a.txt wait={gate}", f"commit=b.txt wait={gate}"],
        parallel=True,
    )
    d.wait_for(lambda: len(agent_starts(d)) == 2, what="two runs")
    st = d.status()
    [batch] = d.batch_states()
    bid = batch["batch_id"]
    running = sorted(st["running"], key=lambda r: r["feature_index"])
    for r in running:
        i = r["feature_index"]
        assert r["branch"] == f"batchd/{bid}-{i}-a1"
        assert Path(r["worktree"]).name == f"{bid}-{i}-a1"
    assert {run["cwd"] for run in agent_starts(d)} == {
        str(Path(r["worktree"], "src")) for r in running
    }
    shown = d.ok("show", batch_id=bid)
    assert sorted(r["branch"] for r in shown["running_all"]) == [r["branch"] for r in running]
    human = d.ctl("show", bid).stdout
    assert all(f"in {r['worktree']} on {r['branch']}" in human for r in running)
    assert f"in {running[0]['worktree']} on {running[0]['branch']}" in d.ctl("status").stdout
    listed = d.ctl("--json", "list")
    item = json.loads(listed.stdout)["batches"][0]
    assert (item["branch"], item["isolation"], item["parallel"]) == (
        f"batchd/{bid}",
        "worktree",
        True,
    )
    assert f"branch batchd/{bid}" in d.ctl("list").stdout
    gate.touch()
    wait_settled(d)
    repo.untouched()


def test_cancelling_a_parallel_batch_stops_every_feature_and_removes_its_worktrees(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """cancel stops both running features of a parallel batch (interrupted), then the
    batch's worktrees go before on_batch_done runs with BATCHD_BRANCH; nothing is merged
    and the user's checkout is untouched."""
    repo = Repo(tmp_path / "repo")
    out = tmp_path / "hook.out"
    hook = [
        "sh",
        "-c",
        '{{ ls "$(dirname "$0")/d/state/worktrees"; echo "$BATCHD_BRANCH"; }} > "$0.tmp" && mv "$0.tmp" "$0"',
    ]
    d = worktree_daemon(
        make_daemon, slots=2, extra=f"[hooks]\non_batch_done = {toml_list([*hook, str(out)])}\n"
    )
    d.start()
    never = tmp_path / "never"
    submit(
        d,
        "c.json",
        repo.path,
        [f"commit=a.txt wait={never}", f"commit=b.txt wait={never}", "three"],
        parallel=True,
    )
    d.wait_for(lambda: len(agent_starts(d)) == 2, what="two runs")
    [st] = d.batch_states()
    assert d.ctl("cancel", st["batch_id"]).returncode == 0
    [st] = wait_settled(d)
    assert st["status"] == "cancelled"
    assert [a["outcome"] for a in st["processing_history"]] == ["interrupted", "interrupted"]
    assert d.live_runners() == []
    d.wait_for(out.exists, what="the on_batch_done hook")
    assert out.read_text().split() == [st["git"]["branch"]]  # no worktree was left by then
    assert repo.merges(st["git"]["branch"]) == Counter()
    assert repo.worktrees() == []
    repo.untouched()


def readme_pr_recipe() -> str:
    """The ``on_batch_done`` recipe of the README's worktree section, as written there."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Several features at once in one repository", 1)[1]
    start = section.index('on_batch_done = ["sh", "-c", """')
    return section[start : section.index('"""]', start) + 4]


def test_the_readme_recipe_pushes_the_batch_branch_and_opens_a_pull_request(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """The README's on_batch_done recipe, verbatim: the batch branch is pushed to origin
    (a real bare repository) and `gh pr create` (a fake at the edge: it records its argv
    and the body file) is run in the repository with --head batchd/<id> and the report."""
    repo = Repo(tmp_path / "repo")
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    repo.git("remote", "add", "origin", str(remote))
    repo.before = snapshot(repo.path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    calls = tmp_path / "gh.json"
    gh.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "body = open(sys.argv[sys.argv.index('--body-file') + 1]).read()\n"
        f"out = {{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'body': body}}\n"
        f"open({str(calls) + '.tmp'!r}, 'w').write(json.dumps(out))\n"
        f"os.rename({str(calls) + '.tmp'!r}, {str(calls)!r})\n"
    )
    gh.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    d = make_daemon(config=f"[hooks]\n{readme_pr_recipe()}\n", env=env)
    d.start()
    submit(d, "pr.json", repo.path, ["commit=pr.txt"])
    [st] = wait_settled(d)
    branch = st["git"]["branch"]
    d.wait_for(calls.exists, what="gh pr create")
    call = json.loads(calls.read_text())
    assert call["argv"][:4] == ["pr", "create", "--head", branch]
    assert call["argv"][4:6] == ["--title", f"batchd: {st['batch_id']}"]
    assert Path(call["cwd"]).resolve() == repo.path.resolve()
    assert st["batch_id"] in call["body"] and "completed" in call["body"]
    pushed = git(remote, "rev-parse", f"refs/heads/{branch}")
    assert pushed == repo.git("rev-parse", branch)
    # The push (the recipe's, not batchd's) made the remote-tracking ref: nothing else moved.
    repo.git("update-ref", "-d", f"refs/remotes/origin/{branch}")
    repo.untouched()
