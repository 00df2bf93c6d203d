"""The morning report (``shapes.Report``, made by ``report.build``) as text, Markdown or JSON.

Pure: a report value in, a string out. It imports nothing of batchd at run time,
so batchctl can render a report it received without loading the daemon's modules.

* ``render_text``: for a terminal; every daemon-derived text made printable.
* ``render_markdown``: GitHub tables that paste into an issue or a pull request;
  a cell's ``|``, newlines and Markdown punctuation are escaped.
* ``render_json``: the value itself.

A figure that is None (an attempt of an older version recorded none) shows as
"–"; an estimated token count as ``~N``. The costs shown are the report's
rounded figures, so a batch's and the total's costs are the sums of the rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from batchd import shapes

NONE = "–"
_DIGITS = 4  # report.COST_DIGITS (not imported: this module stays free of batchd)
_MD_SPECIAL = frozenset("\\`*_[]<>|~&#$")
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


def lines(f: shapes.ReportFeature) -> str:
    if f["insertions"] is None or f["deletions"] is None:
        return NONE
    return f"+{f['insertions']}/-{f['deletions']}"


def check(f: shapes.ReportFeature) -> str:
    c = f["check"]
    if c is None:
        return NONE
    if c == "failed":
        return f"failed (exit {f['check_exit_code']})"
    return _CHECK.get(c) or _CHECK_NONE.get(c) or c


def outcome(f: shapes.ReportFeature) -> str:
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


def _seconds_between(start_iso: str, end_iso: str) -> float | None:
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


def batch_title(b: shapes.ReportBatch) -> str:
    return f"#{b['seq']} {b['name']}"


def where(seq: int, name: str, index: int, total: int) -> str:
    return f"#{seq} {name}, feature {index + 1}/{total} (index {index})"


def summary(c: shapes.ReportCounts) -> str:
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


def money_line(c: shapes.ReportCounts) -> str:
    return (
        f"wall {duration(c['wall_s'])}, agent {duration(c['agent_s'])}, "
        f"{cost(c['cost_usd'])}, {tokens(c['tokens'], c['tokens_estimated'])} tokens, "
        f"{plural(c['commits'], 'commit')}, +{c['insertions']}/-{c['deletions']} lines"
    )


# --- text -------------------------------------------------------------------------------


def render_text(report: shapes.Report, *, width: int = 100, tz: tzinfo = UTC) -> str:
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


def _heading(report: shapes.Report, tz: tzinfo) -> str:
    return f"batchd report, {_scope(report, tz)}"


def _scope(report: shapes.Report, tz: tzinfo) -> str:
    at = when(report["generated_at"], tz)
    if report["since"] is None:
        return f"{at}: the batches asked for"
    return f"{at}: batches active or finished since {when(report['since'], tz)}"


def _needs_you_text(report: shapes.Report, width: int, tz: tzinfo) -> list[str]:
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
        left = duration(_seconds_between(now, w["until"]))
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


def _batch_text(b: shapes.ReportBatch, width: int) -> list[str]:
    c = b["counts"]
    status = b["status"] + (f" ({b['pause_reason']})" if b["pause_reason"] else "")
    rows = [_feature_cells(f) for f in b["features"]]
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


def _feature_cells(f: shapes.ReportFeature) -> tuple[str, ...]:
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


# --- Markdown ---------------------------------------------------------------------------


def md(text: object) -> str:
    """A table cell: one line, with ``|``, ``\\`` and Markdown punctuation escaped."""
    s = printable(text).strip()
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in s)


def md_code(text: str | None) -> str:
    """A path or an id as code; plain escaped text when it holds a backtick."""
    if not text:
        return NONE
    s = printable(text)
    return md(s) if "`" in s else "`" + s.replace("|", "\\|") + "`"


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _section(title: str, head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A bold title, its table, and a blank line after."""
    return [f"**{title}**", "", *_table(head, rows), ""]


