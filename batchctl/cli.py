"""batchctl: the thin client of batchd (SPEC section 8).

Owns argument parsing, talking to the control socket, and printing. It must
start fast: read commands import only the standard library plus
``batchd.protocol`` and ``batchd.paths`` — never anyio or msgspec (``submit``
and an offline ``consent`` load the daemon's parser and config lazily). It
never passes anything through a shell: ``gh`` is run as an argv list.

Exit codes: 0 success, 1 refused or failed, 2 usage, 3 daemon not reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from batchd.paths import ConfigError, Paths, load_paths, resolve_socket
from batchd.protocol import VERSION, is_batch_id

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:  # typing costs import time; annotations are strings here
    from collections.abc import Iterator
    from typing import Any, NoReturn

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
GH_TIMEOUT_S = float(os.environ.get("BATCHCTL_GH_TIMEOUT", "10"))  # env: test-only override
MAX_ISSUES = 100
TITLE_MAX = 200
WIDTH = 80


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def die(message: str, code: int = EXIT_FAIL) -> NoReturn:
    raise Failure(message, code)


# --- the socket ------------------------------------------------------------------------


class Client:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self, timeout: float | None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            s.close()
            die(
                f"daemon not reachable at {self.path} ({e.strerror}); start it with 'batchd' "
                "in a terminal, or 'systemctl --user start batchd'",
                EXIT_DOWN,
            )
        except OSError as e:
            s.close()
            die(f"cannot connect to {self.path}: {e.strerror}", EXIT_DOWN)
        return s

    def lines(
        self, cmd: str, args: dict[str, Any], timeout: float | None
    ) -> Iterator[dict[str, Any]]:
        """Send one request; yield every line (events, then the reply)."""
        s = self._connect(timeout)
        with s:
            req = {"v": VERSION, "id": 1, "cmd": cmd, "args": args}
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except TimeoutError:
                    die(f"no answer from the daemon within {timeout:g}s")
                if not chunk:
                    die("the daemon closed the connection without answering")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg: dict[str, Any] = json.loads(line)
                    yield msg
                    if "event" not in msg:
                        return

    def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        for msg in self.lines(cmd, args or {}, timeout):
            if "event" in msg:
                continue
            return result_of(msg)
        die("no reply")


def result_of(msg: dict[str, Any]) -> dict[str, Any]:
    if msg.get("ok"):
        result: dict[str, Any] = msg.get("result") or {}
        return result
    err = msg.get("error") or {}
    die(str(err.get("message") or err.get("code") or "refused"))


# --- formatting helpers ----------------------------------------------------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (Howard Hinnant's algorithm; calendar costs 1.6 ms to import)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_ts(text: str) -> float:
    """``2026-11-24T05:06:53.123456Z`` -> epoch seconds (no datetime import)."""
    base, _, frac = text.rstrip("Z").partition(".")
    t = time.strptime(base, "%Y-%m-%dT%H:%M:%S")
    whole = _days_from_civil(t.tm_year, t.tm_mon, t.tm_mday) * 86400
    whole += t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
    return float(whole) + (int(frac) / 10 ** len(frac) if frac else 0.0)


def utc_now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def money(value: float | None) -> str:
    return "-" if not value else f"${value:.2f}" if value >= 0.995 else f"${value:.4f}"


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def format_status(st: dict[str, Any], now: float) -> str:
    d = st["daemon"]
    out = [
        f"batchd {d['version']}  pid {d['pid']}  {d['backend']}  up {human_duration(d['uptime_s'])}"
    ]
    if st["queue_paused"]:
        out.append(cut(f"queue: PAUSED ({st['pause_reason']})", WIDTH))
    else:
        out.append("queue: running")
    out.append(f"retries: {'enabled' if st['retry_enabled'] else 'off'} (global consent)")
    for p in st["problems"]:
        where = f" [{p['batch_id']}]" if p.get("batch_id") else ""
        out.append(cut(f"problem: {p['kind']}{where}: {p['message']}", WIDTH))
    cur = st.get("current")
    if cur:
        elapsed = human_duration(now - parse_ts(cur["started_at"]))
        total = cur.get("total_features", "?")
        pos = f"{cur['feature_index'] + 1}/{total}"
        head = f"now: {cur['batch_id']} {pos} attempt {cur['attempt']} ({elapsed}): "
        out.append(head + cut(cur["feature"], max(10, WIDTH - len(head))))
    elif st.get("next_retry_at"):
        wait = human_duration(max(0.0, parse_ts(st["next_retry_at"]) - now))
        w = st.get("waiting") or {}
        out.append(
            f"waiting: retry of {w.get('batch_id')} feature {w.get('feature_index')} in {wait}"
        )
    else:
        out.append("now: idle")
    batches = st["batches"]
    if not batches:
        out.append("no batches (drop a file into the spool, or 'batchctl submit FILE')")
        return "\n".join(out)
    out.append("")
    out.append(format_table(batches))
    total = st.get("total_cost_usd")
    if total:
        out.append(f"total cost: {money(total)}")
    return "\n".join(out)


def format_table(batches: list[dict[str, Any]]) -> str:
    rows = [
        f"{'BATCH':<28} {'STATUS':<11} {'DONE':>5} {'FAIL':>4} {'TOTAL':>5} "
        f"{'COST':>8} {'BRK':<4} {'ETA':>6}"
    ]
    for b in batches:
        status = b["status"]
        if status == "paused" and b.get("pause_reason"):
            status = "paused"
        rows.append(
            f"{b['batch_id']:<28} {status:<11} {b['completed']:>5} {b['failed']:>4} "
            f"{b['total_features']:>5} {money(b['cost_usd']):>8} "
            f"{'OPEN' if b['circuit_breaker_open'] else 'ok':<4} "
            f"{human_duration(b.get('eta_s')):>6}"
        )
        if b["status"] == "paused" and b.get("pause_reason"):
            rows.append(cut(f"  paused: {b['pause_reason']}", WIDTH))
        if b.get("next_attempt_at"):
            rows.append(f"  next attempt at {b['next_attempt_at']}")
    return "\n".join(rows)


def feature_rows(state: dict[str, Any], running_index: int | None) -> list[str]:
    attempts: dict[int, list[dict[str, Any]]] = {}
    for a in state["processing_history"]:
        attempts.setdefault(a["feature_index"], []).append(a)
    completed = set(state["completed_features"])
    failed = {f["feature_index"]: f for f in state["failed_features"]}
    skipped = set(state.get("skipped_features", []))
    out = [f"{'#':>4} {'STATUS':<10} {'ATT':>3} {'TIME':>7} {'COST':>8}  FEATURE"]
    for i, feature in enumerate(state["features"]):
        runs = attempts.get(i, [])
        if i in completed:
            status = "completed"
        elif i in failed:
            status = "failed"
        elif i in skipped:
            status = "skipped"
        elif i == running_index:
            status = "running"
        else:
            status = "pending"
        duration = sum(a.get("duration_s") or 0.0 for a in runs)
        cost = sum(a.get("cost_usd") or 0.0 for a in runs)
        took = human_duration(duration) if runs else "-"
        line = f"{i:>4} {status:<10} {len(runs):>3} {took:>7} {money(cost):>8}  "
        out.append(line + cut(feature, max(10, WIDTH - len(line))))
        if i in failed:
            out.append(cut(f"       error: {failed[i]['error_message']}", WIDTH))
    return out


def format_show(result: dict[str, Any]) -> str:
    b, s, r = result["batch"], result["state"], result["retry"]
    out = [
        f"{b['batch_id']}  {b['name']}",
        f"status: {b['status']}" + (f" ({b['pause_reason']})" if b.get("pause_reason") else ""),
        f"seq {b['seq']}, {b['completed']} completed, {b['failed']} failed, "
        f"{b.get('skipped', 0)} skipped of {b['total_features']}; "
        f"cwd {s.get('cwd') or '(runner.cwd)'}",
        f"cost {money(s['cost_usd'])}, tokens ~{s['context_token_estimate']}, "
        f"retries {r['global_retry_count']}, "
        f"breaker {'OPEN' if r['circuit_breaker_open'] else 'closed'} "
        f"({r['consecutive_failures']} consecutive failures)",
    ]
    if r.get("next_attempt_at"):
        out.append(f"next attempt at {r['next_attempt_at']}")
    out.append("")
    running = None
    hist = s["processing_history"]
    if hist and hist[-1]["outcome"] is None:
        running = hist[-1]["feature_index"]
    out.extend(feature_rows(s, running))
    out.append(f"{'':>4} {'total':<10} {len(hist):>3} {'':>7} {money(s['cost_usd']):>8}")
    return "\n".join(out)


# --- submit ------------------------------------------------------------------------------------


def clean_title(title: str) -> str:
    """Escape sequences out, whitespace runs to one space, control characters out, 200 max."""
    import re

    text = re.sub(
        r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]", "", title
    )
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text).strip()
    return text[:TITLE_MAX]


def gh_title(number: int, repo: str | None) -> str:
    import subprocess

    argv = ["gh", "issue", "view", str(number), "--json", "number,title"]
    if repo:
        argv += ["--repo", repo]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=GH_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        die(
            f"issue #{number}: 'gh' (GitHub CLI) is not installed or not on PATH; install it: https://cli.github.com"
        )
    except subprocess.TimeoutExpired:
        die(
            f"issue #{number}: 'gh issue view' did not answer within {GH_TIMEOUT_S:g}s; "
            "check your network and 'gh auth status'"
        )
    err = clean_title(proc.stderr)[:300]
    if proc.returncode != 0:
        low = proc.stderr.lower()
        if "auth login" in low or "not logged" in low or "authentication" in low:
            die(f"issue #{number}: gh is not logged in; run 'gh auth login' ({err})")
        if "could not resolve" in low or "not found" in low:
            where = (
                f" in {repo}"
                if repo
                else " (give --repo OWNER/NAME if this is not the current repo)"
            )
            die(f"issue #{number}: not found{where}; check the issue number ({err})")
        die(f"issue #{number}: gh failed with exit {proc.returncode}: {err}")
    try:
        data = json.loads(proc.stdout)
        title = data["title"]
        if not isinstance(title, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        die(f"issue #{number}: unexpected output from gh: {clean_title(proc.stdout)[:200]!r}")
    return f"Issue #{number}: {clean_title(title)}"


def write_request(spool: Path, stem: str, request: dict[str, Any]) -> Path:
    """Write a batch request atomically: ``.stem.tmp`` (fsynced), rename to ``stem-<time>.json``."""
    if not spool.exists():
        spool.mkdir(mode=0o700, parents=True)
    st = os.lstat(spool)
    if not stat.S_ISDIR(st.st_mode):
        die(f"spool dir {spool} is not a directory (symlinks are not followed)")
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "batch"
    stamp = utc_now_iso().replace("-", "").replace(":", "").replace(".", "")
    final = spool / f"{safe[:80]}-{stamp}.json"
    tmp = spool / f".{final.name}.tmp"
    data = json.dumps(request, ensure_ascii=False).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    dfd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


def cmd_submit(args: argparse.Namespace, paths: Paths) -> int:
    from batchd.config import load_config
    from batchd.parse import Limits, ParseError, parse_spool_file

    try:
        cfg = load_config(
            os.environ,
            config=args.config,
            spool=args.spool,
            state_dir=args.state_dir,
            socket=args.socket,
        )
    except ConfigError as e:
        die(str(e))
    limits = Limits(
        max_file_bytes=cfg.spool.max_file_bytes,
        max_features=cfg.spool.max_features,
        max_line_chars=cfg.spool.max_line_chars,
    )
    cwd = None
    if args.cwd is not None:
        cwd = os.path.abspath(os.path.expanduser(args.cwd))
        if not os.path.isdir(cwd):
            die(f"--cwd {args.cwd}: not a directory")
    if args.issues is not None:
        if args.file is not None:
            die("give either FILE or --issues, not both", EXIT_USAGE)
        numbers = list(dict.fromkeys(args.issues))
        if not numbers:
            die("--issues needs at least one issue number", EXIT_USAGE)
        bad = [n for n in numbers if n <= 0]
        if bad:
            die(f"issue numbers must be positive integers, got {bad[0]}", EXIT_USAGE)
        if len(numbers) > MAX_ISSUES:
            die(f"at most {MAX_ISSUES} issues per batch, got {len(numbers)}; split them")
        features = [gh_title(n, args.repo) for n in numbers]
        name = f"issues {numbers[0]}" + (f"..{numbers[-1]}" if len(numbers) > 1 else "")
        request = {
            "features": features,
            "source_type": "github_issues",
            "issue_numbers": numbers,
            "cwd": cwd or os.getcwd(),
            "name": f"{args.repo} {name}" if args.repo else name,
        }
        stem = "issues"
    else:
        if args.file is None:
            die("submit needs FILE or --issues N [N ...]", EXIT_USAGE)
        path = Path(args.file)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                die(f"{args.file}: not a regular file")
            with open(path, "rb") as f:
                data = f.read(limits.max_file_bytes + 1)
        except OSError as e:
            die(f"{args.file}: {e.strerror}")
        try:
            parsed = parse_spool_file(path.name, data, limits)
        except ParseError as e:
            die(str(e))
        request = {
            "features": parsed.features,
            "source_type": parsed.source_type,
            "issue_numbers": parsed.issue_numbers,
            "cwd": cwd or parsed.cwd or os.getcwd(),
            "name": parsed.name,
        }
        stem = path.stem
    # Validate what we write with the daemon's own rules.
    try:
        parse_spool_file("request.json", json.dumps(request).encode(), limits)
    except ParseError as e:
        die(str(e))
    maybe_ask_consent(paths)
    written = write_request(paths.spool_dir, stem, request)
    print(f"queued {len(request['features'])} features: {written}")
    try:  # a running daemon picks the request up at once
        Client(paths.socket).call("ping", timeout=2)
    except (Failure, OSError):
        print("(the daemon is not running; it will pick the batch up when it starts)")
    return EXIT_OK


# --- consent ------------------------------------------------------------------------------------

CONSENT_TEXT = """\
Automatic retry of failed features

