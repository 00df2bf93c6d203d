#!/usr/bin/env python3
"""batchd benchmark, side by side with task-spooler (tsp) and nq. Method: bench/README.md.

    python bench/bench.py --quick                 # under 2 minutes; what CI runs
    python bench/bench.py --json results.json     # full mode
    python bench/bench.py --profile daemon.prof   # cProfile of the daemon over one drain

Standard library and the project only. Exit 0 when the measurements ran, whatever the
ratios say; non-zero only when the benchmark itself broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import scale

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Result = dict[str, Any]
MARK_VAR = "BATCHD_BENCH_MARK"  # every process the bench starts carries it: see reap()
FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Mode:
    name: str
    drain_n: int  # features (jobs) drained for throughput
    strace_n: int  # features drained under strace for the fsync count
    status_queued: int  # features queued while status is timed
    status_samples: int
    pickup_samples: int
    idle_s: float
    save_writes: int  # timed durable writes per batch size
    finished_batches: int  # finished batches while status is timed again
    floor_rounds: int  # drains and floor loops, in turns


QUICK = Mode("quick", 300, 60, 1_000, 30, 10, 5.0, 100, 300, 2)
FULL = Mode("full", 1_000, 200, 10_000, 200, 30, 30.0, 200, 1_000, 3)
TSP_QUEUE_MAX = 980  # tsp blocks an enqueue past ~993 waiting jobs (TS_MAXCONN, 1000)


# --- small helpers ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cpu_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def idle_usage(pids: dict[str, int], seconds: float) -> dict[str, tuple[float, float]]:
    """RSS (MB, at the end) and CPU % (utime+stime over the window) of idle processes,
    all measured over the same window."""
    hz = os.sysconf("SC_CLK_TCK")
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {
        k: (round(rss_mb(p), 1), round((cpu_ticks(p) - before[k]) / hz / seconds * 100, 2))
        for k, p in pids.items()
    }


def child_env(mark: str, **extra: str) -> dict[str, str]:
    """A clean environment for a child: nothing of ours, of systemd's or a user's tsp/nq."""
    drop = ("BATCHD_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "TS_", "NQDIR", "PYTHONDONTWRITE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env[MARK_VAR] = mark
    env.update(extra)
    return env


def reap(mark: str) -> list[int]:
    """SIGKILL every process still carrying this run's mark (a job tsp -K left running,
    a queued nq job, a runner); returns their pids. Only ours: the mark is our temp dir."""
    entry = f"{MARK_VAR}={mark}".encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if entry in env.split(b"\0"):
            found.append(int(name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def timed_runs(argvs: dict[str, list[str]], env: dict[str, str], n: int) -> dict[str, list[float]]:
    """Wall time (ms) of each command, n times, the commands interleaved so that drift on
    the machine hits them alike. Two untimed warm-up runs each."""
    out: dict[str, list[float]] = {k: [] for k in argvs}
    for i in range(n + 2):
        for key, argv in argvs.items():
            t = time.perf_counter()
            subprocess.run(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True
            )
            if i >= 2:
                out[key].append(ms(time.perf_counter() - t))
    return out


def wait_marks(path: Path, count: int, what: str) -> list[float]:
    """Wait (polling every ms) until the timestamp file holds ``count`` lines."""
    found: list[float] = []

    def enough() -> bool:
        found[:] = read_marks(path)
        return len(found) >= count

    wait_for(enough, 30, what, 0.001)
    return found


def read_marks(path: Path) -> list[float]:
    try:
        return [float(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def strace_count(log: Path) -> int:
    """fsync + fdatasync calls in a ``strace -c`` summary."""
    calls = 0
    for line in log.read_text().splitlines():
        parts = line.split()  # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync") and parts[3].isdigit():
            calls += int(parts[3])
    return calls


def features_for(n: int, tag: str = "") -> list[str]:
    """Realistic feature text, about 60 characters each."""
    return [
        f"Add retry with backoff to the export job of tenant {i:05d}{tag} (#{1000 + i})"
        for i in range(n)
    ]


# --- batchd -------------------------------------------------------------------------------


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the bench (the venv), else PATH's."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


class Daemon:
    """One real ``batchd`` (the console script) in a private directory."""

    def __init__(
        self,
        root: Path,
        mark: str,
        backend: str,
        runner: list[str],
        max_features: int,
        prefix: list[str] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True)
        (root / "run").mkdir(mode=0o700)
        self.sock = root / "run" / "batchd.sock"
        self.spool = root / "spool"
        self.state = root / "state"
        cfg = root / "config.toml"
        cfg.write_text(
            f"[runner]\ncommand = {json.dumps(runner)}\ncwd = {json.dumps(str(root))}\n"
            f"[spool]\nmax_features = {max_features}\nmax_file_bytes = {64 << 20}\n"
        )
        self.env = child_env(
            mark,
            BATCHD_CONFIG=str(cfg),
            BATCHD_SPOOL_DIR=str(self.spool),
            BATCHD_STATE_DIR=str(self.state),
            BATCHD_SOCKET=str(self.sock),
        )
        self.batchctl = venv_bin("batchctl")
        argv = prefix or [venv_bin("batchd")]
        # The daemon's own defaults (log level info), its log to a file as under systemd.
        with open(root / "daemon.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "--backend", backend],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.pid = self.proc.pid
        wait_for(self._up, 60, "batchd to answer on its socket")
        self.start_rss_mb = round(rss_mb(self.pid), 1)
        self._n = 0

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"batchd exited at start:\n{self.log_tail()}")
        try:
            self.call("ping")
        except OSError:
            return False
        return True

    def log_tail(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")[-3000:]

    def call(self, cmd: str, **args: Any) -> Result:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(120)
            s.connect(str(self.sock))
            s.sendall(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
            with s.makefile("rb") as f:
                reply: Result = json.loads(f.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"batchd {cmd}: {reply}")
        result: Result = reply["result"]
        return result

    def drop(self, features: list[str]) -> tuple[str, float]:
        """Drop one batch request into the spool (temp file, then rename) and ping, as
        ``batchctl submit`` does. Returns the batch's name and the wall time of the rename."""
        self._n += 1
        name = f"bench-{self._n}"
        self.spool.mkdir(mode=0o700, exist_ok=True)
        body = json.dumps({"features": features, "name": name}).encode()
        tmp = self.spool / f".{name}.json.tmp"
        tmp.write_bytes(body)
        dropped = time.time()
        os.rename(tmp, self.spool / f"{name}.json")
        self.call("ping")
        return name, dropped

    def item(self, name: str) -> Result | None:
        for b in self.call("list")["batches"]:
            if b["name"] == name:
                found: Result = b
                return found
        return None

    def wait_item(
        self, name: str, statuses: tuple[str, ...], timeout: float = 600, interval: float = 0.02
    ) -> Result:
        """Poll ``list`` every ``interval`` s until the batch has one of ``statuses``."""
        found: list[Result] = []

        def ready() -> bool:
            it = self.item(name)
            if it is not None and it["status"] in statuses:
                found.append(it)
                return True
            if it is not None and it["status"] in FINISHED:
                raise RuntimeError(f"batch {name} ended {it['status']}: {it}")
            return False

        wait_for(ready, timeout, f"batch {name} to be {'/'.join(statuses)}", interval)
        return found[0]

    def drain(self, n: int, paused_first: bool) -> tuple[float, Result]:
        """Seconds from the request drop (or, paused_first, from ``resume``) until the batch
        of n no-op features is completed. The end is the batch's own ``updated_at``, so
        the poll does not blur it; it polls every 250 ms, not faster: each ``list`` costs
        the daemon about a millisecond, taken from the drain it measures."""
        if paused_first:
            self.call("pause")
            name, _ = self.drop(features_for(n))
            self.wait_item(name, ("pending", "paused"))
            start = time.time()
            self.call("resume", all=True)
        else:
            name, start = self.drop(features_for(n))
        done = self.wait_item(name, ("completed",), interval=0.25)
        return parse_iso(done["updated_at"]) - start, done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_batchd_main(mode: Mode, root: Path, mark: str, backend: str) -> tuple[Result, Daemon]:
    """Throughput, fsyncs, status on one daemon; returns it still running (for idle)."""
    out: Result = {}
    d = Daemon(root, mark, backend, ["/bin/true"], max(mode.status_queued, mode.drain_n) + 10)
    out["start_rss_mb"] = d.start_rss_mb
    try:
        # Throughput: daemon idle, one request of N features dropped, until completed.
        secs, _ = d.drain(mode.drain_n, paused_first=False)
        out["throughput_fps"] = round(mode.drain_n / secs, 1)
        out["throughput_n"] = mode.drain_n
        # The same drain without ingestion: queued while paused, clock from `resume`; in
        # turns with the durability floor (scale.floor), the disk's speed drifting by the
        # minute on a shared machine: the medians of the rounds are compared.
        drains, floors, directs = [], [], []
        for k in range(mode.floor_rounds):
            secs, _ = d.drain(mode.drain_n, paused_first=True)
            drains.append(mode.drain_n / secs)
            fl = scale.floor(root / f"floor{k}", features_for(mode.drain_n))
            floors.append(fl["floor_fps"])
            directs.append(fl["floor_direct_fps"])
        out["drain_fps"] = round(statistics.median(drains), 1)
        out["floor_fps"] = round(statistics.median(floors), 1)
        out["floor_direct_fps"] = round(statistics.median(directs), 1)
        out["floor_n"] = mode.drain_n
        out["floor_rounds"] = mode.floor_rounds
        out["drain_vs_floor"] = r(out["drain_fps"] / out["floor_fps"], 3)
        # Again with 5 watch clients that never read (tests/test_server.py proves the queue
        # never waits for them; this measures what they cost).
        watchers = silent_watchers(d.sock, 5)
        try:
            secs, _ = d.drain(mode.drain_n, paused_first=True)
        finally:
            for s in watchers:
                s.close()
        out["drain_watched_fps"] = round(mode.drain_n / secs, 1)
        out["watched_vs_drain"] = r(out["drain_watched_fps"] / out["drain_fps"])

        # fsync + fdatasync per feature, strace attached to every thread of the daemon over
        # a separate drain (strace slows every syscall: not used for throughput).
        out["fsyncs_per_feature"] = None
        if shutil.which("strace"):
            d.call("pause")
            name, _ = d.drop(features_for(mode.strace_n))
            d.wait_item(name, ("pending", "paused"))
            log = root / "strace.txt"
            strace = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(log)]
            tracer = subprocess.Popen(
                [*strace, "-p", str(d.pid)],
                env=child_env(mark),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: traced(d.pid), 10, "strace to attach")
            d.call("resume", all=True)
            d.wait_item(name, ("completed",))
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            out["fsyncs_per_feature"] = round(strace_count(log) / mode.strace_n, 2)
            out["fsyncs_n"] = mode.strace_n

        # Status with many features queued, nothing running.
        d.call("pause")
        name, _ = d.drop(features_for(mode.status_queued))
        it = d.wait_item(name, ("pending", "paused"), timeout=120)
        argv = [d.batchctl, "--json", "status"]
        check = subprocess.run(argv, env=d.env, capture_output=True, check=True)
        shown = json.loads(check.stdout)
        if not any(b["name"] == name for b in shown["batches"]):
            raise RuntimeError("batchctl --json status does not show the queued batch")
        python = str(Path(d.batchctl).parent / "python")
        if not Path(python).exists():
            python = sys.executable
        floor_argv = [python, "-c", "import socket, json"]
        argvs = {
            "status": argv,
            "floor": floor_argv,
            "version": [d.batchctl, "--version"],
            "completion": [d.batchctl, "completion", "bash"],
        }
        samples = timed_runs(argvs, d.env, mode.status_samples)
        out["status_queued_features"] = mode.status_queued
        out["status_samples"] = mode.status_samples
        out["status_p50_ms"] = r(statistics.median(samples["status"]))
        out["status_p99_ms"] = r(pct(samples["status"], 99))
        out["floor_p50_ms"] = r(statistics.median(samples["floor"]))
        out["status_vs_floor"] = r(out["status_p50_ms"] / out["floor_p50_ms"])
        for what in ("version", "completion"):
            out[f"{what}_p50_ms"] = r(statistics.median(samples[what]))
            out[f"{what}_vs_floor"] = r(out[f"{what}_p50_ms"] / out["floor_p50_ms"])
        d.call("cancel", batch_id=it["batch_id"])
        d.call("resume", all=True)
    except BaseException:
        d.stop()
        raise
    return out, d


