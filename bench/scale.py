"""The figures of the engine redesign and of Slurm, measured beside bench.py's (same run).

- ``floor``: batchd's own durability floor. A bare asyncio loop in this
  interpreter spawns the no-op runner, drains its stdout and stderr pipes into
  a per-attempt log file, and makes the same two durable state writes per
  feature as batchd (the same bytes: the state batchd would write at each
  step), nothing else. batchd's drain at one slot is compared with it. The
  same loop with the runner writing straight into the log file (no pipes: the
  cheapest spawn, but then no cap on the log and no tails to classify) is
  reported beside it.
- ``slots``: 1-second features over 4 cwds, wall time with ``queue.slots`` 1
  and 2, on the local engine.
- ``status_finished``: ``batchctl --json status`` with one batch, then with
  1,000 finished batches (status lists the unfinished and the 20 latest).
- ``slurm`` (root, slurm-wlm installed): submit-to-start latency on a private
  single-node cluster, and 16 two-second features over 8 batches (8 cwds) on
  it with 8 slots, against the same work on the local engine with 1 and 2.

Used by bench.py; standard library and the project only.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

Result = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent


def _state_writes(features: list[str]) -> list[bytes]:
    """The state.json bytes batchd writes per feature (after the start, after the outcome)
    for a batch of these no-op features, in order."""
    from batchd.batch import Batch, Settings, new_batch
    from batchd.classify import Verdict
    from batchd.launch import new_run_id
    from batchd.parse import ParsedBatch
    from batchd.stateenc import StateEncoder

    batch: Batch = new_batch(
        batch_id="batch-20260101-000000-000001",
        seq=1,
        parsed=ParsedBatch(features=features, name="bench-1"),
        features_file="bench-1.json",
        source_sha256="0" * 64,
        now=time.time(),
    )
    enc = StateEncoder()
    out = []
    done = Verdict("completed", tokens=0)
    for i in range(len(features)):
        now = time.time()
        run_id = new_run_id("f4f392d9cbb3-", batch, i, 1)  # a state key, as batchd's
        batch.begin(index=i, now=now, pid=20000 + i, pid_start_time=1598005, run_id=run_id)
        out.append(enc.encode(batch.state))
        batch.record(
            done,
            exit_code=0,
            consent=False,
            hint_s=None,
            settings=Settings(),
            now=now,
            rand=lambda: 0,
        )
        out.append(enc.encode(batch.state))
    return out


def floor(root: Path, features: list[str]) -> Result:
    """Features per second of the floor loops (see the module docstring).

    ``floor_fps``: the runner's stdout and stderr are pipes the loop drains into the
    attempt log, as batchd must (it caps the log and keeps the tails to classify the
    outcome). ``floor_direct_fps``: the runner writes into the log file itself, the
    cheapest possible spawn (informational).
    """
    from batchd.store import write_durable

    writes = _state_writes(features)
    n = len(features)

    async def drain(stream: asyncio.StreamReader, fd: int) -> None:
        while chunk := await stream.read(65536):
            os.write(fd, chunk)

    async def loop(bdir: Path, piped: bool) -> float:
        logs = bdir / "logs"
        logs.mkdir(mode=0o700, parents=True)
        start = time.perf_counter()
        for i in range(n):
            fd = os.open(logs / f"{i}.1.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            out: Any = subprocess.PIPE if piped else fd
            proc = await asyncio.create_subprocess_exec(
                "/bin/true",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            write_durable(bdir, "state.json", writes[2 * i])
            if piped:
                assert proc.stdout is not None and proc.stderr is not None
                await asyncio.gather(drain(proc.stdout, fd), drain(proc.stderr, fd))
            await proc.wait()
            os.close(fd)
            write_durable(bdir, "state.json", writes[2 * i + 1])
        return time.perf_counter() - start

    piped = asyncio.run(loop(root / "floor" / "piped", True))
    direct = asyncio.run(loop(root / "floor" / "direct", False))
    return {
        "floor_fps": round(n / piped, 1),
        "floor_direct_fps": round(n / direct, 1),
        "floor_n": n,
        "floor_bytes_last": len(writes[-1]),
    }


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


class Plain:
    """A batchd with a given config; batches dropped as requests with their own cwd."""

    def __init__(self, root: Path, env_base: dict[str, str], config: str, backend: str) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True)
        (root / "run").mkdir(mode=0o700)
        self.sock = root / "run" / "batchd.sock"
        self.spool = root / "spool"
        cfg = root / "config.toml"
        cfg.write_text(config)
        self.env = dict(
            env_base,
            BATCHD_CONFIG=str(cfg),
            BATCHD_SPOOL_DIR=str(self.spool),
            BATCHD_STATE_DIR=str(root / "state"),
            BATCHD_SOCKET=str(self.sock),
        )
        bindir = Path(sys.executable).parent
        self.batchctl = str(bindir / "batchctl")
        with open(root / "daemon.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(bindir / "batchd"), "--backend", backend],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        _wait(self._up, 60, "batchd to answer")
        self.n = 0

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError((self.root / "daemon.log").read_text()[-2000:])
        try:
            self.call("ping")
            return True
        except OSError:
            return False

    def call(self, cmd: str, **args: Any) -> Any:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(str(self.sock))
            s.sendall(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
            with s.makefile("rb") as f:
                reply = json.loads(f.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"batchd {cmd}: {reply}")
        return reply["result"]

    def drop(self, features: list[str], cwd: Path | None = None) -> None:
        self.n += 1
        self.spool.mkdir(mode=0o700, exist_ok=True)
        req = {"features": features, "name": f"b{self.n}", "cwd": str(cwd) if cwd else None}
        tmp = self.spool / f".b{self.n}.json.tmp"
        tmp.write_text(json.dumps(req))
        os.rename(tmp, self.spool / f"b{self.n}.json")

    def all_done(self, count: int) -> bool:
        st = self.call("status")
        unfinished = [
            b for b in st["batches"] if b["status"] not in ("completed", "failed", "cancelled")
        ]
        return st["finished_total"] >= count and not unfinished

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def _runner_toml(argv: list[str]) -> str:
    return f"command = {json.dumps(argv)}\n"


def timed_wall(
    root: Path,
    env: dict[str, str],
    backend: str,
    slots: int,
    batches: int,
    per: int,
    seconds: float,
    engine: str = "local",
    extra: str = "",
) -> float:
    """Wall seconds for `batches` batches (own cwd each) of `per` features of `seconds`."""
    config = (
        f'[queue]\nslots = {slots}\n[runner]\nengine = "{engine}"\n'
        + _runner_toml(["sleep", f"{seconds:g}"])
        + extra
    )
    d = Plain(root, env, config, backend)
    try:
        d.call("pause")
        for b in range(batches):
            cwd = root / f"repo{b}"
            cwd.mkdir()
            d.drop([f"f{b}-{i}" for i in range(per)], cwd)
        d.call("ping")
        _wait(lambda: len(d.call("list")["batches"]) == batches, 60, "batches accepted")
        start = time.perf_counter()
        d.call("resume", all=True)
        _wait(lambda: d.all_done(batches), 600, "all batches done")
        return time.perf_counter() - start
    finally:
        d.stop()


def slots(root: Path, env: dict[str, str], backend: str, quick: bool) -> Result:
    per = 1 if quick else 2
    one = timed_wall(root / "slots1", env, backend, 1, 4, per, 1.0)
    two = timed_wall(root / "slots2", env, backend, 2, 4, per, 1.0)
    return {
        "slots_features": 4 * per,
        "slots1_wall_s": round(one, 2),
        "slots2_wall_s": round(two, 2),
        "slots2_vs_slots1": round(two / one, 3),
    }


def _status_p50(d: Plain, samples: int) -> float:
    argv = [d.batchctl, "--json", "status"]
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        subprocess.run(argv, env=d.env, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def status_finished(
    root: Path, env: dict[str, str], backend: str, samples: int, n: int = 1000
) -> Result:
    """status p50 with one batch, then with n finished batches (1,000 in full mode)."""
    d = Plain(root, env, "[runner]\n" + _runner_toml(["/bin/true"]), backend)
    try:
        d.drop(["one"])
        d.call("ping")
        _wait(lambda: d.all_done(1), 60, "the first batch")
        one = _status_p50(d, samples)
        for i in range(n - 1):
            d.drop([f"f{i}"])
        d.call("ping")
        _wait(lambda: d.all_done(n), 600, f"{n} finished batches")
        many = _status_p50(d, samples)
        size = len(
            subprocess.run(
                [d.batchctl, "--json", "status"], env=d.env, capture_output=True, check=True
            ).stdout
        )
        return {
            "status_finished_n": n,
            "status_one_batch_p50_ms": round(one, 2),
            "status_1000_finished_p50_ms": round(many, 2),
            "status_finished_ratio": round(many / one, 3),
            "status_1000_finished_bytes": size,
        }
    finally:
        d.stop()


def _marks_over(marks: Path, i: int) -> bool:
    return marks.exists() and len(marks.read_text().split()) > i


def slurm(root: Path, env: dict[str, str], backend: str) -> Result | None:
    """Submit-to-start latency and the 16 x 2 s over 8 batches figure, on a private cluster."""
    sys.path.insert(0, str(REPO))
    from tests.slurm_cluster import start_cluster, unavailable

    if unavailable():
        return {"skipped": unavailable()}
    cluster = start_cluster()
    try:
        senv = {**env, **cluster.env}
        marks = root / "slurm-starts.txt"
        config = (
            '[queue]\nslots = 1\n[runner]\nengine = "slurm"\n'
            + _runner_toml(["sh", "-c", f"date +%s.%N >> '{marks}'"])
            + "[slurm]\npoll_interval = 0.5\n"
        )
        d = Plain(root / "latency", senv, config, backend)
        lat = []
        try:
            for i in range(6):
                d.drop([f"probe {i}"])
                dropped = time.time()
                d.call("ping")
                _wait(partial(_marks_over, marks, i), 60, "job start")
                lat.append((float(marks.read_text().split()[i]) - dropped) * 1000)
                _wait(partial(d.all_done, i + 1), 60, "job recorded")
        finally:
            d.stop()
        wall = timed_wall(
            root / "slurm8", senv, backend, 8, 8, 2, 2.0, "slurm", "[slurm]\npoll_interval = 0.5\n"
        )
        local1 = timed_wall(root / "local1", env, backend, 1, 8, 2, 2.0)
        local2 = timed_wall(root / "local2", env, backend, 2, 8, 2, 2.0)
        return {
            "submit_to_start_p50_ms": round(statistics.median(lat[1:]), 1),
            "slurm_slots8_wall_s": round(wall, 2),
            "local_slots1_wall_s": round(local1, 2),
            "local_slots2_wall_s": round(local2, 2),
        }
    finally:
        cluster.stop()
