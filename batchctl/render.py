"""Everything batchctl prints for people: status, list, show, watch lines, command replies.

Pure functions from ``batchd.shapes`` replies (and ``now``) to text; nothing here
talks to the daemon or reads a file. Daemon text is made safe for a terminal
(``printable``) before it is shown. Human text counts features from 1
("feature 3/4"); the 0-based index that ``skip`` and ``logs`` take is shown as
"index 2". ``status`` fits 80 columns; ``list`` and ``show`` use the terminal's
width. Standard library only, and nothing at import beyond what a read command
already loaded (``shutil`` is argparse's, ``textwrap`` is imported when needed).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from typing import Any

    from batchd import shapes

WIDTH = 80  # status and watch
FINISHED = ("completed", "failed", "cancelled")


def terminal_width() -> int:
    """The terminal's columns (``COLUMNS`` wins; 80 when it is not a terminal), at least 60."""
    import shutil  # already loaded by argparse: free

    return max(60, shutil.get_terminal_size((WIDTH, 24)).columns)


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
    start = parse_ts(started_at) if started_at is not None else None
    return human_duration(None if start is None else now - start)


def until(at: str, now: float) -> str:
    when = parse_ts(at)
    return human_duration(None if when is None else when - now)


def local_time(iso: str, now: float) -> str:
    """An ISO UTC time as local clock time (with the date when it is not today)."""
    ts = parse_ts(iso)
    if ts is None:
        return printable(iso)
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


