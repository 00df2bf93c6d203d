"""batchctl: the thin client of batchd (SPEC section 8).

Owns argument parsing, one request per run over the control socket (standard
library ``socket`` and ``json``), printing results for people (80 columns) or
as JSON, and the two commands that work without a daemon: ``submit`` (checked
with the daemon's own parser, written atomically into the spool) and
``consent`` (saved through the daemon, else into ``user_state.json``).

It must never import anyio or msgspec on the read and control commands: they
start about as fast as Python itself. Only ``submit`` and ``consent`` without
a daemon load ``batchd.config``, ``batchd.parse`` and ``batchd.store``, lazily.
It never passes anything through a shell (``gh`` runs as an argv list), and it
never spells a wire name itself: commands, version, error codes and the batch
id pattern come from ``batchd.protocol``.

Exit codes: 0 success, 1 refused or failed, 2 usage, 3 daemon not reachable,
130 interrupted (``watch`` and ``logs --follow`` exit 0 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from batchd.paths import ConfigError, Paths, load_paths, resolve_socket
from batchd.protocol import COMMANDS, MAX_LINE_BYTES, VERSION, is_batch_id

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

# argparse passes every help string through gettext, which probes the disk for message
# catalogs on each call: ~6 ms of every start. batchctl speaks English only.
argparse._ = lambda text: text  # type: ignore[attr-defined]

if TYPE_CHECKING:  # annotations are strings here (from __future__ import annotations)
    from typing import Any, NoReturn

    from batchd.config import Config
    from batchd.parse import Limits

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REQUEST_TIMEOUT_S = 30.0  # a normal request; watch and logs --follow wait forever
TICK_S = 1.0  # watch on a terminal redraws its line this often (elapsed time moves)
RECV_BYTES = 256 * 1024
GH_TIMEOUT_S = 10.0
MAX_ISSUES = 100
TITLE_MAX = 200  # characters of an issue title in its feature line, CUT_MARK included
CUT_MARK = "..."
NO_TITLE = "(no title)"
WIDTH = 80
HOW_TO_START = "start it with `batchd` in a terminal, or `systemctl --user start batchd`"
FINISHED = ("completed", "failed", "cancelled")


class Failure(Exception):
    """Ends the run: ``message`` goes to stderr as ``batchctl: message``, ``code`` is the exit."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def die(message: str, code: int = EXIT_FAIL) -> NoReturn:
    raise Failure(message, code)


# --- the control socket -------------------------------------------------------------


def connect(path: Path, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REQUEST_TIMEOUT_S)
    try:
        s.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        s.close()
        die(
            f"batchd is not running: nothing listens on {path} ({e.strerror})\n  {HOW_TO_START}",
            EXIT_DOWN,
        )
    except OSError as e:
        s.close()
        die(f"cannot connect to batchd at {path}: {e.strerror or e}\n  {HOW_TO_START}", EXIT_DOWN)
    s.settimeout(timeout)
    return s


class Connection:
    """One request on one connection, then its event lines and its reply.

    Lines have no size cap on this side (a ``show`` reply may exceed 1 MiB). A
    ``TimeoutError`` from ``message`` loses nothing: the next call goes on.
    """

    def __init__(self, path: Path, timeout: float | None) -> None:
        self.path = path
        self.sock = connect(path, timeout)
        self.buf = bytearray()
        self.scanned = 0

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, cmd: str, args: dict[str, Any]) -> None:
        assert cmd in COMMANDS, cmd
        request = {"v": VERSION, "id": 1, "cmd": cmd, "args": args}
        line = json.dumps(request, ensure_ascii=False).encode() + b"\n"
        if len(line) > MAX_LINE_BYTES:
            die(f"request too large ({len(line)} bytes, the limit is {MAX_LINE_BYTES})")
        try:
            self.sock.sendall(line)
        except OSError as e:
            die(f"lost the connection to batchd at {self.path}: {e.strerror or e}")

    def message(self) -> dict[str, Any]:
        """The next line, decoded; raises ``TimeoutError`` when the socket timeout passes."""
        while True:
            nl = self.buf.find(b"\n", self.scanned)
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                self.scanned = 0
                return decode_line(line)
            self.scanned = len(self.buf)
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                raise
            except OSError as e:
                die(f"lost the connection to batchd at {self.path}: {e.strerror or e}")
            if not chunk:
                die("batchd closed the connection without a reply (did it stop? see its log)")
            self.buf += chunk


