#!/usr/bin/env python3
"""batchd benchmark, side by side with task-spooler (tsp) and nq. See bench/README.md.

    python bench/bench.py --quick            # under 2 minutes, what CI runs
    python bench/bench.py --json out.json    # full mode

It never fails on a ratio: exit 0 when the measurements ran, non-zero only
when the benchmark itself broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Mode:
    name: str
    drain_n: int
    status_queued: int
    status_samples: int
    pickup_samples: int
    idle_s: float
    strace_n: int


QUICK = Mode("quick", 300, 1000, 40, 8, 10.0, 60)
FULL = Mode("full", 1000, 10000, 200, 30, 30.0, 200)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def cpu_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle_usage(pid: int, seconds: float) -> tuple[float, float]:
    hz = os.sysconf("SC_CLK_TCK")
    a = cpu_ticks(pid)
    time.sleep(seconds)
    b = cpu_ticks(pid)
    return round(rss_mb(pid), 1), round((b - a) / hz / seconds * 100, 3)


# --- batchd ---------------------------------------------------------------------------------


class Batchd:
    def __init__(self, root: Path, backend: str, runner: list[str], max_features: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.sock = root / "run" / "batchd.sock"
        self.spool = root / "spool"
        self.state = root / "state"
        cfg = root / "config.toml"
        cfg.write_text(
            f"[runner]\ncommand = {json.dumps(runner)}\ncwd = {json.dumps(str(root))}\n"
            f"[spool]\nmax_features = {max_features}\nmax_file_bytes = 67108864\n"
        )
        bindir = Path(sys.executable).parent
        self.batchd = str(bindir / "batchd") if (bindir / "batchd").exists() else None
        self.batchctl = str(bindir / "batchctl")
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("BATCHD_", "NOTIFY_SOCKET"))
            },
            "BATCHD_CONFIG": str(cfg),
            "BATCHD_SPOOL_DIR": str(self.spool),
            "BATCHD_STATE_DIR": str(self.state),
            "BATCHD_SOCKET": str(self.sock),
        }
        argv = [self.batchd] if self.batchd else [sys.executable, "-m", "batchd"]
        self.proc = subprocess.Popen(
            [*argv, "--backend", backend, "--log-level", "warning"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(root / "daemon.log", "wb"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("ping")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((root / "daemon.log").read_text()) from None
                time.sleep(0.02)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(str(self.sock))
            s.sendall(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
            f = s.makefile("rb")
            reply: dict[str, Any] = json.loads(f.readline())
            f.close()
        if not reply.get("ok"):
            raise RuntimeError(reply)
        result: dict[str, Any] = reply["result"]
        return result

    def drop(self, features: list[str]) -> None:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"b{time.monotonic_ns()}.json"
        tmp = self.spool / f".{name}.tmp"
        tmp.write_text(json.dumps({"features": features}))
        os.rename(tmp, self.spool / name)
        self.call("ping")

    def batches(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("list")["batches"]
        return result

    def wait(self, pred: Any, timeout: float = 600, interval: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out")
            time.sleep(interval)

    def queue_batch(self, n: int) -> str:
        """Queue one batch of n features while the queue is paused; return its id."""
        before = len(self.batches())
        self.call("pause")
        self.drop([f"feature {i}: implement something useful here" for i in range(n)])
        self.wait(lambda: len(self.batches()) > before)
        return str(self.batches()[-1]["batch_id"])

    def all_done(self) -> bool:
        return all(b["status"] in ("completed", "failed", "cancelled") for b in self.batches())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_batchd(mode: Mode, root: Path, backend: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    d = Batchd(root / "batchd", backend, ["/bin/true"], mode.status_queued + 10)
    try:
        # Throughput: a paused batch of N no-op features, then resume and time the drain.
        d.queue_batch(mode.drain_n)
        t0 = time.monotonic()
        d.call("resume", all=True)
        d.wait(d.all_done, interval=0.05)
        out["throughput_fps"] = round(mode.drain_n / (time.monotonic() - t0), 1)

        # fsyncs per feature, counted by strace on a separate (slower) run.
        out["fsyncs_per_feature"] = None
        if shutil.which("strace"):
            d.queue_batch(mode.strace_n)
            log = root / "strace.txt"
            tracer = subprocess.Popen(
                [
                    "strace",
                    "-f",
                    "-c",
                    "-e",
                    "trace=fsync,fdatasync",
                    "-o",
                    str(log),
                    "-p",
                    str(d.proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            d.call("resume", all=True)
            d.wait(d.all_done, interval=0.1)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            calls = 0
            for line in log.read_text().splitlines():
                parts = line.split()  # % time, seconds, usecs/call, calls, [errors,] syscall
                if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync"):
                    calls += int(parts[3])
            out["fsyncs_per_feature"] = round(calls / mode.strace_n, 2)

        # Status latency with many queued features.
        d.queue_batch(mode.status_queued)
        out["status_queued_features"] = mode.status_queued
        samples = []
        for _ in range(mode.status_samples):
            t = time.perf_counter()
            subprocess.run(
                [d.batchctl, "--json", "status"], env=d.env, stdout=subprocess.DEVNULL, check=True
            )
            samples.append((time.perf_counter() - t) * 1000)
        out["status_p50_ms"] = round(statistics.median(samples), 2)
        out["status_p99_ms"] = round(pct(samples, 99), 2)
        floor = []
        for _ in range(mode.status_samples):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import socket, json"], check=True)
            floor.append((time.perf_counter() - t) * 1000)
        out["floor_p50_ms"] = round(statistics.median(floor), 2)
        out["status_vs_floor"] = round(out["status_p50_ms"] / out["floor_p50_ms"], 2)
        d.call("cancel", batch_id=d.batches()[-1]["batch_id"])
        d.call("resume", all=True)
        out["idle_rss_mb"], out["idle_cpu_pct"] = idle_usage(d.proc.pid, mode.idle_s)
    finally:
        d.stop()

    # Pickup: `batchctl submit` returns -> the runner starts.
    marks = root / "starts.txt"
    p = Batchd(root / "pickup", backend, ["sh", "-c", f"date +%s.%N >> {marks}"], 100)
    try:
        feature_file = root / "one.txt"
        feature_file.write_text("one feature\n")
        lat = []
        invoke = []
        for i in range(mode.pickup_samples):
            called = time.time()
            subprocess.run(
                [p.batchctl, "submit", str(feature_file)],
                env=p.env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            returned = time.time()
            p.wait(
                lambda i=i: marks.exists() and len(marks.read_text().split()) > i,
                timeout=30,
                interval=0.002,
            )
            started = float(marks.read_text().split()[i])
            lat.append((started - returned) * 1000)
            invoke.append((started - called) * 1000)
            time.sleep(0.3)
        # submit pings the daemon, which scans at once: the runner often starts before
        # batchctl has even exited, so this can be negative.
        out["pickup_p50_ms"] = round(statistics.median(lat), 1)
        out["pickup_from_invoke_p50_ms"] = round(statistics.median(invoke), 1)
    finally:
        p.stop()
    out.update(save_costs(root / "save"))
    out["save_ratio"] = round(out["save_ms_10000"] / out["save_ms_10"], 2)
    return out


def save_costs(root: Path) -> dict[str, float]:
    """Median cost of one durable state write (Store.save_state, fsync of file and dir).

    ``save_ms_10`` and ``save_ms_10000``: a batch of 10 / 10,000 features at its first
    transition (one attempt recorded); ``save_ms_10000_half``: the same batch half done
    (5,000 attempts in processing_history, a 1.7 MB state.json).
    """
    from batchd.batch import Settings, new_batch
    from batchd.classify import Verdict
    from batchd.parse import ParsedBatch
    from batchd.store import Store

    store = Store(root)
    store.open()
    out: dict[str, float] = {}

    def median_save(batch: Any, count: int) -> float:
        samples = []
        for _ in range(count):
            t = time.perf_counter()
            store.save_state(batch.state)
            samples.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(samples), 3)

    for n, batch_id in (
        (10, "batch-20261124-000000-000010"),
        (10000, "batch-20261124-000000-010000"),
    ):
        feats = [
            f"feature {i}: implement the thing described in ticket {i} please" for i in range(n)
        ]
        batch = new_batch(
            batch_id=batch_id,
            seq=1,
            parsed=ParsedBatch(features=feats, name="bench"),
            features_file="bench.txt",
            source_sha256="0" * 64,
            now=time.time(),
        )
        store.create_batch(batch.state, batch.retry)
        now = time.time()
        batch.begin(index=0, now=now, pid=1000, pid_start_time=123456)
        out[f"save_ms_{n}"] = median_save(batch, 200 if n == 10 else 100)
        if n == 10000:
            batch.record(
                Verdict("completed", tokens=1200, cost_usd=0.01),
                exit_code=0,
                consent=False,
                hint_s=None,
                settings=Settings(),
                now=now,
                rand=lambda: 0.5,
            )
            for i in range(1, n // 2):
                batch.begin(index=i, now=now, pid=1000 + i, pid_start_time=123456)
                batch.record(
                    Verdict("completed", tokens=1200, cost_usd=0.01),
                    exit_code=0,
                    consent=False,
                    hint_s=None,
                    settings=Settings(),
                    now=now,
                    rand=lambda: 0.5,
                )
            out["save_ms_10000_half"] = median_save(batch, 50)
    store.close()
    return out


# --- peers --------------------------------------------------------------------------------


def bench_tsp(mode: Mode, root: Path) -> dict[str, Any] | None:
    tsp = shutil.which("tsp")
    if not tsp:
        return None
    root.mkdir(parents=True)
    n = min(mode.drain_n, 900)  # tsp holds at most ~990 pending jobs
    env = {
        **os.environ,
        "TS_SOCKET": str(root / "sock"),
        "TMPDIR": str(root),
        "TS_MAXFINISHED": str(mode.drain_n + 2000),
        "TS_SLOTS": "1",
    }

    def run(*args: str) -> str:
        return subprocess.run(
            [tsp, *args], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    out: dict[str, Any] = {}
    try:
        blocker = run("sleep", "600")
        for _ in range(n - 1):
            run("true")
        last = run("true")
        t0 = time.monotonic()
        run("-k", blocker)
        run("-w", last)
        out["throughput_fps"] = round(n / (time.monotonic() - t0), 1)
        out["throughput_jobs"] = n
        out["fsyncs_per_feature"] = 0
        blocker = run("sleep", "600")
        for _ in range(min(n, 900)):
            run("true")
        samples = []
        for _ in range(mode.status_samples):
            t = time.perf_counter()
            subprocess.run([tsp, "-l"], env=env, stdout=subprocess.DEVNULL, check=True)
            samples.append((time.perf_counter() - t) * 1000)
        out["status_p50_ms"] = round(statistics.median(samples), 2)
        out["status_p99_ms"] = round(pct(samples, 99), 2)
        run("-k", blocker)
        run("-w")
        server = _find_tsp_server(str(root / "sock"))
        out["idle_rss_mb"], out["idle_cpu_pct"] = (
            idle_usage(server, min(mode.idle_s, 10)) if server else (None, None)
        )
        # Pickup: enqueue returns -> job starts.
        marks = root / "starts.txt"
        out["pickup_p50_ms"] = peer_pickup(
            lambda: run("sh", "-c", f"date +%s.%N >> {marks}"), marks, mode.pickup_samples
        )
    finally:
        subprocess.run([tsp, "-K"], env=env, capture_output=True)
    return out


def peer_pickup(enqueue: Any, marks: Path, samples: int) -> float:
    """Median ms from an enqueue command returning to its job writing a timestamp."""
    lat = []
    for i in range(samples):
        enqueue()
        returned = time.time()
        while not marks.exists() or len(marks.read_text().split()) <= i:
            time.sleep(0.001)
        lat.append((float(marks.read_text().split()[i]) - returned) * 1000)
    return round(statistics.median(lat), 1)


def _find_tsp_server(sock: str) -> int | None:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if b"TS_SOCKET=" + sock.encode() in env and cmd.split(b"\0")[0].endswith(b"tsp"):
            return int(name)
    return None


def bench_nq(mode: Mode, root: Path) -> dict[str, Any] | None:
    nq = shutil.which("nq")
    if not nq:
        return None
    root.mkdir(parents=True)
    n = mode.drain_n
    env = {**os.environ, "NQDIR": str(root / "q")}
    out: dict[str, Any] = {}
    blocker = subprocess.Popen([nq, "sleep", "600"], env=env, stdout=subprocess.PIPE, text=True)
    blocker.communicate()
    time.sleep(0.2)
    pids = []
    for _ in range(n):
        subprocess.run([nq, "true"], env=env, capture_output=True, check=True)
    for f in (root / "q").iterdir():
        if f.name.startswith(",") and "sleep" in f.read_text(errors="replace")[:200]:
            pids.append(int(f.name[1:].split(".")[1]))
    t0 = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    subprocess.run([nq, "-w"], env=env, capture_output=True)
    out["throughput_fps"] = round(n / (time.monotonic() - t0), 1)
    out["fsyncs_per_feature"] = 0
    out["status_p50_ms"] = out["status_p99_ms"] = None  # nq has no status command over a queue
    out["idle_rss_mb"] = out["idle_cpu_pct"] = None  # no server process
    marks = root / "starts.txt"
    enqueue = [nq, "sh", "-c", f"date +%s.%N >> {marks}"]
    out["pickup_p50_ms"] = peer_pickup(
        lambda: subprocess.run(enqueue, env=env, capture_output=True, check=True),
        marks,
        mode.pickup_samples,
    )
    return out


# --- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = subprocess.run(
        ["df", "-T", tempfile.gettempdir()], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tmp_fs": fs[-1].split()[1] if fs else "?",
    }


def table(res: dict[str, Any]) -> str:
    b, peers = res["batchd"], res["peers"]
    tsp, nq = peers.get("tsp") or {}, peers.get("nq") or {}

    def f(v: Any) -> str:
        return "-" if v is None else str(v)

    rows = [
        ("throughput_fps", "features/s drained (no-op runner)"),
        ("fsyncs_per_feature", "fsync+fdatasync per feature"),
        ("status_p50_ms", "status p50 ms"),
        ("status_p99_ms", "status p99 ms"),
        ("pickup_p50_ms", "submit -> runner start p50 ms"),
        ("idle_rss_mb", "idle RSS MB"),
        ("idle_cpu_pct", "idle CPU %"),
    ]
    lines = [f"{'figure':<36} {'batchd':>10} {'tsp':>10} {'nq':>10}"]
    for key, label in rows:
        lines.append(f"{label:<36} {f(b.get(key)):>10} {f(tsp.get(key)):>10} {f(nq.get(key)):>10}")
    lines.append(f"{'python -c import socket,json p50 ms':<36} {f(b.get('floor_p50_ms')):>10}")
    lines.append(
        f"{'submit invoked -> runner start p50 ms':<36} {f(b.get('pickup_from_invoke_p50_ms')):>10}"
    )
    lines.append(
        f"{'save ms: 10 / 10,000 / 10,000 half':<36} {b['save_ms_10']:>10} / {b['save_ms_10000']}"
        f" / {b['save_ms_10000_half']}"
    )
    t = res["targets"]
    lines.append("")
    lines.append("targets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in t.items()))
    return "\n".join(lines)


def targets(b: dict[str, Any], tsp: dict[str, Any] | None) -> dict[str, bool]:
    t = {
        "status<=1.5x_floor": b["status_vs_floor"] <= 1.5,
        "save_10000<=3x_save_10": b["save_ratio"] <= 3,
        "pickup<=100ms": b["pickup_p50_ms"] <= 100,
        "idle_rss<=40MB": b["idle_rss_mb"] <= 40,
        "idle_cpu_near_0": b["idle_cpu_pct"] <= 0.5,
        "fsyncs>=2": (b["fsyncs_per_feature"] or 0) >= 2,
    }
    if tsp:
        t["throughput>=tsp"] = b["throughput_fps"] >= tsp["throughput_fps"]
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    ap.add_argument("--dir", help="where to put the temporary files (default: the temp dir)")
    args = ap.parse_args()
    mode = QUICK if args.quick else FULL
    t0 = time.monotonic()
    # An installed package has its bytecode; a source tree run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile batchctl on every start and measure the compiler.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "batchd"), str(REPO / "batchctl")],
        check=False,
    )
    with tempfile.TemporaryDirectory(prefix="batchd-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        res: dict[str, Any] = {"mode": mode.name, "backend": args.backend, "machine": machine()}
        res["batchd"] = bench_batchd(mode, root, args.backend)
        res["peers"] = {"tsp": bench_tsp(mode, root / "tsp"), "nq": bench_nq(mode, root / "nq")}
        res["targets"] = targets(res["batchd"], res["peers"]["tsp"])
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    m = res["machine"]
    print(
        f"batchd bench ({mode.name}, {args.backend}) {m['date']}: {m['cpus']} x {m['cpu']}, "
        f"Linux {m['kernel']}, {m['tmp_fs']}, Python {m['python']}"
    )
    print(table(res))
    print(f"elapsed {res['elapsed_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