def silent_watchers(path: Path, n: int) -> list[socket.socket]:
    """n ``watch`` clients with a small receive buffer that never read a byte."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(path))
        s.sendall(b'{"v":1,"id":1,"cmd":"watch","args":{}}\n')
        socks.append(s)
    return socks


def traced(pid: int) -> bool:
    """Is every thread of pid under a tracer?"""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for tid in tasks:
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("TracerPid:") and line.split()[1] == "0":
                return False
    return True


def bench_batchd_pickup(mode: Mode, root: Path, mark: str, backend: str) -> Result:
    """`batchctl submit FILE` returns -> the runner has started (it writes a timestamp)."""
    marks = root / "starts.txt"
    runner = ["sh", "-c", f"date +%s.%N >> '{marks}'"]
    d = Daemon(root / "daemon", mark, backend, runner, 100)
    try:
        feature_file = root / "one.txt"
        feature_file.write_text("Add a --dry-run flag to the export command\n")
        argv = [d.batchctl, "submit", str(feature_file)]
        lat: list[float] = []
        invoke: list[float] = []
        for i in range(mode.pickup_samples + 1):  # the first one warms up, not counted
            called = time.time()
            subprocess.run(argv, env=d.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            returned = time.time()
            started = wait_marks(marks, i + 1, "the runner to start")[i]
            if i:
                lat.append(ms(started - returned))
                invoke.append(ms(started - called))
            wait_for(partial(completed_at_least, d, i + 1), 30, "the batch to complete")
            time.sleep(0.05)
        return {
            "pickup_p50_ms": r(statistics.median(lat), 1),
            "pickup_max_ms": r(max(lat), 1),
            "pickup_from_invoke_p50_ms": r(statistics.median(invoke), 1),
            "pickup_samples": mode.pickup_samples,
        }
    finally:
        d.stop()


def completed_at_least(d: Daemon, n: int) -> bool:
    done: int = sum(b["status"] == "completed" for b in d.call("list")["batches"])
    return done >= n


def save_costs(root: Path, writes: int) -> Result:
    """Median cost of one durable transition record (``Store.save_state``: encode, temp
    file, fsync, rename, fsync of the directory) in a batch of 10 and of 10,000 features.

    The headline figures are taken half-way through the batch: the first half of the
    features are finished (one attempt each in ``processing_history``), then the next
    features are begun and recorded as the engine does, and each of those writes (one
    after the spawn, one after the outcome) is timed. ``save_ms_10000_first``: the first
    transition of a fresh batch; ``save_ms_10000_end``: the last features of the batch.
    """
    from batchd.batch import Batch, Settings, new_batch
    from batchd.classify import Verdict
    from batchd.parse import ParsedBatch
    from batchd.store import STATE, Store

    store = Store(root)
    store.open()
    settings = Settings()
    done = Verdict("completed", tokens=1200, cost_usd=0.0125)
    serial = [0]

    def fresh(n: int) -> Batch:
        serial[0] += 1
        batch = new_batch(
            batch_id=f"batch-20260101-000000-{serial[0]:06d}",
            seq=serial[0],
            parsed=ParsedBatch(features=features_for(n), name="bench"),
            features_file="bench.txt",
            source_sha256="0" * 64,
            now=time.time(),
        )
        store.create_batch(batch.state, batch.retry)
        return batch

    def step(batch: Batch, index: int, timings: list[float] | None) -> None:
        """Begin and complete one feature; time each of its two writes if asked."""
        now = time.time()
        batch.begin(index=index, now=now, pid=4000 + index, pid_start_time=123456)
        if timings is not None:
            t = time.perf_counter()
            store.save_state(batch.state)
            timings.append(ms(time.perf_counter() - t))
        batch.record(
            done,
            exit_code=0,
            consent=False,
            hint_s=None,
            settings=settings,
            now=now + 0.5,
            rand=lambda: 0.5,
        )
        if timings is not None:
            t = time.perf_counter()
            store.save_state(batch.state)
            timings.append(ms(time.perf_counter() - t))

    def from_index(n: int, start: int) -> tuple[float, int]:
        """Median ms of `writes` timed writes beginning at feature `start` (fresh batches
        brought to `start` untimed as often as needed); and the state size there."""
        timings: list[float] = []
        size = 0
        while len(timings) < writes:
            batch = fresh(n)
            for i in range(start):
                step(batch, i, None)
            store.save_state(batch.state)  # untimed: warms the encoder's cache, as in the daemon
            size = os.path.getsize(store.batch_dir(batch.batch_id) / STATE)
            i = start
            while i < n and len(timings) < writes:
                step(batch, i, timings)
                i += 1
        return statistics.median(timings), size

    try:
        out: Result = {}
        ten, size10 = from_index(10, 5)
        big, size_big = from_index(10_000, 5_000)
        first, _ = from_index(10_000, 0)
        end, size_end = from_index(10_000, 10_000 - writes // 2)
        out["save_ms_10"] = r(ten, 3)
        out["save_ms_10000"] = r(big, 3)
        out["save_ratio"] = r(big / ten)
        out["save_ms_10000_first"] = r(first, 3)
        out["save_ms_10000_end"] = r(end, 3)
        out["save_bytes_10"] = size10
        out["save_bytes_10000"] = size_big
        out["save_bytes_10000_end"] = size_end
        out["save_writes"] = writes
        return out
    finally:
        store.close()


# --- peers --------------------------------------------------------------------------------


def sh_loop(n: int, enqueue: str, then: str) -> list[str]:
    """`sh -c` enqueueing n jobs one command at a time, then waiting: how a user would."""
    return [
        "sh",
        "-c",
        f"i=0; while [ $i -lt {n} ]; do {enqueue} >/dev/null; i=$((i+1)); done; {then}",
    ]


def run_timed(argv: list[str], env: dict[str, str], timeout: float = 600) -> float:
    t = time.perf_counter()
    subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=timeout,
    )
    return time.perf_counter() - t


def strace_tree(argv: list[str], env: dict[str, str], log: Path) -> int:
    """fsync + fdatasync calls of a command and everything it forks (servers included)."""
    subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(log), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=600,
    )
    return strace_count(log)


def peer_pickup(enqueue: Callable[[Path], None], marks: Path, samples: int) -> Result:
    """ms from an enqueue command returning to its job writing a timestamp."""
    lat: list[float] = []
    for i in range(samples + 1):  # the first one warms up
        enqueue(marks)
        returned = time.time()
        started = wait_marks(marks, i + 1, "the peer's job to start")[i]
        if i:
            lat.append(ms(started - returned))
        time.sleep(0.05)
    return {"pickup_p50_ms": r(statistics.median(lat), 1), "pickup_max_ms": r(max(lat), 1)}


class Tsp:
    """A private task-spooler server: its own TS_SOCKET and TMPDIR (job outputs)."""

    def __init__(self, tsp: str, root: Path, mark: str, max_finished: int) -> None:
        self.tsp = tsp
        self.root = root
        root.mkdir(mode=0o700, parents=True)
        # One slot (one job at a time, as batchd); keep every finished job in the list.
        self.env = child_env(
            mark,
            TS_SOCKET=str(root / "socket"),
            TMPDIR=str(root),
            TS_SLOTS="1",
            TS_MAXFINISHED=str(max_finished),
        )

    def run(self, *args: str) -> str:
        return subprocess.run(
            [self.tsp, *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout.strip()

    def server_pid(self) -> int | None:
        """The server: the process of our TS_SOCKET still alive when no job is."""
        entry = f"TS_SOCKET={self.env['TS_SOCKET']}".encode()
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                env = Path(f"/proc/{name}/environ").read_bytes()
                argv0 = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if entry in env.split(b"\0") and os.path.basename(argv0) in (b"tsp", b"ts"):
                pids.append(int(name))
        return min(pids) if len(pids) == 1 else None

    def kill_server(self) -> None:
        subprocess.run([self.tsp, "-K"], env=self.env, capture_output=True, check=False)


def bench_tsp(mode: Mode, root: Path, mark: str) -> tuple[Result | None, Tsp | None]:
    exe = shutil.which("tsp")  # Debian's name; `ts` may be moreutils' timestamper
    if not exe:
        return None, None
    n = mode.drain_n
    t = Tsp(exe, root / "server", mark, 4 * n + 2 * TSP_QUEUE_MAX)
    out: Result = {"throughput_n": n}
    try:
        # Enqueue all (one `tsp true` each; output kept: no -n), then `tsp -w` on the last.
        out["throughput_fps"] = round(
            n / run_timed(sh_loop(n, f"'{exe}' true", f"'{exe}' -w"), t.env), 1
        )
        # Drain only: queued behind a blocking job, clock from killing it (at most
        # TSP_QUEUE_MAX waiting jobs: each is a client process holding a connection).
        m = min(n, TSP_QUEUE_MAX)
        blocker = t.run("sleep", "600")
        wait_for(lambda: "running" in t.run("-s", blocker), 10, "the tsp blocker to run")
        subprocess.run(sh_loop(m, f"'{exe}' true", "true"), env=t.env, check=True)
        start = time.perf_counter()
        t.run("-k", blocker)
        t.run("-w")  # the last job enqueued
        out["drain_fps"] = round(m / (time.perf_counter() - start), 1)
        out["drain_n"] = m
        # Status: `tsp -l` with the queue full (finished jobs cleared first).
        t.run("-C")
        blocker = t.run("sleep", "600")
        subprocess.run(sh_loop(TSP_QUEUE_MAX, f"'{exe}' true", "true"), env=t.env, check=True)
        listed = t.run("-l").count("queued")
        samples = timed_runs({"l": [exe, "-l"]}, t.env, mode.status_samples)["l"]
        out["status_queued_features"] = listed
        out["status_p50_ms"] = r(statistics.median(samples))
        out["status_p99_ms"] = r(pct(samples, 99))
        t.run("-k", blocker)
        t.run("-w")
        out["fsyncs_per_feature"] = None
        if shutil.which("strace"):
            # A fresh server, started inside the traced tree by the first `tsp`.
            s = Tsp(exe, root / "strace", mark, 4 * n)
            try:
                # The server is forked inside the traced tree, and strace -f waits for every
                # traced process: end the server from inside the tree once the jobs are done.
                calls = strace_tree(
                    sh_loop(mode.strace_n, f"'{exe}' true", f"'{exe}' -w; '{exe}' -K"),
                    s.env,
                    root / "strace.txt",
                )
            finally:
                s.kill_server()
            out["fsyncs_per_feature"] = round(calls / mode.strace_n, 2)

        def enqueue(marks: Path) -> None:
            t.run("sh", "-c", f"date +%s.%N >> '{marks}'")

        out.update(peer_pickup(enqueue, root / "starts.txt", mode.pickup_samples))
        return out, t
    except BaseException:
        t.kill_server()
        raise


def bench_nq(mode: Mode, root: Path, mark: str) -> Result | None:
    exe = shutil.which("nq")
    if not exe:
        return None
    n = mode.drain_n
    root.mkdir(mode=0o700, parents=True)
    env = child_env(mark, NQDIR=str(root / "queue"))
    out: Result = {"throughput_n": n}
    # Enqueue all (one `nq true` each; output files kept), then `nq -w` (all of them).
    out["throughput_fps"] = round(n / run_timed(sh_loop(n, f"'{exe}' true", f"'{exe}' -w"), env), 1)
    # Drain only: queued behind a blocking job, clock from killing it.
    shutil.rmtree(root / "queue")
    job = subprocess.run(
        [exe, "sleep", "600"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()  # ,<time>.<pid>: the pid is the job's own (nq execs the command)
    subprocess.run(sh_loop(n, f"'{exe}' true", "true"), env=env, check=True)
    start = time.perf_counter()
    os.kill(int(job.rsplit(".", 1)[1]), signal.SIGTERM)
    subprocess.run([exe, "-w"], env=env, capture_output=True, check=True)
    out["drain_fps"] = round(n / (time.perf_counter() - start), 1)
    out["drain_n"] = n
    out["status_p50_ms"] = out["status_p99_ms"] = None  # no status over a queue (`fq` tails)
    out["idle_rss_mb"] = out["idle_cpu_pct"] = None  # no server process
    out["fsyncs_per_feature"] = None
    if shutil.which("strace"):
        senv = child_env(mark, NQDIR=str(root / "strace-queue"))
        calls = strace_tree(
            sh_loop(mode.strace_n, f"'{exe}' true", f"'{exe}' -w"), senv, root / "strace.txt"
        )
        out["fsyncs_per_feature"] = round(calls / mode.strace_n, 2)

    def enqueue(marks: Path) -> None:
        subprocess.run(
            [exe, "sh", "-c", f"date +%s.%N >> '{marks}'"], env=env, capture_output=True, check=True
        )

    out.update(peer_pickup(enqueue, root / "starts.txt", mode.pickup_samples))
    return out


# --- report -------------------------------------------------------------------------------


def machine(where: Path) -> Result:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(
        ["df", "--output=fstype", str(where)], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "tmp_dir": str(where),
        "tmp_fs": fs[-1] if len(fs) > 1 else "?",
        "python": platform.python_version(),
    }


def targets(b: Result, tsp: Result | None) -> dict[str, bool | None]:
    tput = None if not tsp else b["throughput_fps"] >= tsp["throughput_fps"]
    fs = b.get("fsyncs_per_feature")
    return {
        "throughput>=tsp": tput,
        "fsyncs_per_feature>=2": None if fs is None else fs >= 2,
        "save_10000<=3x_save_10": b["save_ratio"] <= 3,
        "status<=1.5x_floor": b["status_vs_floor"] <= 1.5,
        "watched_drain>=0.8x": b["watched_vs_drain"] >= 0.8,
        "version_completion<=1.5x_floor": max(b["version_vs_floor"], b["completion_vs_floor"])
        <= 1.5,
        "pickup<=100ms": b["pickup_p50_ms"] <= 100,
        "idle_rss<=40MB": b["idle_rss_mb"] <= 40,
        "idle_cpu_near_0": b["idle_cpu_pct"] <= 0.5,
        "drain>=0.9x_floor": b["drain_vs_floor"] >= 0.9,
        "slots2<=0.6x_slots1": b["slots2_vs_slots1"] <= 0.6,
        "status_1000_finished<=1.2x_one": b["status_finished_ratio"] <= 1.2,
    }


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def table(res: Result) -> str:
    b: Result = res["batchd"]
    tsp: Result = res["peers"]["tsp"] or {}
    nq: Result = res["peers"]["nq"] or {}
    t = res["targets"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    tput_ratio = (
        f"{b['throughput_fps'] / tsp['throughput_fps']:.2f}x tsp"
        if tsp.get("throughput_fps")
        else ""
    )
    rows: list[tuple[str, Any, Any, Any, str, str]] = [
        (
            f"throughput features/s (N={b['throughput_n']})",
            b["throughput_fps"],
            tsp.get("throughput_fps"),
            nq.get("throughput_fps"),
            ">= tsp",
            f"{verdict(t['throughput>=tsp'])} {tput_ratio}",
        ),
        (
            "  drain only (queued, then released)",
            b["drain_fps"],
            tsp.get("drain_fps"),
            nq.get("drain_fps"),
            "",
            f"tsp N={tsp.get('drain_n', '-')}",
        ),
        (
            "  drain with 5 silent watch clients",
            b["drain_watched_fps"],
            None,
            None,
            ">= 0.8x drain",
            f"{verdict(t['watched_drain>=0.8x'])} {b['watched_vs_drain']}x",
        ),
        (
            "fsync+fdatasync per feature",
            b.get("fsyncs_per_feature"),
            tsp.get("fsyncs_per_feature"),
            nq.get("fsyncs_per_feature"),
            ">= 2",
            verdict(t["fsyncs_per_feature>=2"]),
        ),
        (
            f"status p50 ms ({b['status_queued_features']} queued)",
            b["status_p50_ms"],
            tsp.get("status_p50_ms"),
            None,
            "<= 1.5x floor",
            f"{verdict(t['status<=1.5x_floor'])} {b['status_vs_floor']}x",
        ),
        ("status p99 ms", b["status_p99_ms"], tsp.get("status_p99_ms"), None, "", ""),
        ("floor: python -c 'import socket, json'", b["floor_p50_ms"], None, None, "", ""),
        (
            "batchctl --version / completion bash p50 ms",
            f"{f(b['version_p50_ms'])}/{f(b['completion_p50_ms'])}",
            None,
            None,
            "<= 1.5x floor",
            f"{verdict(t['version_completion<=1.5x_floor'])} "
            f"{b['version_vs_floor']}x/{b['completion_vs_floor']}x",
        ),
        (
            "pickup p50 ms (submit returns->start)",
            b["pickup_p50_ms"],
            tsp.get("pickup_p50_ms"),
            nq.get("pickup_p50_ms"),
            "<= 100",
            verdict(t["pickup<=100ms"]),
        ),
        ("  from submit invoked", b["pickup_from_invoke_p50_ms"], None, None, "", ""),
        (
            f"idle RSS MB ({res['idle_s']:g} s)",
            b["idle_rss_mb"],
            tsp.get("idle_rss_mb"),
            None,
            "<= 40",
            verdict(t["idle_rss<=40MB"]),
        ),
        (
            "idle CPU %",
            b["idle_cpu_pct"],
            tsp.get("idle_cpu_pct"),
            None,
            "~0 (<= 0.5)",
            verdict(t["idle_cpu_near_0"]),
        ),
        ("save ms, batch of 10 (half done)", b["save_ms_10"], None, None, "", ""),
        (
            "save ms, batch of 10,000 (half done)",
            b["save_ms_10000"],
            None,
            None,
            "<= 3x save_10",
            f"{verdict(t['save_10000<=3x_save_10'])} {b['save_ratio']}x",
        ),
        (
            "  10,000: first / last transitions",
            f"{f(b['save_ms_10000_first'])}/{f(b['save_ms_10000_end'])}",
            None,
            None,
            "",
            "",
        ),
        (
            f"floor features/s (same writes, N={b['floor_n']} x {b['floor_rounds']})",
            b["floor_fps"],
            None,
            None,
            "",
            f"no pipes: {b['floor_direct_fps']}",
        ),
        (
            "  drain / floor",
            b["drain_vs_floor"],
            None,
            None,
            ">= 0.9",
            verdict(t["drain>=0.9x_floor"]),
        ),
        (
            f"wall s, {b['slots_features']} x 1 s over 4 cwds, slots 1 / 2",
            f"{f(b['slots1_wall_s'])}/{f(b['slots2_wall_s'])}",
            None,
            None,
            "<= 0.6x",
            f"{verdict(t['slots2<=0.6x_slots1'])} {b['slots2_vs_slots1']}x",
        ),
        (
            f"status p50 ms, 1 batch / {b['status_finished_n']:,} finished",
            f"{f(b['status_one_batch_p50_ms'])}/{f(b['status_1000_finished_p50_ms'])}",
            None,
            None,
            "<= 1.2x",
            f"{verdict(t['status_1000_finished<=1.2x_one'])} {b['status_finished_ratio']}x",
        ),
    ]
    sl = res.get("slurm") or {}
    if "submit_to_start_p50_ms" in sl:
        rows += [
            ("slurm: submit -> job start p50 ms", sl["submit_to_start_p50_ms"], None, None, "", ""),
            (
                "wall s, 16 x 2 s over 8 batches: slurm 8 slots",
                sl["slurm_slots8_wall_s"],
                None,
                None,
                "",
                "",
            ),
            (
                "  the same, local engine, slots 1 / 2",
                f"{f(sl['local_slots1_wall_s'])}/{f(sl['local_slots2_wall_s'])}",
                None,
                None,
                "",
                "",
            ),
        ]
    w = (41, 10, 8, 8, 14)
    head = ("figure", "batchd", "tsp", "nq", "target", "verdict")
    lines = ["  ".join(h.ljust(n) for h, n in zip(head, (*w, 0), strict=True)).rstrip()]
    for label, bv, tv, nv, target, ver in rows:
        cells = (label, f(bv), f(tv), f(nv), target, ver)
        lines.append("  ".join(c.ljust(n) for c, n in zip(cells, (*w, 0), strict=True)).rstrip())
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every finally block stops what it started."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_bench(mode: Mode, backend: str, base: str | None, slurm: bool = False) -> Result:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="batchd-bench-", dir=base) as tmp:
        root = Path(tmp)
        mark = tmp
        res: Result = {
            "mode": mode.name,
            "backend": backend,
            "machine": machine(root),
            "idle_s": mode.idle_s,
        }
        daemon: Daemon | None = None
        tsp: Tsp | None = None
        try:
            b, daemon = bench_batchd_main(mode, root / "batchd", mark, backend)
            tsp_res, tsp = bench_tsp(mode, root / "tsp", mark)
            nq_res = bench_nq(mode, root / "nq", mark)
            # Idle: the daemon (after all the work above, its batches in memory) and tsp's
            # server, over the same window.
            pids = {"batchd": daemon.pid}
            server = tsp.server_pid() if tsp else None
            if server is not None:
                pids["tsp"] = server
            idle = idle_usage(pids, mode.idle_s)
            b["idle_rss_mb"], b["idle_cpu_pct"] = idle["batchd"]
            if tsp_res is not None:
                tsp_res["idle_rss_mb"], tsp_res["idle_cpu_pct"] = idle.get("tsp", (None, None))
            daemon.stop()
            daemon = None
            if tsp is not None:
                tsp.kill_server()
                tsp = None
            b.update(bench_batchd_pickup(mode, root / "pickup", mark, backend))
            b.update(save_costs(root / "save", mode.save_writes))
            env = child_env(mark)
            b.update(scale.slots(root / "slots", env, backend, mode.name == "quick"))
            b.update(
                scale.status_finished(
                    root / "finished", env, backend, mode.status_samples, mode.finished_batches
                )
            )
            if slurm:
                res["slurm"] = scale.slurm(root / "slurm", env, backend)
        finally:
            if daemon is not None:
                daemon.stop()
            if tsp is not None:
                tsp.kill_server()
            left = reap(mark)
            if left:
                print(f"bench: killed {len(left)} leftover process(es): {left}", file=sys.stderr)
        res["batchd"] = b
        res["peers"] = {"tsp": tsp_res, "nq": nq_res}
        res["targets"] = targets(b, tsp_res)
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def run_profile(out: Path, n: int, backend: str, base: str | None) -> None:
    """cProfile of the daemon (its main thread) while it drains n no-op features."""
    with tempfile.TemporaryDirectory(prefix="batchd-prof-", dir=base) as tmp:
        prefix = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "batchd"]
        d = Daemon(Path(tmp) / "batchd", tmp, backend, ["/bin/true"], n + 10, prefix=prefix)
        try:
            secs, _ = d.drain(n, paused_first=False)
        finally:
            d.stop()
            reap(tmp)
    print(f"drained {n} features in {secs:.2f} s ({n / secs:.0f}/s) under cProfile")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    ap.add_argument("--dir", help="parent of the private temp dir (default: the temp dir)")
    ap.add_argument(
        "--slurm",
        action="store_true",
        help="also the Slurm figures in quick mode (full mode has them; root and slurm-wlm)",
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="instead of the bench: cProfile the daemon over one drain into FILE",
    )
    args = ap.parse_args()
    mode = QUICK if args.quick else FULL
    try:
        with terminate_as_exit():
            if args.profile:
                run_profile(Path(args.profile).resolve(), mode.drain_n, args.backend, args.dir)
                return 0
            res = run_bench(mode, args.backend, args.dir, slurm=args.slurm or not args.quick)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("bench: the benchmark itself failed (no figures)", file=sys.stderr)
        return 1
    m = res["machine"]
    print(
        f"batchd bench: {mode.name} mode, {args.backend}, {m['date']}\n"
        f"machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, "
        f"temp dir on {m['tmp_fs']}, Python {m['python']}\n"
    )
    print(table(res))
    missed = [k for k, v in res["targets"].items() if v is False]
    print(f"\ntargets missed: {', '.join(missed) or 'none'}   (elapsed {res['elapsed_s']} s)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
