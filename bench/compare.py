#!/usr/bin/env python3
"""Compare the drain of batchd from two (or more) source trees, in turns, on one disk.

    git worktree add /tmp/base HEAD~1
    cd /tmp && /path/to/.venv/bin/python /path/to/bench/compare.py /tmp/base /path/to/checkout

One daemon per tree (``python -m batchd`` with ``PYTHONPATH`` = the tree; run it
from a directory outside the trees, or ``-m`` imports the current directory's
copy), the same no-op drain queued while paused and released, in alternating
order, ``--rounds`` times, with batchd's durability floor (``scale.floor``)
measured after each round. Prints, per tree, the daemon's CPU (utime + stime)
and wall time per feature and the drain / floor ratio of the medians: on a
machine whose disk drifts by the minute, only a comparison in turns says what
a change did.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import scale

import bench


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("trees", nargs="+", help="source trees (each with a batchd/ package)")
    ap.add_argument("-n", type=int, default=300, help="features per drain (300)")
    ap.add_argument("--rounds", type=int, default=6, help="drains per tree (6)")
    ap.add_argument("--dir", help="where the daemons' dirs go (default: the temp dir)")
    args = ap.parse_args()
    if any(Path(t).resolve() == Path.cwd() for t in args.trees):
        print("compare: run it from outside the trees (python -m imports the cwd)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="batchd-compare-", dir=args.dir))
    daemons = []
    try:
        for i, tree in enumerate(args.trees):
            os.environ["PYTHONPATH"] = str(Path(tree).resolve())
            argv = [sys.executable, "-m", "batchd"]
            mark = uuid.uuid4().hex
            d = bench.Daemon(root / f"d{i}", mark, "asyncio", ["/bin/true"], args.n + 10, argv)
            daemons.append(d)
        for d in daemons:
            d.drain(50, paused_first=True)  # warm: bytecode, first batch dir
        cpu: dict[int, list[float]] = {i: [] for i in range(len(daemons))}
        wall: dict[int, list[float]] = {i: [] for i in range(len(daemons))}
        floors = []
        order = list(range(len(daemons)))
        for k in range(args.rounds):
            for i in order if k % 2 == 0 else order[::-1]:
                d = daemons[i]
                d.call("pause")
                name, _ = d.drop(bench.features_for(args.n))
                d.wait_item(name, ("pending", "paused"))
                ticks = bench.cpu_ticks(d.pid)
                start = time.time()
                d.call("resume", all=True)
                done = d.wait_item(name, ("completed",), interval=0.25)
                secs = bench.parse_iso(done["updated_at"]) - start
                used = (bench.cpu_ticks(d.pid) - ticks) / os.sysconf("SC_CLK_TCK")
                cpu[i].append(used * 1000 / args.n)
                wall[i].append(secs * 1000 / args.n)
            fl = scale.floor(root / f"floor{k}", bench.features_for(args.n))
            floors.append(1000 / fl["floor_fps"])
        floor = statistics.median(floors)
        print(f"floor: {floor:.2f} ms per feature (median of {args.rounds})")
        for i, tree in enumerate(args.trees):
            c, w = statistics.median(cpu[i]), statistics.median(wall[i])
            print(f"{tree}: cpu {c:.2f} ms, wall {w:.2f} ms per feature; ", end="")
            print(f"drain/floor {floor / w:.3f}")
    finally:
        for d in daemons:
            d.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