When a feature fails for a reason that is not its own -- a network error, a
rate limit, an overloaded API, a timeout -- batchd can run it again after a
wait that grows each time (backoff). Permanent errors (a TypeError, a syntax
error, ...) are never retried.

Limits (from your config): up to {per} retries per feature, {glob} per batch;
after {thr} failed attempts in a row the circuit breaker stops retrying.

Turn it off any time with 'batchctl consent --disable', or set
BATCH_RETRY_ENABLED=false in the daemon's environment.
"""


def user_state_path(paths: Paths) -> Path:
    return paths.state_dir / "user_state.json"


def read_consent(paths: Paths) -> bool | None:
    env = os.environ.get("BATCH_RETRY_ENABLED")
    if env is not None and env.strip().lower() in (
        "true",
        "1",
        "yes",
        "y",
        "false",
        "0",
        "no",
        "n",
    ):
        return env.strip().lower() in ("true", "1", "yes", "y")
    path = user_state_path(paths)
    try:
        if os.path.islink(path):
            return None
        with open(path, "rb") as f:
            value = json.loads(f.read()).get("batch_retry_enabled")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def save_consent_offline(paths: Paths, enabled: bool) -> Path:
    state = paths.state_dir
    if not state.exists():
        state.mkdir(mode=0o700, parents=True)
    st = os.lstat(state)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        die(f"{state} is not a directory (symlinks are refused)")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(state, 0o700)
    path = user_state_path(paths)
    if os.path.islink(path):
        die(f"{path} is a symlink; batchd never follows links in its state: remove it")
    data = json.dumps({"batch_retry_enabled": enabled, "updated_at": utc_now_iso()}).encode()
    tmp = state / f".user_state.json.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def save_consent(paths: Paths, enabled: bool) -> str:
    try:
        result = Client(paths.socket).call("consent", {"enabled": enabled}, timeout=10)
        return str(result.get("path", user_state_path(paths)))
    except Failure as e:
        if e.code != EXIT_DOWN:
            raise
    return str(save_consent_offline(paths, enabled))


def ask_consent(paths: Paths) -> bool:
    per, glob, thr = 3, 50, 5
    try:
        from batchd.config import load_config

        cfg = load_config(os.environ)
        per, glob, thr = cfg.retry.max_per_feature, cfg.retry.max_global, cfg.breaker.threshold
    except Exception:  # the question still makes sense with the defaults
        pass
    print(CONSENT_TEXT.format(per=per, glob=glob, thr=thr))
    try:
        answer = input("Enable automatic retry? [y/N]: ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def maybe_ask_consent(paths: Paths) -> None:
    if sys.stdin.isatty() and sys.stdout.isatty() and read_consent(paths) is None:
        enabled = ask_consent(paths)
        where = save_consent(paths, enabled)
        print(f"retries {'enabled' if enabled else 'disabled'} (saved in {where})")


def cmd_consent(args: argparse.Namespace, paths: Paths) -> int:
    if args.enable or args.disable:
        enabled = bool(args.enable)
    elif sys.stdin.isatty():
        enabled = ask_consent(paths)
    else:
        current = read_consent(paths)
        state = "not set (off)" if current is None else "enabled" if current else "disabled"
        print(f"automatic retry: {state}")
        return EXIT_OK
    where = save_consent(paths, enabled)
    print(f"automatic retry {'enabled' if enabled else 'disabled'} (saved in {where})")
    return EXIT_OK


# --- the read and control commands ----------------------------------------------------------------


def check_id(batch_id: str) -> str:
    if not is_batch_id(batch_id):
        die(
            f"unknown batch {batch_id!r} "
            "(ids look like batch-20261124-050653-123456; see 'batchctl list')"
        )
    return batch_id


def cmd_watch(client: Client, as_json: bool) -> int:
    tty = sys.stdout.isatty()
    last = ""
    try:
        for msg in client.lines("watch", {}, None):
            if "event" not in msg:
                result_of(msg)
                return EXIT_OK
            st = msg["event"].get("status")
            if st is None:
                continue
            if as_json:
                print(json.dumps(st), flush=True)
                continue
            line = progress_line(st, time.time())
            if tty:
                sys.stdout.write("\r" + line.ljust(len(last)))
                sys.stdout.flush()
            elif line != last:
                print(line, flush=True)
            last = line
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
    return EXIT_OK


def progress_line(st: dict[str, Any], now: float) -> str:
    cur = st.get("current")
    if cur:
        item: dict[str, Any] = next(
            (b for b in st["batches"] if b["batch_id"] == cur["batch_id"]), {}
        )
        elapsed = human_duration(now - parse_ts(cur["started_at"]))
        head = (
            f"{cur['batch_id']} {cur['feature_index'] + 1}/{cur.get('total_features', '?')} "
            f"{elapsed} eta {human_duration(item.get('eta_s'))} "
        )
        return head + cut(cur["feature"], max(10, WIDTH - 1 - len(head)))
    if st.get("queue_paused"):
        return cut(f"queue paused: {st.get('pause_reason')}", WIDTH - 1)
    if st.get("next_retry_at"):
        return f"waiting for a retry at {st['next_retry_at']}"
    active = [b for b in st["batches"] if b["status"] not in ("completed", "failed", "cancelled")]
    return f"idle ({len(active)} unfinished batches)"


def cmd_logs(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    req: dict[str, Any] = {"batch_id": check_id(args.batch_id), "follow": bool(args.follow)}
    if args.index is not None:
        req["index"] = args.index
    if not args.follow:
        result = client.call("logs", req)
        if as_json:
            emit_json(result)
        else:
            if result.get("truncated"):
                print(f"[... showing the end of {result['path']}]")
            sys.stdout.write(result["text"])
        return EXIT_OK
    try:
        for msg in client.lines("logs", req, None):
            if "event" in msg:
                ev = msg["event"]
                if as_json:
                    print(json.dumps(ev), flush=True)
                elif ev.get("type") == "attempt":
                    print(f"\n[batchctl: attempt {ev['attempt']}]", flush=True)
                else:
                    sys.stdout.write(ev.get("text", ""))
                    sys.stdout.flush()
            else:
                result_of(msg)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    try:
        if cmd in ("submit", "consent"):
            paths, _raw = load_paths(
                os.environ,
                config=args.config,
                spool=args.spool,
                state_dir=args.state_dir,
                socket=args.socket,
            )
            return cmd_submit(args, paths) if cmd == "submit" else cmd_consent(args, paths)
        # Everything else only needs the socket: resolved without parsing more than needed.
        sock = resolve_socket(os.environ, config=args.config, socket=args.socket)
    except ConfigError as e:
        die(str(e))
    client = Client(sock)
    as_json = bool(args.json)
    if cmd == "watch":
        return cmd_watch(client, as_json)
    if cmd == "logs":
        return cmd_logs(client, args, as_json)
    if cmd == "status":
        st = client.call("status")
        emit_json(st) if as_json else print(format_status(st, time.time()))
        return EXIT_OK
    if cmd == "list":
        result = client.call("list")
        if as_json:
            emit_json(result)
        else:
            print(format_table(result["batches"]) if result["batches"] else "no batches")
        return EXIT_OK
    if cmd == "show":
        result = client.call("show", {"batch_id": check_id(args.batch_id)})
        emit_json(result) if as_json else print(format_show(result))
        return EXIT_OK
    if cmd == "ping":
        result = client.call("ping")
        emit_json(result) if as_json else print(
            f"batchd {result['version']} pid {result['pid']}: alive"
        )
        return EXIT_OK
    simple: dict[str, dict[str, Any]] = {}
    if cmd == "pause":
        simple["pause"] = {"now": bool(args.now)}
        if args.batch_id:
            simple["pause"]["batch_id"] = check_id(args.batch_id)
    elif cmd == "resume":
        if args.all == bool(args.batch_id):
            die("resume needs BATCH_ID or --all (not both)", EXIT_USAGE)
        simple["resume"] = {"all": True} if args.all else {"batch_id": check_id(args.batch_id)}
    elif cmd in ("cancel", "retry", "reset-breaker"):
        simple[cmd] = {"batch_id": check_id(args.batch_id)}
    elif cmd == "skip":
        if args.index < 0:
            die("INDEX counts from 0", EXIT_USAGE)
        simple["skip"] = {"batch_id": check_id(args.batch_id), "index": args.index}
    elif cmd == "prune":
        if args.older_than < 0:
            die("--older-than must be 0 or more days", EXIT_USAGE)
        simple["prune"] = {"older_than_days": args.older_than}
    [(name, req)] = simple.items()
    result = client.call(name, req)
    if as_json:
        emit_json(result)
    else:
        print(describe(name, result))
    return EXIT_OK


def describe(cmd: str, r: dict[str, Any]) -> str:
    if cmd == "pause":
        what = r["batch_id"] or "queue"
        stopped = (
            "; the running feature was stopped and will run again" if r["stopped_running"] else ""
        )
        return f"paused {what}{stopped}"
    if cmd == "resume":
        ids = ", ".join(r["resumed"]) or "nothing was paused"
        return f"resumed: {ids}" + (
            "" if not r.get("queue_paused") else " (the queue is still paused)"
        )
    if cmd == "cancel":
        return f"cancelled {r['batch_id']}" + (
            "; its running feature was stopped" if r["stopped_running"] else ""
        )
    if cmd == "retry":
        return f"{r['batch_id']}: features {r['requeued']} queued again"
    if cmd == "skip":
        return f"{r['batch_id']}: feature {r['index']} will not run"
    if cmd == "reset-breaker":
        return f"{r['batch_id']}: circuit breaker closed"
    if cmd == "prune":
        return f"removed {len(r['removed'])} batches" + "".join(f"\n  {b}" for b in r["removed"])
    return json.dumps(r)


# --- argparse ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p = argparse.ArgumentParser(prog="batchctl", description="Control batchd.", parents=[common])
    p.add_argument("--socket", help="control socket (default: as batchd resolves it)")
    p.add_argument("--config", help="config file")
    p.add_argument("--spool", help="spool dir (for submit)")
    p.add_argument("--state-dir", dest="state_dir", help="state dir (for consent without a daemon)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[common], help="daemon, queue and batches")
    sub.add_parser("list", parents=[common], help="every batch")
    sub.add_parser("ping", parents=[common], help="is the daemon alive?")
    sp = sub.add_parser("show", parents=[common], help="one batch, feature by feature")
    sp.add_argument("batch_id", metavar="BATCH_ID")
    sp = sub.add_parser("submit", parents=[common], help="queue a file, or GitHub issues")
    sp.add_argument("file", nargs="?", metavar="FILE")
    sp.add_argument("--issues", nargs="+", type=int, metavar="N")
    sp.add_argument("--repo", metavar="OWNER/NAME")
    sp.add_argument("--cwd", metavar="DIR", help="working directory (default: the current one)")
    sp = sub.add_parser("pause", parents=[common], help="pause a batch, or the whole queue")
    sp.add_argument("batch_id", nargs="?", metavar="BATCH_ID")
    sp.add_argument("--now", action="store_true", help="also stop the running feature")
    sp = sub.add_parser("resume", parents=[common], help="resume a batch, or --all")
    sp.add_argument("batch_id", nargs="?", metavar="BATCH_ID")
    sp.add_argument("--all", action="store_true", help="every batch, and the queue")
    for name, text in (
        ("cancel", "cancel a batch"),
        ("retry", "run failed features again"),
        ("reset-breaker", "close the circuit breaker"),
    ):
        sp = sub.add_parser(name, parents=[common], help=text)
        sp.add_argument("batch_id", metavar="BATCH_ID")
    sp = sub.add_parser("skip", parents=[common], help="never run one feature")
    sp.add_argument("batch_id", metavar="BATCH_ID")
    sp.add_argument("index", type=int, metavar="INDEX")
    sp = sub.add_parser("logs", parents=[common], help="a feature's runner output")
    sp.add_argument("batch_id", metavar="BATCH_ID")
    sp.add_argument("index", nargs="?", type=int, metavar="INDEX")
    sp.add_argument("--follow", "-f", action="store_true")
    sub.add_parser("watch", parents=[common], help="live progress until Ctrl-C")
    sp = sub.add_parser("consent", parents=[common], help="turn automatic retry on or off")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--enable", action="store_true")
    g.add_argument("--disable", action="store_true")
    sp = sub.add_parser("prune", parents=[common], help="delete old finished batches")
    sp.add_argument("--older-than", dest="older_than", type=int, default=30, metavar="DAYS")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        code = run(args)
    except Failure as e:
        print(f"batchctl: {e.message}", file=sys.stderr)
        code = e.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = EXIT_OK
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
