"""``list`` and ``show`` for people: batches in rows, one batch feature by feature.

Pure functions from ``list``/``show`` replies (``batchd.shapes``), ``now`` and
the terminal's width to text; built from ``render``'s pieces. Nothing here
talks to the daemon or reads a file. In ``show``, the per-feature costs add
up to the total shown (``render.money_column``), and a token count that was
estimated (output bytes / 4, ``tokens_estimated``) reads ``~N``.
"""

from __future__ import annotations

from batchctl.render import (
    FINISHED,
    counts,
    cut,
    feature_label,
    human_duration,
    local_time,
    money,
    money_column,
    parse_ts,
    plural,
    printable,
    run_where,
    seq_width,
    since,
    tokens,
    wrap,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from typing import Any

    from batchd import shapes


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
        if b["runner"] != "default":
            rows.append(cut(f"{'':>{sw}} runner {printable(b['runner'])}", width))
        if b.get("branch"):
            rows.append(cut(f"{'':>{sw}} branch {b['branch']}", width))
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
        f"runner: {printable(b['runner'])}",
        f"runs in: {printable(b['workdir'])}",
        f"{plural(b['total_features'], 'feature')}: {b['completed']} completed, "
        f"{b['failed']} failed, {b['skipped']} skipped",
        f"retries: {r['global_retry_count']} so far; breaker "
        f"{'OPEN' if b['circuit_breaker_open'] else 'closed'}, "
        f"consecutive failures: {b['consecutive_failures']}",
    ]
    if b["next_attempt_at"] and b["status"] not in FINISHED:
        out.append(f"next attempt at {local_time(b['next_attempt_at'], now)}")
    if b["limit_until"] and b["status"] not in FINISHED:
        out.append(
            f"waiting for {printable(b['runner'])}'s usage limit until "
            f"{local_time(b['limit_until'], now)} (`batchctl limit` says why)"
        )
    out += git_lines(b, s, width)
    running = result.get("running_all")
    runs = running if running is not None else [r for r in [result["running"]] if r is not None]
    for run in runs:
        elapsed = since(run["started_at"], now) if run["started_at"] else "starting"
        out.append(
            f"running: {feature_label(run['feature_index'], run['total_features'])}, "
            f"attempt {run['attempt']}, {elapsed}, {run_where(run)}"
        )
        if run.get("worktree"):
            out.append(f"    in {printable(run['worktree'])} on {printable(run['branch'])}")
    out.append("")
    out += feature_rows(s, result["feature_states"], now, width)
    if s["processing_history"]:
        out.append("")
        out += attempt_rows(s["processing_history"], now, width)
    return "\n".join(out)


def git_lines(b: shapes.BatchItem, state: dict[str, Any], width: int) -> list[str]:
    """A worktree batch (SPEC 15): its branch and base, its worktree while there, what
    merge_into_base did, and every worktree kept for changes no commit holds."""
    rec = state.get("git")
    if not rec:
        return ["worktree: made when its first feature starts"] if b.get("isolation") else []
    base = rec["base_ref"] or f"a detached HEAD ({rec['base_commit'][:12]})"
    out = [cut(f"branch: {rec['branch']} (from {base} at {rec['base_commit'][:12]})", width)]
    if rec["step"] not in ("removed", "kept"):
        out.append(f"worktree: {printable(rec['worktree'])}")  # whole: it is copied
    if rec.get("forward"):
        out += wrap(rec["forward"], "base: ", "    ", 3, width)
    kept = [rec] if rec["step"] == "kept" else []
    kept += [f for f in rec["features"] if f["step"] == "kept"]
    for k in kept:
        out.append(f"kept: {printable(k['worktree'])} ({printable(k['branch'])})")
        out += wrap(k["note"] or "", "    ", "    ", 4, width)
    return out


def feature_rows(state: dict[str, Any], states: list[str], now: float, width: int) -> list[str]:
    """One row per feature: index, status, attempts, time, tokens, cost; errors; the total."""
    history: list[dict[str, Any]] = state["processing_history"]
    errors = {f["feature_index"]: f["error_message"] for f in state["failed_features"]}
    by_index: dict[int, list[dict[str, Any]]] = {}
    for a in history:
        by_index.setdefault(a["feature_index"], []).append(a)
    runs_of = [by_index.get(i, []) for i in range(len(state["features"]))]
    costs, total_cost = money_column(
        [sum(a["cost_usd"] or 0.0 for a in runs) for runs in runs_of], state["cost_usd"]
    )
    out = [f"{'IDX':>4} {'STATUS':<9} {'ATT':>3} {'TIME':>7} {'TOKENS':>6} {'COST':>8}  FEATURE"]
    total_s = 0.0
    for i, (feature, runs) in enumerate(zip(state["features"], runs_of, strict=True)):
        took = sum(attempt_seconds(a, states[i] == "running", now) for a in runs)
        total_s += took
        head = (
            f"{i:>4} {states[i]:<9} {len(runs):>3} "
            f"{human_duration(took) if runs else '-':>7} {used_tokens(runs):>6} {costs[i]:>8}  "
        )
        out.append(head + cut(feature, width - len(head)))
        if i in errors:
            out += wrap(errors[i] or "(no message)", "       error: ", " " * 14, 3, width)
    out.append(
        f"{'':>4} {'total':<9} {len(history):>3} {human_duration(total_s):>7} "
        f"{used_tokens(history, state['context_token_estimate']):>6} {total_cost:>8}"
    )
    return out