def render_markdown(report: shapes.Report, *, tz: tzinfo = UTC) -> str:
    out = ["## batchd report", "", md(_scope(report, tz)) + ".", ""]
    out += _needs_you_md(report, tz)
    for b in report["batches"]:
        c = b["counts"]
        status = b["status"] + (f" ({b['pause_reason']})" if b["pause_reason"] else "")
        out += [
            f"### {md(batch_title(b))} ({md_code(b['batch_id'])}): {md(status)}",
            "",
            f"{plural(c['features'], 'feature')}: {md(summary(c))}; {md(money_line(c))}",
            "",
            *([md(b["git_note"]), ""] if b.get("git_note") else []),
        ]
        head = ("index", "outcome", "attempts", "time", "cost", "commits", "+/-", "check")
        out += _table((*head, "feature"), [_md_feature(f) for f in b["features"]])
        out.append("")
    out += ["### Totals", ""]
    out += _table(_TOTAL_HEAD, [_md_totals(report)])
    return "\n".join(out) + "\n"


def _md_feature(f: shapes.ReportFeature) -> tuple[str, ...]:
    return (*(md(c) for c in _feature_cells(f)), md(cut(f["feature"], 200)))


_TOTAL_HEAD = (
    "batches", "features", "completed", "failed", "skipped", "pending", "running",
    "wall time", "agent time", "cost", "tokens", "commits", "+/-",
)  # fmt: skip


def _md_totals(report: shapes.Report) -> tuple[str, ...]:
    t = report["totals"]
    counts = (len(report["batches"]), t["features"], t["completed"], t["failed"], t["skipped"])
    return (
        *(str(n) for n in counts),
        str(t["pending"]),
        str(t["running"]),
        duration(t["wall_s"]),
        duration(t["agent_s"]),
        md(cost(t["cost_usd"])),
        md(tokens(t["tokens"], t["tokens_estimated"])),
        str(t["commits"]),
        f"+{t['insertions']}/-{t['deletions']}",
    )


def _needs_you_md(report: shapes.Report, tz: tzinfo) -> list[str]:
    a = report["needs_attention"]
    out = ["### Needs you", ""]
    if not (a["failed"] or a["paused"] or a["limit_waits"] or a["breakers"]):
        return [*out, "Nothing.", ""]
    total = {b["batch_id"]: b["counts"]["features"] for b in report["batches"]}
    now = report["generated_at"]
    sections = (
        (
            "Failed features",
            ("feature", "text", "why", "attempts", "log", "session"),
            [_failed_md(f, total.get(f["batch_id"], 0)) for f in a["failed"]],
        ),
        ("Paused", ("paused", "why", "first", "then run"), [_pause_md(p) for p in a["paused"]]),
        (
            "Usage-limit waits",
            ("runner", "until", "the agent said", "to try now"),
            [_wait_md(w, now, tz) for w in a["limit_waits"]],
        ),
        (
            "Open breakers (no retries until reset)",
            ("batch", "failures in a row", "run"),
            [_breaker_md(k) for k in a["breakers"]],
        ),
    )
    for title, head, rows in sections:
        if rows:
            out += _section(title, head, rows)
    return out


def _failed_md(f: shapes.ReportFailure, total: int) -> tuple[str, ...]:
    return (
        md(where(f["seq"], f["name"], f["index"], total)),
        md(cut(f["feature"], 200)),
        md(f["reason"]),
        str(f["attempts"]),
        md_code(f["log_path"]),
        md_code(f["session_id"]),
    )


def _pause_md(p: shapes.ReportPause) -> tuple[str, ...]:
    return (
        "the queue" if p["batch_id"] is None else md(f"#{p['seq']} {p['name']}"),
        md(p["reason"]),
        md(p["hint"]) or NONE,
        md_code(p["command"]),
    )


def _wait_md(w: shapes.ReportLimitWait, now: str, tz: tzinfo) -> tuple[str, ...]:
    left = duration(_seconds_between(now, w["until"]))
    return (
        md(w["runner"]),
        f"{md(when(w['until'], tz))} (in {left})",
        md(w["message"]),
        md_code(w["command"]),
    )


def _breaker_md(k: shapes.ReportBreaker) -> tuple[str, ...]:
    return (md(f"#{k['seq']} {k['name']}"), str(k["consecutive_failures"]), md_code(k["command"]))


# --- JSON -------------------------------------------------------------------------------


def render_json(report: shapes.Report) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
