"""What batchctl prints for people, the pieces: time, text, numbers, and command replies.

Pure functions from values (and ``now``) to text; nothing here talks to the
daemon or reads a file. ``reply`` and ``emit_json`` are the one place a
command's result is printed (JSON with ``--json``, else text for people).
Daemon text is made safe for a terminal (``printable``) before it is shown.
Human text counts features from 1 ("feature 3/4"); the 0-based index that
``skip`` and ``logs`` take is shown as "index 2". The screens are built from
these pieces in ``render_status`` (status, watch) and ``render_batches`` (list,
show). Standard library only, and nothing at import beyond what a read command
already loaded (``shutil`` is argparse's, ``textwrap`` is imported when needed).
"""

from __future__ import annotations

import json
import time

from batchctl.errors import EXIT_OK

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace

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


def tokens(value: int, estimated: bool = False) -> str:
    """A token count; ``~N`` when it was estimated (output bytes / 4), not reported."""
    if not value:
        return "-"
    shown = str(value) if value < 10_000 else f"{value / 1000:.0f}k"
    return "~" + shown if estimated else shown


def money_column(parts: list[float], total: float) -> tuple[list[str], str]:
    """Costs shown in one column with their total, so that the parts shown add up to the
    total shown: one precision for all (cents; hundredths of a cent when a cost under a
    cent is there), the parts rounded by the largest remainder. Parts that do not add up
    to ``total`` (a history cut short) are each rounded on their own."""
    small = any(0 < x < 0.01 for x in (*parts, total))
    digits = 4 if small else 2
    units = 10**digits
    target = round(total * units)
    raw = [x * units for x in parts]
    shown = [int(x) for x in raw]  # floors: costs are never negative
    short = target - sum(shown)
    if 0 <= short <= len(raw):
        by_remainder = sorted(range(len(raw)), key=lambda i: shown[i] - raw[i])
        for i in by_remainder[:short]:
            shown[i] += 1
    else:
        shown = [round(x) for x in raw]

    def text(n: int, value: float) -> str:
        return "-" if not n and not value else f"${n / units:.{digits}f}"

    return [text(n, x) for n, x in zip(shown, parts, strict=True)], text(target, total)


def counts(b: shapes.BatchItem) -> str:
    return f"{b['completed']}/{b['failed']}/{b['total_features']}"


def seq_width(batches: list[shapes.BatchItem]) -> int:
    return max([3, *(len(str(b["seq"])) for b in batches)])


def run_where(run: shapes.RunningItem) -> str:
    """Where a running feature runs: its Slurm job and state, or its local pid."""
    if run["job_id"]:
        return f"job {run['job_id']} {run['job_state'] or ''}".rstrip()
    return f"pid {run['pid']}" if run["pid"] else "its before_feature hook runs"


def feature_label(index: int, total: int) -> str:
    """``feature 3/4 (index 2)``: the position people count and the index commands take."""
    return f"feature {index + 1}/{total} (index {index})"


# --- replies of the control commands -------------------------------------------------------


def emit_json(obj: object, *, indent: int | None = 2) -> None:
    print(json.dumps(obj, indent=indent, ensure_ascii=False), flush=indent is None)


def reply(args: Namespace, result: object, text: str) -> int:
    """Print a command's reply: JSON with ``--json``, else the text for people; exit 0."""
    if args.json:
        emit_json(result)
    else:
        print(text)
    return EXIT_OK


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


def limits(r: shapes.Limits) -> str:
    """``batchctl limit``: what it ended, then every wait in words with the agent's text."""
    out = [f"ended the usage-limit wait of {name}" for name in r["cleared"]]
    for w in r["limit_waits"]:
        out.append(w["in_words"])
        out.append(f"    since {w['since']}: {w['message']}")
    if not r["limit_waits"]:
        out.append("no runner profile waits for a usage limit")
    else:
        out.append("end a wait now with `batchctl limit --clear [RUNNER]`")
    return "\n".join(out)


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
    session = a.get("session_id")
    also = f", session {printable(session)}" if session else ""
    return f"==> {where}, attempt {a['attempt']}{also}: {a['path']} <=="


def session_hint(session: str) -> str:
    """Where the agent's conversation is picked up again (Claude Code, codex)."""
    sid = printable(session)
    return (
        f"the agent's session is {sid} (resume it: `claude --resume {sid}` or `codex resume {sid}`)"
    )


def finished_line(b: shapes.BatchItem) -> str:
    """``wait``: one line per batch as it ends."""
    return (
        f"[{b['seq']}] {b['batch_id']} {b['status']}: {b['completed']} completed, "
        f"{b['failed']} failed, {b['skipped']} skipped of {plural(b['total_features'], 'feature')}"
    )