def wrap(
    text: object, first: str, indent: str = "    ", max_lines: int = 4, width: int = WIDTH
) -> list[str]:
    import textwrap

    return textwrap.wrap(
        printable(text),
        width,
        initial_indent=first,
        subsequent_indent=indent,
        max_lines=max_lines,
        placeholder=" …",
        break_on_hyphens=False,
    )


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 feature``, ``2 features``, ``1 batch``, ``0 batches``."""
    many = nouns or (noun + "es" if noun.endswith(("s", "ch")) else noun + "s")
    return f"{n} {noun if n == 1 else many}"


def money(value: float) -> str:
    if not value:
        return "-"
    return f"${value:.2f}" if value >= 0.01 else f"${value:.4f}"


def tokens(value: int) -> str:
    if not value:
        return "-"
    return str(value) if value < 10_000 else f"{value / 1000:.0f}k"


def feature_label(index: int, total: int) -> str:
    """``feature 3/4 (index 2)``: the position people count and the index commands take."""
    return f"feature {index + 1}/{total} (index {index})"


# --- status ----------------------------------------------------------------------------


def format_status(st: shapes.Status, now: float) -> str:
    d = st["daemon"]
    out = [
        f"batchd {d['version']}, pid {d['pid']}, {d['backend']}, {d['engine']} engine, "
        f"up {human_duration(d['uptime_s'])}"
    ]
    slots = f", {plural(st['slots'], 'slot')}" if st["slots"] > 1 else ""
    if st["queue_paused"]:
        reason = st["pause_reason"] or "no reason given"
        out += wrap(reason, f"queue: PAUSED{slots}: ", max_lines=8)
        if "resume" not in reason:
            out.append("    resume it with `batchctl resume --all`")
    else:
        out.append(f"queue: running{slots}")
    if st["retry_enabled"]:
        out.append("automatic retry: on")
    else:
        out.append("automatic retry: off (`batchctl consent` turns it on)")
    for p in st["problems"]:
        where = f" [{p['batch_id']}]" if p["batch_id"] else ""
        out += wrap(p["message"], f"problem: {p['kind']}{where}: ")
    out += running_lines(st, now)
    batches = st["batches"]
    if not batches:
        out.append("no batches (`batchctl add FEATURE...`, `batchctl submit FILE`, or the spool)")
        return "\n".join(out)
    out.append("")
    out += batch_table(batches, now)
    shown = sum(1 for b in batches if b["status"] in FINISHED)
    if st["finished_total"] > shown:
        out.append(
            f"{shown} of {st['finished_total']} finished batches shown; `batchctl list` has all"
        )
    if st["total_cost_usd"]:
        out.append(f"total cost: {money(st['total_cost_usd'])}")
    return "\n".join(out)


def running_lines(st: shapes.Status, now: float) -> list[str]:
    """Every running feature (two lines each), else the retry waited for, else nothing."""
    out: list[str] = []
    for run in st["running"]:
        where = feature_label(run["feature_index"], run["total_features"])
        elapsed = since(run["started_at"], now) if run["started_at"] else "starting"
        out.append(
            cut(
                f"running: [{run['seq']}] {run['batch_id']}, attempt {run['attempt']}, "
                f"{elapsed}, {run_where(run)}",
                WIDTH,
            )
        )
        out.append(cut(f"    {where}: {printable(run['feature'])}", WIDTH))
    if out:
        return out
    at = st["next_retry_at"]
    if at is not None:
        retry = f"retry at {local_time(at, now)} (in {until(at, now)})"
        waiting = next((b for b in st["batches"] if b["next_attempt_at"] == at), None)
        if waiting is None:
            return [f"waiting: {retry}"]
        where = feature_label(waiting["current_index"], waiting["total_features"])
        return [
            cut(f"waiting: [{waiting['seq']}] {waiting['batch_id']}, {retry}", WIDTH),
            f"    {where}",
        ]
    return ["running: nothing"]


def counts(b: shapes.BatchItem) -> str:
    return f"{b['completed']}/{b['failed']}/{b['total_features']}"


def seq_width(batches: list[shapes.BatchItem]) -> int:
    return max([3, *(len(str(b["seq"])) for b in batches)])


def batch_table(batches: list[shapes.BatchItem], now: float) -> list[str]:
    sw = seq_width(batches)
    rows = [
        f"{'SEQ':>{sw}} {'BATCH':<28} {'STATUS':<11} {'DONE/FAIL/ALL':>13} {'COST':>8} BRK  ETA"
    ]
    for b in batches:
        eta = "-" if b["status"] in FINISHED else human_duration(b["eta_s"])
        rows.append(
            f"{b['seq']:>{sw}} {cut(b['batch_id'], 28):<28} {cut(b['status'], 11):<11} "
            f"{counts(b):>13} {money(b['cost_usd']):>8} "
            f"{'OPEN' if b['circuit_breaker_open'] else 'ok':<4} {eta}"
        )
        if b["status"] == "paused" and b["pause_reason"]:
            rows += wrap(b["pause_reason"], "    paused: ")
        if b["next_attempt_at"] and b["status"] not in FINISHED:
            rows.append(f"    next attempt at {local_time(b['next_attempt_at'], now)}")
    return rows


# --- list and show -----------------------------------------------------------------------


def format_list(batches: list[shapes.BatchItem], width: int) -> str:
    if not batches:
        return "no batches"
    sw = seq_width(batches)
    rows = [f"{'SEQ':>{sw}} {'BATCH':<28} {'STATUS':<11} {'DONE/FAIL/ALL':>13} {'COST':>8}  NAME"]
    for b in batches:
        head = (
            f"{b['seq']:>{sw}} {cut(b['batch_id'], 28):<28} {cut(b['status'], 11):<11} "
            f"{counts(b):>13} {money(b['cost_usd']):>8}  "
        )
        rows.append(head + cut(b["name"], width - len(head)))
    return "\n".join(rows)


def format_ids(batches: list[shapes.BatchItem]) -> str:
    """``list --ids``: ``SEQ<tab>BATCH_ID<tab>STATUS<tab>NAME`` lines (completion reads them)."""
    return "\n".join(
        f"{b['seq']}\t{b['batch_id']}\t{b['status']}\t{cut(b['name'], 60)}" for b in batches
    )


def format_show(result: shapes.Show, now: float, width: int) -> str:
    b, s, r = result["batch"], result["state"], result["retry"]
    reason = f" ({printable(b['pause_reason'])})" if b["pause_reason"] else ""
    out = [
        cut(f"[{b['seq']}] {b['batch_id']}  {b['name']}", width),
        f"status: {b['status']}{reason}",
        f"source: {b['source_type']}",
        f"runs in: {printable(b['workdir'])}",
        f"{plural(b['total_features'], 'feature')}: {b['completed']} completed, "
        f"{b['failed']} failed, {b['skipped']} skipped",
        f"retries: {r['global_retry_count']} so far; breaker "
        f"{'OPEN' if b['circuit_breaker_open'] else 'closed'}, "
        f"consecutive failures: {b['consecutive_failures']}",
    ]
    if b["next_attempt_at"] and b["status"] not in FINISHED:
        out.append(f"next attempt at {local_time(b['next_attempt_at'], now)}")
    run = result["running"]
    if run is not None:
        elapsed = since(run["started_at"], now) if run["started_at"] else "starting"
        out.append(
            f"running: {feature_label(run['feature_index'], run['total_features'])}, "
            f"attempt {run['attempt']}, {elapsed}, {run_where(run)}"
        )
    out.append("")
    out += feature_rows(s, result["feature_states"], now, width)
    return "\n".join(out)


def run_where(run: shapes.RunningItem) -> str:
    """Where a running feature runs: its Slurm job and state, or its local pid."""
    if run["job_id"]:
        return f"job {run['job_id']} {run['job_state'] or ''}".rstrip()
    return f"pid {run['pid']}" if run["pid"] else "its before_feature hook runs"


def feature_rows(state: dict[str, Any], states: list[str], now: float, width: int) -> list[str]:
    """One row per feature: index, status, attempts, time, tokens, cost; errors; the total."""
    history: list[dict[str, Any]] = state["processing_history"]
    errors = {f["feature_index"]: f["error_message"] for f in state["failed_features"]}
    by_index: dict[int, list[dict[str, Any]]] = {}
    for a in history:
        by_index.setdefault(a["feature_index"], []).append(a)
    out = [f"{'IDX':>4} {'STATUS':<9} {'ATT':>3} {'TIME':>7} {'TOKENS':>6} {'COST':>8}  FEATURE"]
    total_s = 0.0
    for i, feature in enumerate(state["features"]):
        runs = by_index.get(i, [])
        took = sum(attempt_seconds(a, states[i] == "running", now) for a in runs)
        total_s += took
        cost = sum(a["cost_usd"] or 0.0 for a in runs)
        used = sum(a["tokens"] or 0 for a in runs)
        head = (
            f"{i:>4} {states[i]:<9} {len(runs):>3} "
            f"{human_duration(took) if runs else '-':>7} {tokens(used):>6} {money(cost):>8}  "
        )
        out.append(head + cut(feature, width - len(head)))
        if i in errors:
            out += wrap(errors[i] or "(no message)", "       error: ", " " * 14, 3, width)
    out.append(
        f"{'':>4} {'total':<9} {len(history):>3} {human_duration(total_s):>7} "
        f"{tokens(state['context_token_estimate']):>6} {money(state['cost_usd']):>8}"
    )
    return out


def attempt_seconds(a: dict[str, Any], running: bool, now: float) -> float:
    """How long one attempt took (or has taken so far, while it runs)."""
    if a["duration_s"] is not None:
        return float(a["duration_s"])
    if running and a["outcome"] is None and a["started_at"]:
        start = parse_ts(a["started_at"])
        return 0.0 if start is None else max(0.0, now - start)
    return 0.0


# --- watch -------------------------------------------------------------------------------


def progress_line(st: shapes.Status, now: float) -> str:
    """One line (under 80 columns) for ``watch``: what runs, elapsed, ETA, feature text."""
    running = st["running"]
    if len(running) == 1:
        run = running[0]
        item = next((b for b in st["batches"] if b["batch_id"] == run["batch_id"]), None)
        eta = human_duration(item["eta_s"] if item is not None else None)
        head = cut(
            f"[{run['seq']}] {run['batch_id']} {run['feature_index'] + 1}/"
            f"{run['total_features']} {since(run['started_at'], now)} eta {eta}: ",
            WIDTH - 11,
        )
        return head + cut(run["feature"], WIDTH - 1 - len(head))
    if running:
        each = (WIDTH - 1 - 11) // len(running)
        parts = [
            cut(
                f"[{r['seq']}] {r['feature_index'] + 1}/{r['total_features']} "
                f"{since(r['started_at'], now)}: {printable(r['feature'])}",
                each - 2,
            )
            for r in running
        ]
        return cut(f"{len(running)} running: " + "; ".join(parts), WIDTH - 1)
    if st["queue_paused"]:
        return cut(f"queue paused: {st['pause_reason']}", WIDTH - 1)
    at = st["next_retry_at"]
    if at is not None:
        waiting = next((b for b in st["batches"] if b["next_attempt_at"] == at), None)
        what = f" [{waiting['seq']}] {waiting['batch_id']}" if waiting is not None else ""
        return cut(f"waiting {until(at, now)} to retry{what}", WIDTH - 1)
    left = sum(1 for b in st["batches"] if b["status"] not in FINISHED)
    if not left:
        return "idle (nothing queued)"
    return f"idle ({left} unfinished {'batch' if left == 1 else 'batches'})"


# --- replies of the control commands -------------------------------------------------------


def paused(r: shapes.Paused) -> str:
    if r["batch_id"] is None:
        what = "paused the queue"
        if r["stopped_running"]:
            what += f"; {plural(r['stopped'], 'running feature')} stopped, to run again on resume"
        return what
    what = f"paused {r['batch_id']}"
    if r["stopped_running"]:
        what += "; its running feature was stopped and will run again on resume"
    return what


def resumed(r: shapes.Resumed) -> str:
    lines = []
    if r["resumed"]:
        lines.append(f"resumed {', '.join(r['resumed'])}")
    if r["queue_resumed"]:
        lines.append("queue resumed")
    if not lines and not r["notes"]:
        lines.append("nothing was paused")
    lines += [f"note: {printable(n)}" for n in r["notes"]]
    if r["queue_paused"]:
        lines.append("the queue is still paused: `batchctl resume --all` lifts that")
    return "\n".join(lines)


def cancelled(r: shapes.Cancelled) -> str:
    stopped = "; its running feature was stopped" if r["stopped_running"] else ""
    return f"cancelled {r['batch_id']}{stopped}"


def requeued(r: shapes.Requeued) -> str:
    again = r["requeued"]
    if not again:
        return f"{r['batch_id']}: no failed feature to run again (status {r['status']})"
    noun = "feature" if len(again) == 1 else "features"
    which = ", ".join(f"{i + 1} (index {i})" for i in again)
    return f"{r['batch_id']}: {noun} {which} will run again (status {r['status']})"


def skipped(r: shapes.Skipped) -> str:
    i = r["index"]
    stopped = "; it was running and has been stopped" if r["stopped_running"] else ""
    return f"{r['batch_id']}: feature {i + 1} (index {i}) skipped{stopped} (status {r['status']})"


def breaker_reset(r: shapes.BreakerReset) -> str:
    return f"{r['batch_id']}: circuit breaker closed"


def pruned(r: shapes.Pruned) -> str:
    removed = r["removed"]
    noun = "batch" if len(removed) == 1 else "batches"
    head = f"would remove {len(removed)} finished {noun}" if r["dry_run"] else None
    head = head or f"removed {len(removed)} finished {noun}"
    return "\n".join([head, *(f"  {b}" for b in removed)])


def restarted(r: shapes.Restarting, st: shapes.Status) -> str:
    pid = st["daemon"]["pid"]
    how = "executed itself again" if r["via"] == "exec" else "started again by systemd"
    same = "same pid" if pid == r["pid"] else f"was pid {r['pid']}"
    left = plural(r["runs_left"], "running feature")
    return f"batchd restarted (pid {pid}, {same}; {how}); {left} kept running, followed again"


def reloaded(r: shapes.Reloaded) -> str:
    return f"reloaded {r['config']} ({plural(r['slots'], 'slot')})"


def log_header(a: shapes.AttemptLog) -> str:
    where = f"feature {a['index'] + 1} (index {a['index']})"
    return f"==> {where}, attempt {a['attempt']}: {a['path']} <=="


def finished_line(b: shapes.BatchItem) -> str:
    """``wait``: one line per batch as it ends."""
    return (
        f"[{b['seq']}] {b['batch_id']} {b['status']}: {b['completed']} completed, "
        f"{b['failed']} failed, {b['skipped']} skipped of {plural(b['total_features'], 'feature')}"
    )