NONE = "–"  # what an attempt of an older batchd never recorded
INDENT = " " * 7


def attempt_rows(history: list[dict[str, Any]], now: float, width: int) -> list[str]:
    """The evidence of each attempt (SPEC 14), named ``index.attempt`` like its log: time,
    tokens, cost, the check; below it, what it changed in git and the agent's session."""
    out = [
        "attempts:",
        f"{'RUN':>6} {'OUTCOME':<11} {'TIME':>7} {'TOKENS':>6} {'COST':>8}  CHECK",
    ]
    sessions = False
    for a in history:
        run = f"{a['feature_index']}.{a['attempt']}"
        out.append(
            f"{run:>6} {cut(attempt_outcome(a), 11):<11} {attempt_time(a, now):>7} "
            f"{attempt_tokens(a):>6} {attempt_cost(a):>8}  {attempt_check(a)}"
        )
        more = [attempt_git(a["git"])] if a.get("git") else []
        if a.get("session_id"):
            sessions = True
            more.append(f"session {printable(a['session_id'])}")
        if more and len(INDENT + "; ".join(more)) <= width:
            out.append(INDENT + "; ".join(more))
        else:
            out += [INDENT + m for m in more]
    if sessions:
        out.append("(to resume a session: claude --resume ID, or codex resume ID)")
    return out


def attempt_outcome(a: dict[str, Any]) -> str:
    return str(a.get("outcome") or a.get("phase") or "running").replace("_", " ")


def attempt_time(a: dict[str, Any], now: float) -> str:
    running = a.get("outcome") is None
    if a.get("duration_s") is None and not running:
        return NONE
    return human_duration(attempt_seconds(a, running, now))


def attempt_cost(a: dict[str, Any]) -> str:
    cost = a.get("cost_usd")
    return NONE if cost is None else money(cost) if cost else "$0"


def attempt_tokens(a: dict[str, Any]) -> str:
    n = a.get("tokens")
    return NONE if n is None else tokens(n, bool(a.get("tokens_estimated"))) if n else "0"


def attempt_check(a: dict[str, Any]) -> str:
    """passed, failed (exit N), timed out, no change (require_change), checking, or "–"
    (no check ran, or an attempt of a batchd before checks)."""
    if a.get("outcome") is None:
        return "checking" if a.get("phase") == "verifying" else NONE
    v = a.get("verify")
    if v is not None:
        if a.get("verified") or v.get("exit_code") == 0:
            return "passed"
        code = v.get("exit_code")
        return "timed out" if code is None else f"failed (exit {code})"
    if a.get("verified") is False:
        return "no change"
    return "passed" if a.get("verified") else NONE


def attempt_git(g: dict[str, Any]) -> str:
    """``2 commits, 3 files, +40/-2, dirty``: what an attempt changed in its work tree."""
    text = (
        f"{plural(g.get('commits', 0), 'commit')}, {plural(g.get('files_changed', 0), 'file')}, "
        f"+{g.get('insertions', 0)}/-{g.get('deletions', 0)}"
    )
    return text + (", dirty" if g.get("dirty") else "")


def used_tokens(attempts: list[dict[str, Any]], total: int | None = None) -> str:
    """The tokens of these attempts (or ``total``), ``~N`` when any count was estimated."""
    used = sum(a["tokens"] or 0 for a in attempts) if total is None else total
    return tokens(used, any(a.get("tokens_estimated") and a["tokens"] for a in attempts))


def attempt_seconds(a: dict[str, Any], running: bool, now: float) -> float:
    """How long one attempt took (or has taken so far, while it runs)."""
    if a["duration_s"] is not None:
        return float(a["duration_s"])
    if running and a["outcome"] is None and a["started_at"]:
        start = parse_ts(a["started_at"])
        return 0.0 if start is None else max(0.0, now - start)
    return 0.0