def decode_line(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        die(f"batchd sent a line that is not a JSON object: {cut(repr(line), 60)}")
    return msg


def result_of(msg: dict[str, Any]) -> dict[str, Any]:
    """The result of an ``ok`` reply; an error reply ends the run with exit 1."""
    if msg.get("ok") is True:
        result = msg.get("result")
        return result if isinstance(result, dict) else {}
    err = msg.get("error")
    err = err if isinstance(err, dict) else {}
    die(str(err.get("message") or err.get("code") or "batchd refused the request"))


def call(
    path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT_S
) -> dict[str, Any]:
    """Send one request and return its result (event lines, if any, are skipped)."""
    with Connection(path, timeout) as conn:
        conn.send(cmd, args or {})
        while True:
            try:
                msg = conn.message()
            except TimeoutError:
                die(f"batchd did not answer `{cmd}` within {timeout:g}s (socket {path})")
            if "event" not in msg:
                return result_of(msg)


# --- time and text ------------------------------------------------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (H. Hinnant's algorithm: no datetime or _strptime import)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_ts(text: str) -> float | None:
    """``2026-11-24T05:06:53.123456Z`` to epoch seconds; None when it is not that form."""
    try:
        if len(text) < 20 or text[10] != "T" or not text.endswith("Z"):
            return None
        days = _days_from_civil(int(text[0:4]), int(text[5:7]), int(text[8:10]))
        secs = int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
        frac = text[20:-1] if text[19] == "." else ""
        return days * 86400.0 + secs + (int(frac) / 10 ** len(frac) if frac else 0.0)
    except (ValueError, IndexError):
        return None


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def since(started_at: str | None, now: float) -> str:
    start = parse_ts(started_at) if isinstance(started_at, str) else None
    return human_duration(None if start is None else now - start)


def local_time(iso: str | None, now: float) -> str:
    """An ISO UTC time as local clock time (with the date when it is not today)."""
    ts = parse_ts(iso) if isinstance(iso, str) else None
    if ts is None:
        return str(iso)
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def printable(text: object) -> str:
    """Daemon text made safe for a terminal: control characters (escapes) become spaces."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else " " for c in s)


def cut(text: object, width: int) -> str:
    s = printable(text)
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


def wrap(text: object, first: str, indent: str = "    ", max_lines: int = 4) -> list[str]:
    import textwrap

    return textwrap.wrap(
        printable(text),
        WIDTH,
        initial_indent=first,
        subsequent_indent=indent,
        max_lines=max_lines,
        placeholder=" …",
        break_on_hyphens=False,
    )


def money(value: object) -> str:
    if not isinstance(value, int | float) or not value:
        return "-"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.4f}"


def tokens(value: int) -> str:
    if not value:
        return "-"
    return str(value) if value < 10_000 else f"{value / 1000:.0f}k"


def emit_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# --- status, list, show, watch: what people read ------------------------------------------


def format_status(st: dict[str, Any], now: float) -> str:
    d = st.get("daemon") or {}
    out = [
        f"batchd {d.get('version', '?')}, pid {d.get('pid', '?')}, {d.get('backend', '?')}, "
        f"up {human_duration(d.get('uptime_s'))}"
    ]
    if st.get("queue_paused"):
        reason = str(st.get("pause_reason") or "no reason given")
        out += wrap(reason, "queue: PAUSED: ", max_lines=8)
        if "resume" not in reason:
            out.append("    resume it with `batchctl resume --all`")
    else:
        out.append("queue: running")
    if st.get("retry_enabled"):
        out.append("automatic retry: on")
    else:
        out.append("automatic retry: off (`batchctl consent` turns it on)")
    for p in st.get("problems") or []:
        where = f" [{p['batch_id']}]" if p.get("batch_id") else ""
        out += wrap(p.get("message", ""), f"problem: {p.get('kind', '?')}{where}: ")
    out += current_lines(st, now)
    batches = st.get("batches") or []
    if not batches:
        out.append("no batches (drop a file into the spool, or `batchctl submit FILE`)")
        return "\n".join(out)
    out.append("")
    out += batch_table(batches, now)
    if st.get("total_cost_usd"):
        out.append(f"total cost: {money(st['total_cost_usd'])}")
    return "\n".join(out)


def current_lines(st: dict[str, Any], now: float) -> list[str]:
    cur = st.get("current")
    if cur:
        idx, total = cur.get("feature_index", 0), cur.get("total_features", "?")
        return [
            cut(
                f"running: {cur['batch_id']} feature {idx + 1}/{total}, "
                f"attempt {cur.get('attempt', '?')}, {since(cur.get('started_at'), now)}",
                WIDTH,
            ),
            cut(f"  #{idx}: {printable(cur.get('feature', ''))}", WIDTH),
        ]
    if st.get("next_retry_at"):
        w = st.get("waiting") or {}
        at = st["next_retry_at"]
        left = parse_ts(at)
        return [
            cut(
                f"waiting: {w.get('batch_id', '?')} index {w.get('feature_index', '?')}, "
                f"attempt {w.get('attempt', '?')} at {local_time(at, now)} "
                f"(in {human_duration(None if left is None else left - now)})",
                WIDTH,
            )
        ]
    return ["running: nothing"]


def batch_table(batches: list[dict[str, Any]], now: float) -> list[str]:
    rows = [f"{'BATCH':<28} {'STATUS':<11} {'DONE/FAIL/TOTAL':>15} {'COST':>8} {'BRK':<4} ETA"]
    for b in batches:
        counts = f"{b.get('completed', 0)}/{b.get('failed', 0)}/{b.get('total_features', 0)}"
        rows.append(
            f"{cut(b['batch_id'], 28):<28} {cut(b.get('status', '?'), 11):<11} {counts:>15} "
            f"{money(b.get('cost_usd')):>8} {'OPEN' if b.get('circuit_breaker_open') else 'ok':<4} "
            f"{'-' if b.get('status') in FINISHED else human_duration(b.get('eta_s'))}"
        )
        if b.get("status") == "paused" and b.get("pause_reason"):
            rows += wrap(b["pause_reason"], "  paused: ")
        if b.get("next_attempt_at"):
            rows.append(f"  next attempt at {local_time(b['next_attempt_at'], now)}")
    return rows


def format_list(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return "no batches"
    rows = [f"{'BATCH':<28} {'STATUS':<11} {'DONE/FAIL/TOTAL':>15} {'COST':>8}  NAME"]
    for b in batches:
        counts = f"{b.get('completed', 0)}/{b.get('failed', 0)}/{b.get('total_features', 0)}"
        head = (
            f"{cut(b['batch_id'], 28):<28} {cut(b.get('status', '?'), 11):<11} {counts:>15} "
            f"{money(b.get('cost_usd')):>8}  "
        )
        rows.append(head + cut(b.get("name", ""), WIDTH - len(head)))
    return "\n".join(rows)


def feature_statuses(state: dict[str, Any], running: int | None) -> list[str]:
    """completed, failed, skipped, running or pending, for each feature by index."""
    out = ["pending"] * len(state.get("features") or [])
    if running is not None and 0 <= running < len(out):
        out[running] = "running"
    settled = (
        ("failed", [f.get("feature_index") for f in state.get("failed_features") or []]),
        ("skipped", state.get("skipped_features") or []),
        ("completed", state.get("completed_features") or []),
    )
    for name, indices in settled:
        for i in indices:
            if isinstance(i, int) and 0 <= i < len(out):
                out[i] = name
    return out


def format_show(result: dict[str, Any], now: float) -> str:
    b, s, r = result["batch"], result["state"], result.get("retry") or {}
    hist: list[dict[str, Any]] = s.get("processing_history") or []
    running = hist[-1]["feature_index"] if hist and hist[-1].get("outcome") is None else None
    reason = f" ({b['pause_reason']})" if b.get("pause_reason") else ""
    out = [
        cut(f"{b['batch_id']}  {b.get('name', '')}", WIDTH),
        f"status: {b.get('status')}{reason}",
        cut(
            f"source: {s.get('source_type', 'file')}, cwd: {s.get('cwd') or '(runner.cwd)'}", WIDTH
        ),
        f"features: {b.get('total_features')}: {b.get('completed', 0)} completed, "
        f"{b.get('failed', 0)} failed, {b.get('skipped', 0)} skipped",
        f"retries: {r.get('global_retry_count', 0)} so far; breaker "
        f"{'OPEN' if r.get('circuit_breaker_open') else 'closed'}, "
        f"consecutive failures: {r.get('consecutive_failures', 0)}",
    ]
    if r.get("next_attempt_at"):
        out.append(f"next attempt at {local_time(r['next_attempt_at'], now)}")
    out.append("")
    out += feature_rows(s, running, now)
    return "\n".join(out)


def feature_rows(state: dict[str, Any], running: int | None, now: float) -> list[str]:
    by_index: dict[int, list[dict[str, Any]]] = {}
    for a in state.get("processing_history") or []:
        by_index.setdefault(a.get("feature_index", -1), []).append(a)
    errors = {
        f.get("feature_index"): f.get("error_message") for f in state.get("failed_features", ())
    }
    out = [f"{'#':>4} {'STATUS':<9} {'ATT':>3} {'TIME':>7} {'TOKENS':>6} {'COST':>8}  FEATURE"]
    total_s = 0.0
    statuses = feature_statuses(state, running)
    for i, feature in enumerate(state.get("features") or []):
        runs = by_index.get(i, [])
        took = 0.0
        for a in runs:
            if a.get("duration_s") is not None:
                took += a["duration_s"]
            elif a.get("outcome") is None and i == running:
                start = parse_ts(a.get("started_at") or "")
                took += 0.0 if start is None else max(0.0, now - start)
        total_s += took
        cost = sum(a.get("cost_usd") or 0.0 for a in runs)
        used = sum(a.get("tokens") or 0 for a in runs)
        head = (
            f"{i:>4} {statuses[i]:<9} {len(runs):>3} "
            f"{human_duration(took) if runs else '-':>7} {tokens(used):>6} {money(cost):>8}  "
        )
        out.append(head + cut(feature, WIDTH - len(head)))
        if i in errors:
            out += wrap(errors[i] or "(no message)", "       error: ", " " * 14, max_lines=3)
    attempts = len(state.get("processing_history") or [])
    out.append(
        f"{'':>4} {'total':<9} {attempts:>3} {human_duration(total_s):>7} "
        f"{tokens(state.get('context_token_estimate') or 0):>6} "
        f"{money(state.get('cost_usd')):>8}"
    )
    return out


def progress_line(st: dict[str, Any], now: float) -> str:
    """One line (under 80 columns) for ``watch``: batch, index/total, elapsed, ETA, feature."""
    cur = st.get("current")
    if cur:
        batches: list[dict[str, Any]] = st.get("batches") or []
        item = next((b for b in batches if b.get("batch_id") == cur["batch_id"]), {})
        head = (
            f"{cur['batch_id']} {cur.get('feature_index', 0) + 1}/{cur.get('total_features', '?')}"
            f" {since(cur.get('started_at'), now)} eta {human_duration(item.get('eta_s'))}: "
        )
        head = cut(head, WIDTH - 11)
        return head + cut(cur.get("feature", ""), WIDTH - 1 - len(head))
    if st.get("queue_paused"):
        return cut(f"queue paused: {st.get('pause_reason')}", WIDTH - 1)
    if st.get("next_retry_at"):
        w = st.get("waiting") or {}
        left = parse_ts(st["next_retry_at"])
        wait = human_duration(None if left is None else left - now)
        return cut(
            f"waiting {wait} to retry {w.get('batch_id')} index {w.get('feature_index')}", WIDTH - 1
        )
    left_n = sum(1 for b in st.get("batches") or [] if b.get("status") not in FINISHED)
    if not left_n:
        return "idle (nothing queued)"
    return f"idle ({left_n} unfinished {'batch' if left_n == 1 else 'batches'})"


def describe(cmd: str, r: dict[str, Any]) -> str:
    """One human sentence for the result of a control command."""
    if cmd == "pause":
        stopped = (
            "; its running feature was stopped and will run again"
            if r.get("stopped_running")
            else ""
        )
        return f"paused {r.get('batch_id') or 'the queue'}{stopped}"
    if cmd == "resume":
        ids = ", ".join(r.get("resumed") or [])
        queue = "the queue is still paused" if r.get("queue_paused") else "the queue runs"
        return f"resumed {ids}; {queue}" if ids else f"no batch was paused; {queue}"
    if cmd == "cancel":
        stopped = "; its running feature was stopped" if r.get("stopped_running") else ""
        return f"cancelled {r.get('batch_id')}{stopped}"
    if cmd == "retry":
        again = [str(i) for i in r.get("requeued") or []]
        noun = "feature" if len(again) == 1 else "features"
        what = f"{noun} {', '.join(again)} will run again" if again else "no failed feature to run"
        return f"{r.get('batch_id')}: {what} (status {r.get('status')})"
    if cmd == "skip":
        return f"{r.get('batch_id')}: feature {r.get('index')} skipped (status {r.get('status')})"
    if cmd == "reset-breaker":
        return f"{r.get('batch_id')}: circuit breaker closed"
    if cmd == "prune":
        removed = r.get("removed") or []
        noun = "batch" if len(removed) == 1 else "batches"
        return "\n".join([f"removed {len(removed)} finished {noun}", *(f"  {b}" for b in removed)])
    return json.dumps(r, ensure_ascii=False)


# --- the daemon commands -----------------------------------------------------------------


def batch_id(text: str) -> str:
    """A command-line batch id, checked before it reaches the socket (or any path)."""
    if not is_batch_id(text):
        die(
            f"unknown batch {printable(text)!r}: a batch id looks like "
            "batch-20261124-050653-123456; `batchctl list` shows them"
        )
    return text


def control_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``args`` of a control command, checked (exit 2 on a usage error)."""
    cmd = args.command
    if cmd == "pause":
        req: dict[str, Any] = {"now": bool(args.now)}
        if args.batch_id is not None:
            req["batch_id"] = batch_id(args.batch_id)
        return req
    if cmd == "resume":
        if args.all == (args.batch_id is not None):
            die("resume needs BATCH_ID or --all, not both", EXIT_USAGE)
        return {"all": True} if args.all else {"batch_id": batch_id(args.batch_id)}
    if cmd == "skip":
        if args.index < 0:
            die("skip: INDEX counts from 0 (see `batchctl show BATCH_ID`)", EXIT_USAGE)
        return {"batch_id": batch_id(args.batch_id), "index": args.index}
    if cmd == "prune":
        if args.older_than < 0:
            die("prune: --older-than DAYS must be 0 or more", EXIT_USAGE)
        return {"older_than_days": args.older_than}
    return {"batch_id": batch_id(args.batch_id)}  # cancel, retry, reset-breaker


def cmd_read(path: Path, args: argparse.Namespace) -> int:
    """status, list, show, ping: one request, its result printed."""
    cmd = args.command
    req = {"batch_id": batch_id(args.batch_id)} if cmd == "show" else {}
    result = call(path, cmd, req)
    if args.json:
        emit_json(result)
    elif cmd == "status":
        print(format_status(result, time.time()))
    elif cmd == "list":
        print(format_list(result.get("batches") or []))
    elif cmd == "show":
        print(format_show(result, time.time()))
    else:
        print(f"batchd {result.get('version')} is running (pid {result.get('pid')})")
    return EXIT_OK


def cmd_logs(path: Path, args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"batch_id": batch_id(args.batch_id), "follow": bool(args.follow)}
    if args.index is not None:
        if args.index < 0:
            die("logs: INDEX counts from 0", EXIT_USAGE)
        req["index"] = args.index
    if args.follow:
        return follow_logs(path, req, args.json)
    result = call(path, "logs", req)
    if args.json:
        emit_json(result)
        return EXIT_OK
    if result.get("truncated"):
        print(f"batchctl: showing the end of {result.get('path')}", file=sys.stderr)
    text = str(result.get("text", ""))
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return EXIT_OK


def follow_logs(path: Path, req: dict[str, Any], as_json: bool) -> int:
    """Stream ``log`` events until the feature settles (the reply) or Ctrl-C."""
    try:
        with Connection(path, None) as conn:
            conn.send("logs", req)
            while True:
                msg = conn.message()
                if "event" not in msg:
                    result = result_of(msg)
                    if as_json:
                        print(json.dumps(result, ensure_ascii=False), flush=True)
                    return EXIT_OK
                event = msg["event"] if isinstance(msg["event"], dict) else {}
                if as_json:
                    print(json.dumps(event, ensure_ascii=False), flush=True)
                elif event.get("type") == "log":
                    sys.stdout.write(str(event.get("text", "")))
                    sys.stdout.flush()
                elif event.get("type") == "attempt":
                    sys.stdout.flush()
                    print(
                        f"batchctl: feature {event.get('index')}, attempt {event.get('attempt')}",
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_watch(path: Path, as_json: bool) -> int:
    """One live progress line from the ``status`` events; Ctrl-C ends it with exit 0."""
    tty = sys.stdout.isatty() and not as_json
    drawn = 0
    last = ""
    status: dict[str, Any] | None = None
    try:
        with Connection(path, TICK_S if tty else None) as conn:
            conn.send("watch", {})
            while True:
                try:
                    msg = conn.message()
                except TimeoutError:  # only on a terminal: tick the elapsed time
                    if status is not None:
                        drawn = redraw(progress_line(status, time.time()), drawn)
                    continue
                if "event" not in msg:
                    result_of(msg)
                    return EXIT_OK
                event = msg["event"] if isinstance(msg["event"], dict) else {}
                if event.get("type") != "status" or not isinstance(event.get("status"), dict):
                    continue
                status = event["status"]
                if as_json:
                    print(json.dumps(status, ensure_ascii=False), flush=True)
                    continue
                line = progress_line(status, time.time())
                if tty:
                    drawn = redraw(line, drawn)
                elif line != last:
                    print(line, flush=True)
                last = line
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()


def redraw(line: str, drawn: int) -> int:
    sys.stdout.write("\r" + line.ljust(drawn))
    sys.stdout.flush()
    return len(line)


# --- submit -----------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Text from gh as one line: escape sequences out, whitespace runs (tabs and newlines
    included) to one space, other control characters out; other Unicode is kept."""
    import re

    text = re.sub(
        r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
        r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|\Z)"  # OSC: titles, hyperlinks
        r"|\x1b[PX^_][^\x1b]*(?:\x1b\\|\Z)"  # DCS, SOS, PM, APC strings
        r"|\x1b[ -/]*[0-~]",  # the other two-character escapes
        "",
        text,
    )
    text = "".join(c if c.isspace() or c.isprintable() else "" for c in text)
    return " ".join(text.split())


def clean_title(title: str) -> str:
    """An issue title as one line of at most 200 characters; a cut one ends in ``...``."""
    text = one_line(title)
    if len(text) <= TITLE_MAX:
        return text
    return text[: TITLE_MAX - len(CUT_MARK)].rstrip() + CUT_MARK


def issue_feature(number: int, title: str) -> str:
    """The feature line of a GitHub issue: ``Issue #N: <title>``, ``(no title)`` for a blank one."""
    return f"Issue #{number}: {clean_title(title) or NO_TITLE}"


def gh_timeout() -> float:
    """10 s per gh call. ``BATCHCTL_GH_TIMEOUT`` overrides it: for the test suite only."""
    try:
        value = float(os.environ.get("BATCHCTL_GH_TIMEOUT", ""))
    except ValueError:
        return GH_TIMEOUT_S
    return value if value > 0 else GH_TIMEOUT_S


def gh_feature(number: int, repo: str | None) -> str:
    """``Issue #N: <title>`` from ``gh issue view``; any trouble ends the run naming the fix."""
    import subprocess

    argv = ["gh", "issue", "view", str(number), "--json", "number,title"]
    if repo:
        argv += ["--repo", repo]
    timeout = gh_timeout()
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        die(
            f"issue #{number}: the GitHub CLI `gh` is not installed (or not on PATH); "
            "install gh: https://cli.github.com, then run `gh auth login`"
        )
    except subprocess.TimeoutExpired:
        die(
            f"issue #{number}: `gh issue view {number}` did not answer within {timeout:g}s; "
            "check your network and `gh auth status`, then try again"
        )
    except OSError as e:
        die(
            f"issue #{number}: cannot run gh: {e.strerror or e}; reinstall gh: https://cli.github.com"
        )
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        die(gh_error(number, repo, proc.returncode, stderr))
    try:
        data = json.loads(proc.stdout)
        title = data["title"]
        if not isinstance(title, str):
            raise TypeError(title)
    except (ValueError, KeyError, TypeError):
        shown = cut(one_line(proc.stdout.decode("utf-8", "replace")), 60)
        die(
            f"issue #{number}: unexpected output from `gh issue view` (not JSON with a title): "
            f"{shown!r}; update gh: https://cli.github.com"
        )
    return issue_feature(number, title)


def gh_error(number: int, repo: str | None, code: int, stderr: str) -> str:
    said = cut(one_line(stderr), 160) or f"exit status {code}"
    low = stderr.lower()
    if any(
        k in low
        for k in (
            "auth login",
            "not logged",
            "authenticat",
            "bad credentials",
            "http 401",
            "gh_token",
        )
    ):
        return f"issue #{number}: gh is not logged in to GitHub; run `gh auth login` (gh: {said})"
    if "could not resolve" in low or "not found" in low:
        where = f" in {repo}" if repo else " in the current directory's repository"
        return (
            f"issue #{number}: not found{where}; check the issue number and --repo "
            f"OWNER/NAME (gh: {said})"
        )
    return f"issue #{number}: `gh issue view` failed (exit status {code}): {said}"


def check_repo(repo: str | None) -> None:
    """``OWNER/NAME`` or ``HOST/OWNER/NAME``: never something gh could take for an option."""
    if repo is None:
        return
    parts = repo.split("/")
    ok = len(parts) in (2, 3) and all(
        p and not p.startswith("-") and all(c.isalnum() or c in "._-" for c in p) for p in parts
    )
    if not ok:
        die(f"--repo {printable(repo)!r}: expected OWNER/NAME (or HOST/OWNER/NAME)", EXIT_USAGE)


def issue_numbers(raw: list[int]) -> list[int]:
    numbers = list(dict.fromkeys(raw))
    bad = [n for n in numbers if n <= 0]
    if bad:
        die(f"--issues: {bad[0]} is not an issue number (positive integers only)", EXIT_USAGE)
    if len(numbers) > MAX_ISSUES:
        die(
            f"--issues: {len(numbers)} issues, at most {MAX_ISSUES} per batch; "
            "submit them in several batches"
        )
    return numbers


def issues_request(args: argparse.Namespace, cwd: str) -> tuple[dict[str, Any], str]:
    numbers = issue_numbers(args.issues)
    features = [gh_feature(n, args.repo) for n in numbers]  # all or nothing: no spool write yet
    name = f"issues {', '.join(f'#{n}' for n in numbers)}"
    if args.repo:
        name = f"{args.repo} {name}"
    request = {
        "features": features,
        "source_type": "github_issues",
        "issue_numbers": numbers,
        "cwd": cwd,
        "name": cut(name, 200),
    }
    return request, "issues"


def read_spool_input(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; a FIFO or a device is refused, never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        die(f"{path}: cannot open: {e.strerror}")
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            die(f"{path}: not a regular file; submit reads plain feature files only")
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as e:
        die(f"{path}: cannot read: {e.strerror}")
    finally:
        os.close(fd)


def file_request(
    args: argparse.Namespace, cwd: str | None, cfg: Config
) -> tuple[dict[str, Any], str]:
    from batchd.parse import ParseError, parse_spool_file

    limits = spool_limits(cfg)
    data = read_spool_input(args.file, limits.max_file_bytes + 1)
    try:
        parsed = parse_spool_file(os.path.basename(args.file), data, limits)
    except ParseError as e:
        die(str(e))
    request = {
        "features": parsed.features,
        "source_type": parsed.source_type,
        "issue_numbers": parsed.issue_numbers,
        "cwd": cwd or parsed.cwd or caller_cwd(),
        "name": parsed.name,
    }
    return request, Path(args.file).stem


def spool_limits(cfg: Config) -> Limits:
    from batchd.parse import Limits

    return Limits(
        max_file_bytes=cfg.spool.max_file_bytes,
        max_features=cfg.spool.max_features,
        max_line_chars=cfg.spool.max_line_chars,
    )


def caller_cwd() -> str:
    try:
        return os.getcwd()
    except OSError as e:
        die(f"the current directory is gone ({e.strerror}); cd somewhere or pass --cwd DIR")


def checked_cwd(cwd: str | None) -> str | None:
    if cwd is None:
        return None
    full = os.path.abspath(os.path.expanduser(cwd))
    if not os.path.isdir(full):
        die(f"--cwd {printable(cwd)!r}: no such directory")
    return full


def load_full_config(args: argparse.Namespace) -> Config:
    from batchd.config import load_config

    try:
        return load_config(
            os.environ,
            config=args.config,
            spool=args.spool,
            state_dir=args.state_dir,
            socket=args.socket,
        )
    except ConfigError as e:
        die(str(e))


def write_request(spool: Path, stem: str, body: bytes) -> Path:
    """``.<name>.tmp`` (0600, fsynced), renamed to ``<stem>-<time>-<pid>.json``, dir fsynced."""
    from batchd.store import StoreError, ensure_dir, write_durable

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip("._-") or "batch"
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    name = f"{safe[:80]}-{stamp}-{os.getpid()}.json"
    try:
        ensure_dir(spool)
        write_durable(spool, name, body)
    except (StoreError, OSError) as e:
        die(f"cannot write into the spool dir {spool}: {getattr(e, 'strerror', None) or e}")
    return spool / name


def cmd_submit(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.issues is None):
        die("submit needs FILE or --issues N [N ...], not both", EXIT_USAGE)
    if args.file is not None and args.repo is not None:
        die("--repo goes with --issues", EXIT_USAGE)
    check_repo(args.repo)
    cfg = load_full_config(args)
    cwd = checked_cwd(args.cwd)
    if args.issues is not None:
        request, stem = issues_request(args, cwd or caller_cwd())
    else:
        request, stem = file_request(args, cwd, cfg)
    # What we write must be what the daemon accepts: check it with the same parser.
    from batchd.parse import ParseError, parse_spool_file

    body = json.dumps(request, ensure_ascii=False).encode()
    try:
        parse_spool_file("request.json", body, spool_limits(cfg))
    except ParseError as e:
        die(str(e))
    maybe_ask_consent(cfg)
    written = write_request(cfg.paths.spool_dir, stem, body)
    running = ping_after_submit(cfg.paths.socket)
    if args.json:
        emit_json(
            {"path": str(written), "features": len(request["features"]), "daemon_running": running}
        )
        return EXIT_OK
    print(f"queued {len(request['features'])} features: {written}")
    if not running:
        print(f"batchd is not running; the batch starts when it does:\n  {HOW_TO_START}")
    return EXIT_OK


def ping_after_submit(path: Path) -> bool:
    """A ping makes a running daemon scan the spool at once; False when none runs."""
    try:
        call(path, "ping", timeout=5)
    except Failure as e:
        if e.code == EXIT_DOWN:
            return False
        print(f"batchctl: warning: {e.message}", file=sys.stderr)
    return True


# --- consent ---------------------------------------------------------------------------------

CONSENT_TEXT = """\
Automatic retry

When a feature fails for a reason that is not its own (a network error, a
rate limit, an overloaded API, a timeout), batchd can run it again after a
wait that grows each time (backoff). Permanent failures (a syntax error, a
TypeError, ...) are never retried.

Limits from your config: at most {per} retries per feature
(retry.max_per_feature) and {glob} per batch (retry.max_global); after {thr}
failed attempts in a row the circuit breaker stops retrying
(breaker.threshold).

Turn it off at any time with `batchctl consent --disable`, or set
BATCH_RETRY_ENABLED=false in the daemon's environment.
"""
PROMPT = "Enable automatic retry? [y/N]: "


def user_state_path(paths: Paths) -> Path:
    return paths.state_dir / "user_state.json"


def current_consent(paths: Paths) -> tuple[bool | None, str]:
    """The setting batchctl can see, and where it comes from (environment, then the file)."""
    from batchd.policy import parse_consent
    from batchd.store import read_nofollow

    env = parse_consent(os.environ.get("BATCH_RETRY_ENABLED"))
    if env is not None:
        return env, "BATCH_RETRY_ENABLED in this environment"
    path = user_state_path(paths)
    try:
        value = json.loads(read_nofollow(path, 1 << 20)).get("batch_retry_enabled")
    except FileNotFoundError:
        return None, "nothing saved yet"
    except (OSError, ValueError, AttributeError) as e:
        print(
            f"batchctl: warning: cannot read {path}: {getattr(e, 'strerror', None) or e}",
            file=sys.stderr,
        )
        return None, f"{path} is unreadable"
    return (value, f"saved in {path}") if isinstance(value, bool) else (None, "nothing saved yet")


def save_consent(paths: Paths, enabled: bool) -> str:
    """Through the daemon when it runs (it reloads the setting), else the file itself."""
    try:
        result = call(paths.socket, "consent", {"enabled": enabled})
        return str(result.get("path") or user_state_path(paths))
    except Failure as e:
        if e.code != EXIT_DOWN:
            raise
    from batchd.store import StoreError, ensure_dir, write_durable

    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    body = json.dumps({"batch_retry_enabled": enabled, "updated_at": stamp}).encode()
    try:
        ensure_dir(paths.state_dir)
        write_durable(paths.state_dir, "user_state.json", body)
    except (StoreError, OSError) as e:
        die(f"cannot save the setting: {getattr(e, 'strerror', None) or e}")
    return str(user_state_path(paths))


def ask_consent(cfg: Config | None) -> bool:
    """Explain retries with the configured limits (else the defaults) and ask; Enter means no."""
    from batchd.config import BreakerConfig, RetryConfig

    retry, breaker = (cfg.retry, cfg.breaker) if cfg else (RetryConfig(), BreakerConfig())
    print(
        CONSENT_TEXT.format(per=retry.max_per_feature, glob=retry.max_global, thr=breaker.threshold)
    )
    try:
        answer = input(PROMPT)
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def maybe_ask_consent(cfg: Config) -> None:
    """``submit`` asks once, on a terminal, when retry is neither enabled nor disabled yet."""
    if not sys.stdin.isatty() or current_consent(cfg.paths)[0] is not None:
        return
    enabled = ask_consent(cfg)
    where = save_consent(cfg.paths, enabled)
    print(f"automatic retry {'enabled' if enabled else 'disabled'} (saved in {where})\n")


def config_for_question(args: argparse.Namespace) -> Config | None:
    try:
        return load_full_config(args)
    except Failure as e:
        print(f"batchctl: warning: {e.message}; showing the default limits", file=sys.stderr)
        return None


def cmd_consent(args: argparse.Namespace, paths: Paths) -> int:
    if args.enable or args.disable:
        enabled = bool(args.enable)
    elif sys.stdin.isatty():
        enabled = ask_consent(config_for_question(args))
    else:
        value, source = current_consent(paths)
        if args.json:
            emit_json(
                {"retry_enabled": value, "source": source, "path": str(user_state_path(paths))}
            )
        elif value is None:
            print(f"automatic retry: not set, so off ({source})")
            print("`batchctl consent --enable` turns it on")
        else:
            print(f"automatic retry: {'enabled' if value else 'disabled'} ({source})")
        return EXIT_OK
    where = save_consent(paths, enabled)
    if args.json:
        emit_json({"retry_enabled": enabled, "path": where})
        return EXIT_OK
    print(f"automatic retry {'enabled' if enabled else 'disabled'} (saved in {where})")
    if "BATCH_RETRY_ENABLED" in os.environ:
        print(
            "note: BATCH_RETRY_ENABLED is set in this shell; "
            "set in the daemon's environment, it wins over this setting"
        )
    return EXIT_OK


# --- argparse and main -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Global options work before and after the command: each subparser has them too, with
    # SUPPRESS defaults so that a value given before the command is not overwritten.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the daemon's result as JSON",
    )
    common.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="control socket (default: resolved as batchd does)",
    )
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
    common.add_argument(
        "--spool", metavar="DIR", default=argparse.SUPPRESS, help="spool dir (submit)"
    )
    common.add_argument(
        "--state-dir",
        dest="state_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="state dir (consent without a daemon)",
    )
    p = argparse.ArgumentParser(
        prog="batchctl", parents=[common], description="Control batchd, the feature batch daemon."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    add("status", "the daemon, the queue, the running feature and every batch")
    add("list", "every batch")
    add("ping", "check that the daemon answers")
    add("show", "one batch, feature by feature").add_argument("batch_id", metavar="BATCH_ID")
    sp = add("submit", "queue a feature file, or GitHub issues (no daemon needed)")
    sp.add_argument("file", nargs="?", metavar="FILE")
    sp.add_argument("--issues", nargs="+", type=int, metavar="N")
    sp.add_argument("--repo", metavar="OWNER/NAME", help="with --issues: passed to gh")
    sp.add_argument("--cwd", metavar="DIR", help="run the features there (default: here)")
    sp = add("pause", "pause a batch, or with no BATCH_ID the whole queue")
    sp.add_argument("batch_id", nargs="?", metavar="BATCH_ID")
    sp.add_argument("--now", action="store_true", help="also stop the running feature")
    sp = add("resume", "resume a batch, or --all (also lifts a queue pause)")
    sp.add_argument("batch_id", nargs="?", metavar="BATCH_ID")
    sp.add_argument("--all", action="store_true", help="every paused batch and the queue")
    for name, text in (
        ("cancel", "cancel a batch"),
        ("retry", "run a batch's failed features again"),
        ("reset-breaker", "close a batch's circuit breaker"),
    ):
        add(name, text).add_argument("batch_id", metavar="BATCH_ID")
    sp = add("skip", "never run one feature (recorded as skipped)")
    sp.add_argument("batch_id", metavar="BATCH_ID")
    sp.add_argument("index", type=int, metavar="INDEX", help="feature index, from 0")
    sp = add("logs", "a feature's runner output")
    sp.add_argument("batch_id", metavar="BATCH_ID")
    sp.add_argument("index", nargs="?", type=int, metavar="INDEX", help="default: the latest")
    sp.add_argument("--follow", "-f", action="store_true", help="stream until the feature ends")
    add("watch", "live progress until Ctrl-C")
    sp = add("consent", "turn automatic retry on or off (asks on a terminal)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--enable", action="store_true")
    g.add_argument("--disable", action="store_true")
    sp = add("prune", "delete finished batches")
    sp.add_argument(
        "--older-than",
        dest="older_than",
        type=int,
        default=30,
        metavar="DAYS",
        help="age in days (default 30)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "submit":
        return cmd_submit(args)
    try:
        if cmd == "consent":
            paths, _raw = load_paths(
                os.environ,
                config=args.config,
                spool=args.spool,
                state_dir=args.state_dir,
                socket=args.socket,
            )
            return cmd_consent(args, paths)
        # The rest only needs the socket, found without parsing more than needed.
        path = resolve_socket(os.environ, config=args.config, socket=args.socket)
    except ConfigError as e:
        die(str(e))
    if cmd in ("status", "list", "show", "ping"):
        return cmd_read(path, args)
    if cmd == "logs":
        return cmd_logs(path, args)
    if cmd == "watch":
        return cmd_watch(path, args.json)
    req = control_request(args)
    result = call(path, cmd, req)
    emit_json(result) if args.json else print(describe(cmd, result))
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name, default in (
        ("json", False),
        ("socket", None),
        ("config", None),
        ("spool", None),
        ("state_dir", None),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        code = run(args)
        sys.stdout.flush()
    except Failure as e:
        sys.stdout.flush()
        print(f"batchctl: {e.message}", file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `batchctl status | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)


if __name__ == "__main__":
    main()
