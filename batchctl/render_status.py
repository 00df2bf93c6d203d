"""``status`` and ``watch`` for people: the daemon, the queue, what runs, the batches.

Pure functions from a ``status`` reply (``batchd.shapes.Status``) and ``now``
to text that fits 80 columns; built from ``render``'s pieces. Nothing here
talks to the daemon or reads a file. A paused batch (or any batch while the
queue is paused) shows no ETA: nothing of it runs until it is resumed.
Keys that a newer daemon adds (``rejected``, ``rejected_total``) are shown
when the reply has them.
"""

from __future__ import annotations

from batchctl.render import (
    FINISHED,
    WIDTH,
    counts,
    cut,
    feature_label,
    human_duration,
    local_time,
    money,
    plural,
    printable,
    run_where,
    seq_width,
    since,
    until,
    wrap,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from typing import Any

    from batchd import shapes


def format_status(st: shapes.Status, now: float) -> str:
    out = head_lines(st) + limit_lines(st) + rejected_lines(st) + running_lines(st, now)
    batches = st["batches"]
    if not batches:
        out.append("no batches (`batchctl add FEATURE...`, `batchctl submit FILE`, or the spool)")
        return "\n".join(out)
    out.append("")
    out += batch_table(batches, now, st["queue_paused"])
    shown = sum(1 for b in batches if b["status"] in FINISHED)
    if st["finished_total"] > shown:
        out.append(
            f"{shown} of {st['finished_total']} finished batches shown; `batchctl list` has all"
        )
    if st["total_cost_usd"]:
        out.append(f"total cost: {money(st['total_cost_usd'])}")
    return "\n".join(out)


def head_lines(st: shapes.Status) -> list[str]:
    """The daemon, the queue (paused and why), automatic retry, and the problems."""
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
    return out


def limit_lines(st: shapes.Status) -> list[str]:
    """Each runner profile waiting for its agent's usage limit, in words (SPEC 13)."""
    reply: dict[str, Any] = dict(st)
    waits: list[dict[str, str]] = reply.get("limit_waits") or []
    out = [cut(w["in_words"], WIDTH) for w in waits]
    if waits:
        out.append("    `batchctl limit` shows why; `batchctl limit --clear` ends the waits now")
    return out


def rejected_lines(st: shapes.Status) -> list[str]:
    """Spool files the daemon rejected and that are still in ``rejected/``: how many, the
    newest with their reasons, and where they are (removing them clears the line)."""
    reply: dict[str, Any] = dict(st)
    total: int = reply.get("rejected_total") or 0
    newest: list[dict[str, str]] = reply.get("rejected") or []
    if not total and not newest:
        return []
    total = max(total, len(newest))
    where = f"{st['paths']['spool_dir'].rstrip('/')}/rejected"
    out = [cut(f"rejected: {plural(total, 'spool file')} in {where}/", WIDTH)]
    out += [cut(f"    {r['name']}: {r['reason']}", WIDTH) for r in newest]
    if total > len(newest):
        out.append(f"    and {total - len(newest)} more")
    out.append("    fix and resubmit each, then remove it (and its .error) from there")
    return out


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
        if run.get("worktree"):
            out.append(f"    in {printable(run['worktree'])} on {printable(run['branch'])}")
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


def eta(b: shapes.BatchItem | None, queue_paused: bool) -> str:
    """A batch's ETA; none ("-") when it is finished or paused, or the queue is paused."""
    if b is None or queue_paused or b["status"] in FINISHED or b["status"] == "paused":
        return "-"
    return human_duration(b["eta_s"])


def batch_table(batches: list[shapes.BatchItem], now: float, queue_paused: bool) -> list[str]:
    sw = seq_width(batches)
    rows = [
        f"{'SEQ':>{sw}} {'BATCH':<28} {'STATUS':<11} {'DONE/FAIL/ALL':>13} {'COST':>8} BRK  ETA"
    ]
    for b in batches:
        rows.append(
            f"{b['seq']:>{sw}} {cut(b['batch_id'], 28):<28} {cut(b['status'], 11):<11} "
            f"{counts(b):>13} {money(b['cost_usd']):>8} "
            f"{'OPEN' if b['circuit_breaker_open'] else 'ok':<4} {eta(b, queue_paused)}"
        )
        if b["runner"] != "default":
            rows.append(f"    runner {printable(b['runner'])}")
        if b["status"] == "paused" and b["pause_reason"]:
            rows += wrap(b["pause_reason"], "    paused: ")
        if b["next_attempt_at"] and b["status"] not in FINISHED:
            rows.append(f"    next attempt at {local_time(b['next_attempt_at'], now)}")
        if b.get("base_forward"):
            rows += wrap(printable(b["base_forward"] or ""), "    base: ")
    return rows


# --- watch -------------------------------------------------------------------------------


def progress_line(st: shapes.Status, now: float) -> str:
    """One line (under 80 columns) for ``watch``: what runs, elapsed, ETA, feature text."""
    running = st["running"]
    if len(running) == 1:
        run = running[0]
        item = next((b for b in st["batches"] if b["batch_id"] == run["batch_id"]), None)
        head = cut(
            f"[{run['seq']}] {run['batch_id']} {run['feature_index'] + 1}/"
            f"{run['total_features']} {since(run['started_at'], now)} "
            f"eta {eta(item, st['queue_paused'])}: ",
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
