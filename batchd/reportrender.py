"""The morning report (a ``reportshapes.Report``, from ``report.build``) as text or JSON.

Pure: a report value in, a string out. It imports nothing of batchd at run time,
so batchctl can render a report it received without loading the daemon's modules.

* ``render_text``: for a terminal; every daemon-derived text made printable.
* ``render_json``: the value itself.

The Markdown form is ``reportmd``'s; it uses the figures' wording below.

A figure that is None (an attempt of an older version recorded none) shows as
"–"; an estimated token count as ``~N``. The costs shown are the report's
rounded figures, so a batch's and the total's costs are the sums of the rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchd import reportshapes

NONE = "–"
_DIGITS = 4  # report.COST_DIGITS (not imported: this module stays free of batchd)
_CHECK = {"passed": "passed", "timed_out": "timed out", "running": "running"}
_CHECK_NONE = {"unchanged": "no change"}


# --- figures ----------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``42s``, ``12m03s``, ``5h07m``, ``2d03h``; "–" for None."""
    if seconds is None:
        return NONE
    s = max(0, round(seconds))
    minutes, sec = divmod(s, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs:02d}h"
    if hours:
        return f"{hours}h{mins:02d}m"
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


def cost(value: float | None) -> str:
    return NONE if value is None else f"${value:.{_DIGITS}f}"


def tokens(value: int | None, estimated: bool) -> str:
    if not value:
        return NONE
    return f"{'~' if estimated else ''}{value:,}"


def lines(f: reportshapes.ReportFeature) -> str:
    if f["insertions"] is None or f["deletions"] is None:
        return NONE
    return f"+{f['insertions']}/-{f['deletions']}"


def check(f: reportshapes.ReportFeature) -> str:
    c = f["check"]
    if c is None:
        return NONE
    if c == "failed":
        return f"failed (exit {f['check_exit_code']})"
    return _CHECK.get(c) or _CHECK_NONE.get(c) or c


def outcome(f: reportshapes.ReportFeature) -> str:
    return f["outcome"].replace("_", " ")


def counted(n: int | None) -> str:
    return NONE if n is None else str(n)


def when(iso: str, tz: tzinfo) -> str:
    """``2026-12-03 07:00 UTC`` in ``tz``; the text itself when it is not a timestamp."""
    try:
        at = datetime.fromisoformat(iso).astimezone(tz)
    except ValueError:
        return printable(iso)
    return at.strftime("%Y-%m-%d %H:%M ") + (at.tzname() or "")


def seconds_between(start_iso: str, end_iso: str) -> float | None:
    try:
        return (datetime.fromisoformat(end_iso) - datetime.fromisoformat(start_iso)).total_seconds()
    except ValueError:
        return None


