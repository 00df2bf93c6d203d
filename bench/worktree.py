#!/usr/bin/env python3
"""Parallel worktree batches (SPEC 15), measured: what git adds per feature, and the wall
time they save.

    python bench/worktree.py                    # 12 features, a repository of 200 files
    python bench/worktree.py --features 50 --files 2000 --backend trio
    python bench/worktree.py --no-daemon        # only the in-process git figures

1. In process, no daemon, real git in a temporary repository (the agent's part is one
   commit per feature): making the attempt's worktree, merging its branch, removing the
   worktree (and the merged branch). Issue 22's goal: at most 150 ms of creating and
   merging per feature. Medians and the worst, in milliseconds.
2. A real ``batchd``: ``--features`` one-second features (the runner sleeps 1 s, then
   commits a file of its own with real git) in one repository, as one plain batch (in
   the repository itself, one after another) and as a parallel worktree batch with
   ``queue.slots = 4``. Each batch is queued while the queue is paused; the clock runs
   from ``resume --all`` to the batch's last state write (its ``updated_at``: for the
   worktree batch, the record that its worktree is removed). Issue 22's goal: the
   parallel batch in at most 0.35 x the plain batch's wall time. Also the slot time per
   feature beyond the agent's own run (slots x wall - the attempts' durations, over the
   features): creating, merging, removing, the hooks and the state writes together.

Exit 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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
from batchd.model import parse_iso  # noqa: E402
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


# --- a real daemon -----------------------------------------------------------------------

AGENT = (
    'sleep 1; f="f$BATCHD_FEATURE_INDEX.txt"; echo "$BATCHD_FEATURE_INDEX" > "$f"; '
    'git add -- "$f" && git commit -q -m "feature $BATCHD_FEATURE_INDEX"'
)


def call(sock: Path, cmd: str, **args: object) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(sock))
        s.sendall(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        with s.makefile("rb") as f:
            reply: dict[str, object] = json.loads(f.readline())
    if not reply.get("ok"):
        raise RuntimeError(f"batchd {cmd}: {reply}")
    return reply


def timed_batch(
    tmp: Path, name: str, n: int, slots: int, worktrees: bool, backend: str
) -> dict[str, float]:
    """One batch of ``n`` one-second features in a fresh repository under a real batchd:
    its wall time from ``resume --all`` to its last state write, and the agents' time."""
    root = tmp / name
    root.mkdir()
    repo = root / "repo"
    make_repo(repo, 20)
    (root / "run").mkdir(mode=0o700)
    sock, spool, state = root / "run" / "batchd.sock", root / "spool", root / "state"
    (root / "config.toml").write_text(
        f"[queue]\nslots = {slots}\n[runner]\n"
        f"command = {json.dumps(['sh', '-c', AGENT])}\ncwd = {json.dumps(str(repo))}\n"
    )
    env = {
        **ENV,
        "BATCHD_CONFIG": str(root / "config.toml"),
        "BATCHD_SPOOL_DIR": str(spool),
        "BATCHD_STATE_DIR": str(state),
        "BATCHD_SOCKET": str(sock),
    }
    batchd = [sys.executable, "-m", "batchd", "--backend", backend]
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen(batchd, env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        wait(lambda: sock.exists() and _answers(sock), 60)
        call(sock, "pause", now=False)
        request = {"features": [f"feature {i}" for i in range(n)], "cwd": str(repo)}
        if worktrees:
            request.update(isolation="worktree", parallel=True)
        spool.joinpath(".b.json.tmp").write_text(json.dumps(request))
        os.rename(spool / ".b.json.tmp", spool / "b.json")
        call(sock, "ping")
        wait(lambda: bool(list(state.glob("batches/*/state.json"))), 30)
        [path] = state.glob("batches/*/state.json")
        started = time.time()
        call(sock, "resume", all=True)
        done = wait(lambda: _ended(path), 600)
    finally:
        proc.terminate()
        proc.wait(30)
    if done["status"] != "completed":
        raise RuntimeError(f"{name}: the batch ended {done['status']}: see {root}/daemon.log")
    agent = sum(a["duration_s"] for a in done["processing_history"])
    return {"wall_s": parse_iso(done["updated_at"]) - started, "agent_s": agent}


def _answers(sock: Path) -> bool:
    try:
        call(sock, "ping")
    except OSError:
        return False
    return True


def _ended(path: Path) -> dict[str, object] | None:
    """The batch's state once it finished and its worktrees' end is recorded."""
    try:
        st: dict[str, object] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    rec = st.get("git")
    over = rec is None or (isinstance(rec, dict) and rec["step"] in ("removed", "kept"))
    return st if st["status"] in ("completed", "failed", "cancelled") and over else None


def wait(pred: object, timeout: float) -> dict[str, object]:
    assert callable(pred)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got if isinstance(got, dict) else {}
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout} s")


def daemon_figures(features: int, backend: str) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_KEEP")) as tmp:
        plain = timed_batch(Path(tmp), "plain", features, 1, False, backend)
        par = timed_batch(Path(tmp), "parallel", features, 4, True, backend)
    ratio = par["wall_s"] / plain["wall_s"]
    slot_overhead = (4 * par["wall_s"] - par["agent_s"]) / features
    plain_overhead = (plain["wall_s"] - plain["agent_s"]) / features
    print(f"{features} one-second features in one repository, real batchd, {backend}")
    print(f"   plain batch: {plain['wall_s']:6.2f} s wall")
    print(
        f"parallel (4 slots, worktrees): {par['wall_s']:6.2f} s wall = {ratio:.2f} x (goal <= 0.35)"
    )
    ms = slot_overhead * 1000, plain_overhead * 1000
    print(
        f"  slot time per feature beyond the agent: parallel {ms[0]:.0f} ms, plain {ms[1]:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    ap.add_argument("--no-daemon", action="store_true", help="only the in-process git figures")
    args = ap.parse_args()
    times = anyio.run(run, args.features, args.files, backend=args.backend)
    both = [c + m for c, m in zip(times["create"], times["merge"], strict=True)]
    print(f"{args.features} features, {args.files} files, {args.backend}")
    for name, values in (*times.items(), ("create+merge", both)):
        med, worst = statistics.median(values) * 1000, max(values) * 1000
        print(f"{name:>13}: median {med:7.1f} ms   worst {worst:7.1f} ms")
    if not args.no_daemon:
        daemon_figures(args.features, args.backend)


if __name__ == "__main__":
    main()
