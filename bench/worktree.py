#!/usr/bin/env python3
"""What a parallel worktree batch adds per feature in git (SPEC 15): making the attempt's
worktree, merging its branch, removing the worktree (and the merged branch).

    python bench/worktree.py                    # 12 features, a repository of 200 files
    python bench/worktree.py --features 50 --files 2000 --backend trio

In process, no daemon, real git in a temporary repository: the agent's part is one
commit per feature. Issue 22's goal is at most 150 ms of creating and merging per
feature. Prints the medians and the worst in milliseconds; exit 0 whatever they are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batchd import worktree, worktreemerge  # noqa: E402
from batchd.worktreeplan import (  # noqa: E402
    batch_branch,
    feature_branch,
    merge_message,
    worktree_dir,
)

BID = "batch-20261124-050653-123456"
ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def git(cwd: Path | str, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=ENV, capture_output=True, check=True)
    return done.stdout.decode().strip()


def make_repo(path: Path, files: int) -> str:
    path.mkdir()
    git(path, "init", "-q", "-b", "main", ".")
    for i in range(files):
        sub = path / f"pkg{i % 20}"
        sub.mkdir(exist_ok=True)
        (sub / f"m{i}.py").write_text(f"x = {i}\n" * 40)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "base")
    return git(path, "rev-parse", "HEAD")


async def run(features: int, files: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"create": [], "merge": [], "remove": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        base = make_repo(repo, files)
        root = worktree.prepare_root(str(Path(tmp) / "worktrees"))
        branch = batch_branch(BID)
        batch = worktree_dir(root, branch)
        await worktree.ensure_worktree(str(repo), root, batch, branch, base, env=ENV)
        for i in range(features):
            fb = feature_branch(BID, i, 1)
            t0 = time.perf_counter()
            tip = git(repo, "rev-parse", branch)
            made = await worktree.ensure_worktree(
                str(repo), root, worktree_dir(root, fb), fb, tip, env=ENV
            )
            t1 = time.perf_counter()
            Path(made.path, f"feature{i}.txt").write_text(f"feature {i}\n")
            git(made.path, "add", ".")
            git(made.path, "commit", "-q", "-m", f"feature {i}")
            t2 = time.perf_counter()
            msg = merge_message(BID, i, f"feature {i}")
            await worktreemerge.merge_feature(root, batch, fb, msg, env=ENV)
            t3 = time.perf_counter()
            await worktree.remove_worktree(str(repo), root, made.path, env=ENV)
            await worktreemerge.drop_merged_branch(str(repo), fb, branch, env=ENV)
            t4 = time.perf_counter()
            times["create"].append(t1 - t0)
            times["merge"].append(t3 - t2)
            times["remove"].append(t4 - t3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = ap.parse_args()
    times = anyio.run(run, args.features, args.files, backend=args.backend)
    both = [c + m for c, m in zip(times["create"], times["merge"], strict=True)]
    print(f"{args.features} features, {args.files} files, {args.backend}")
    for name, values in (*times.items(), ("create+merge", both)):
        med, worst = statistics.median(values) * 1000, max(values) * 1000
        print(f"{name:>13}: median {med:7.1f} ms   worst {worst:7.1f} ms")


if __name__ == "__main__":
    main()