def printable(text: object) -> str:
    """One line: every control character (a newline too) becomes a space."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else " " for c in s)


def cut(text: object, width: int) -> str:
    s = printable(text)
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('ch') else 's'}"


def batch_title(b: reportshapes.ReportBatch) -> str:
    return f"#{b['seq']} {b['name']}"


def where(seq: int, name: str, index: int, total: int) -> str:
    return f"#{seq} {name}, feature {index + 1}/{total} (index {index})"


def summary(c: reportshapes.ReportCounts) -> str:
    """``3 completed, 1 failed, 2 pending``: the non-zero counts of a batch or the total."""
    shown = (
        (c["completed"], "completed", True),
        (c["failed"], "failed", True),
        (c["skipped"], "skipped", False),
        (c["pending"], "pending", True),
        (c["running"], "running", False),
        (c["cancelled"], "cancelled", False),
    )
    return ", ".join(f"{n} {word}" for n, word, always in shown if n or always)


def money_line(c: reportshapes.ReportCounts) -> str:
    return (
        f"wall {duration(c['wall_s'])}, agent {duration(c['agent_s'])}, "
        f"{cost(c['cost_usd'])}, {tokens(c['tokens'], c['tokens_estimated'])} tokens, "
        f"{plural(c['commits'], 'commit')}, +{c['insertions']}/-{c['deletions']} lines"
    )


# --- text -------------------------------------------------------------------------------


def render_text(report: reportshapes.Report, *, width: int = 100, tz: tzinfo = UTC) -> str:
    out = [_heading(report, tz), ""]
    out += _needs_you_text(report, width, tz)
    for b in report["batches"]:
        out.append("")
        out += _batch_text(b, width)
    t = report["totals"]
    out += [
        "",
        f"Totals: {plural(len(report['batches']), 'batch')}, "
        f"{plural(t['features'], 'feature')}: {summary(t)}",
        f"        {money_line(t)}",
    ]
    return "\n".join(out) + "\n"


def _heading(report: reportshapes.Report, tz: tzinfo) -> str:
    return f"batchd report, {scope(report, tz)}"


def scope(report: reportshapes.Report, tz: tzinfo) -> str:
    at = when(report["generated_at"], tz)
    if report["since"] is None:
        return f"{at}: the batches asked for"
    return f"{at}: batches active or finished since {when(report['since'], tz)}"


def _needs_you_text(report: reportshapes.Report, width: int, tz: tzinfo) -> list[str]:
    a = report["needs_attention"]
    if not (a["failed"] or a["paused"] or a["limit_waits"] or a["breakers"]):
        return ["Needs you: nothing."]
    out = ["Needs you:"]
    total = {b["batch_id"]: b["counts"]["features"] for b in report["batches"]}
    for f in a["failed"]:
        label = where(f["seq"], f["name"], f["index"], total.get(f["batch_id"], 0))
        out.append(cut(f"  FAILED  {label}: {f['feature']}", width))
        out += _wrap(f["reason"], "      why: ", width)
        out.append(f"      attempts: {f['attempts']}, log: {printable(f['log_path'] or NONE)}")
        if f["session_id"]:
            out.append(f"      session: {printable(f['session_id'])}")
    for p in a["paused"]:
        what = "the queue" if p["batch_id"] is None else f"#{p['seq']} {p['name']}"
        out += _wrap(p["reason"], f"  PAUSED  {printable(what)}: ", width)
        if p["hint"]:
            out += _wrap(p["hint"], "      ", width)
        out.append(f"      run: {p['command']}")
    now = report["generated_at"]
    for w in a["limit_waits"]:
        left = duration(seconds_between(now, w["until"]))
        runner, until = printable(w["runner"]), when(w["until"], tz)
        first = f"  LIMIT   {runner} waits until {until} (in {left}): "
        out += _wrap(w["message"], first, width)
        out.append(f"      to try now: {w['command']}")
    for k in a["breakers"]:
        out.append(
            f"  BREAKER #{k['seq']} {printable(k['name'])}: open after "
            f"{k['consecutive_failures']} failures in a row; no retries until it is reset"
        )
        out.append(f"      run: {k['command']}")
    return out


def _wrap(text: str, first: str, width: int, max_lines: int = 4) -> list[str]:
    import textwrap

    return textwrap.wrap(
        printable(text),
        width,
        initial_indent=first,
        subsequent_indent="      ",
        max_lines=max_lines,
        placeholder=" …",
        break_on_hyphens=False,
    ) or [first.rstrip()]


_HEAD = ("index", "outcome", "tries", "time", "cost", "commits", "+/-", "check")
_LEFT = frozenset({1, 7})  # outcome and check; figures are right-aligned


def _batch_text(b: reportshapes.ReportBatch, width: int) -> list[str]:
    c = b["counts"]
    status = b["status"] + (f" ({b['pause_reason']})" if b["pause_reason"] else "")
    rows = [feature_cells(f) for f in b["features"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_HEAD)]
    out = [
        cut(f"{batch_title(b)}  {b['batch_id']}  {status}", width),
        f"  {plural(c['features'], 'feature')}: {summary(c)}",
        f"  {money_line(c)}",
        *(_wrap(note, "  ", width) if (note := b.get("git_note")) else []),
        _row(_HEAD, widths) + "feature",
    ]
    for f, cells in zip(b["features"], rows, strict=True):
        head = _row(cells, widths)
        out.append(head + cut(f["feature"], max(20, width - len(head))))
    return out


def feature_cells(f: reportshapes.ReportFeature) -> tuple[str, ...]:
    return (
        str(f["index"]),
        outcome(f),
        str(f["attempts"]),
        duration(f["duration_s"]),
        cost(f["cost_usd"]),
        counted(f["commits"]),
        lines(f),
        check(f),
    )


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    padded = (
        c.ljust(w) if i in _LEFT else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "  " + "  ".join(padded) + "  "


# --- JSON -------------------------------------------------------------------------------


def render_json(report: reportshapes.Report) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
