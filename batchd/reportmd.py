"""The morning report (a ``reportshapes.Report``) as Markdown: GitHub tables that paste
into an issue or a pull request (``report.md`` of a finished batch, ``batchctl report
--format markdown``). Pure: a report value in, a string out.

Owns the escaping (a cell's ``|``, newlines and Markdown punctuation) and the
tables; the wording of each figure is ``reportrender``'s, so text and Markdown
say the same. Like ``reportrender`` it imports nothing of the daemon at run time.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import TYPE_CHECKING

from batchd.reportrender import (
    NONE,
    batch_title,
    cost,
    cut,
    duration,
    feature_cells,
    money_line,
    plural,
    printable,
    scope,
    seconds_between,
    summary,
    tokens,
    when,
    where,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from batchd import reportshapes

_MD_SPECIAL = frozenset("\\`*_[]<>|~&#$")


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


def render_markdown(report: reportshapes.Report, *, tz: tzinfo = UTC) -> str:
    out = ["## batchd report", "", md(scope(report, tz)) + ".", ""]
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


def _md_feature(f: reportshapes.ReportFeature) -> tuple[str, ...]:
    return (*(md(c) for c in feature_cells(f)), md(cut(f["feature"], 200)))


_TOTAL_HEAD = (
    "batches", "features", "completed", "failed", "skipped", "pending", "running",
    "wall time", "agent time", "cost", "tokens", "commits", "+/-",
)  # fmt: skip


def _md_totals(report: reportshapes.Report) -> tuple[str, ...]:
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


def _needs_you_md(report: reportshapes.Report, tz: tzinfo) -> list[str]:
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


def _failed_md(f: reportshapes.ReportFailure, total: int) -> tuple[str, ...]:
    return (
        md(where(f["seq"], f["name"], f["index"], total)),
        md(cut(f["feature"], 200)),
        md(f["reason"]),
        str(f["attempts"]),
        md_code(f["log_path"]),
        md_code(f["session_id"]),
    )


def _pause_md(p: reportshapes.ReportPause) -> tuple[str, ...]:
    return (
        "the queue" if p["batch_id"] is None else md(f"#{p['seq']} {p['name']}"),
        md(p["reason"]),
        md(p["hint"]) or NONE,
        md_code(p["command"]),
    )


def _wait_md(w: reportshapes.ReportLimitWait, now: str, tz: tzinfo) -> tuple[str, ...]:
    left = duration(seconds_between(now, w["until"]))
    return (
        md(w["runner"]),
        f"{md(when(w['until'], tz))} (in {left})",
        md(w["message"]),
        md_code(w["command"]),
    )


def _breaker_md(k: reportshapes.ReportBreaker) -> tuple[str, ...]:
    return (md(f"#{k['seq']} {k['name']}"), str(k["consecutive_failures"]), md_code(k["command"]))
