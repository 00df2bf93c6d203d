"""What people read: rejected spool files in status, estimated tokens as ~N, no ETA while
paused, and per-feature costs that add up to the total shown. Pure functions fed replies."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batchctl import render, render_batches, render_status
from batchd import shapes
from tests.test_batchctl_local import (
    GOOD_ID,
    NOW,
    assert_fits,
    batch_item,
    running_item,
    status_result,
)


def with_keys(st: shapes.Status, **more: Any) -> shapes.Status:
    """A status reply with keys a newer daemon adds (not in batchd.shapes yet)."""
    reply: dict[str, Any] = {**st, **more}
    out: shapes.Status = reply  # type: ignore[assignment]
    return out


def test_status_lists_rejected_spool_files_when_the_reply_has_them() -> None:
    """`rejected` and `rejected_total` become a line with the count and the folder, one line
    per newest file with its reason, and how many more; none without them."""
    st = with_keys(
        status_result(),
        rejected=[
            {"name": "bad.txt", "reason": "bad.txt: line 2: control character U+0001 at column 4"},
            {"name": "x.json", "reason": "x.json: not valid JSON: " + "truncated " * 20},
        ],
        rejected_total=7,
    )
    text = render_status.format_status(st, NOW)
    assert_fits(text)
    assert "rejected: 7 spool files in /s/rejected/\n" in text
    assert "    bad.txt: bad.txt: line 2: control character U+0001 at column 4\n" in text
    assert "    x.json: x.json: not valid JSON: truncated" in text
    assert "    and 5 more\n" in text
    one = with_keys(
        status_result(), rejected=[{"name": "a\x1b[31m", "reason": "r"}], rejected_total=1
    )
    text = render_status.format_status(one, NOW)
    assert "rejected: 1 spool file in /s/rejected/\n    a [31m: r\n" in text
    assert "and 0 more" not in text and "\x1b" not in text
    for quiet in (status_result(), with_keys(status_result(), rejected=[], rejected_total=0)):
        assert "rejected" not in render_status.format_status(quiet, NOW)


def test_no_eta_for_a_paused_batch_or_a_paused_queue() -> None:
    """The ETA column and the watch line leave the ETA out when nothing of the batch runs
    until a resume: the batch is paused, or the queue is."""
    batches = [
        batch_item(seq=1, status="in_progress", eta_s=600.0),
        batch_item(seq=2, status="paused", pause_reason="by request", eta_s=900.0),
    ]
    running = status_result(queue_paused=False, pause_reason=None, problems=[], batches=batches)
    rows = {
        line.split()[0]: line.split()[-1]
        for line in render_status.format_status(running, NOW).splitlines()
        if GOOD_ID in line and line.split()[0].isdigit()
    }
    assert rows == {"1": "10m00s", "2": "-"}
    paused = status_result(queue_paused=True, batches=batches)
    assert "10m00s" not in render_status.format_status(paused, NOW)
    line = render_status.progress_line(paused, NOW)
    assert " eta -: " in line and "10m00s" not in line
    own = status_result(queue_paused=False, running=[running_item()], batches=batches[1:])
    assert " eta -: " in render_status.progress_line(
        status_result(queue_paused=False, batches=[batch_item(status="paused", eta_s=9.0)]), NOW
    )
    assert " eta -: " in render_status.progress_line(own, NOW)
    assert " eta 10m00s: " in render_status.progress_line(running, NOW)


def attempt(i: int, cost: float, tokens: int, estimated: bool | None) -> dict[str, Any]:
    return {
        "feature_index": i,
        "attempt": 1,
        "started_at": "2026-11-24T05:09:00.000000Z",
        "finished_at": "2026-11-24T05:09:10.000000Z",
        "duration_s": 10.0,
        "outcome": "completed",
        "tokens": tokens,
        "cost_usd": cost,
        "tokens_estimated": estimated,
    }


def show(history: list[dict[str, Any]], features: int, cost: float, tokens: int) -> str:
    state = {
        "features": [f"feature {i}" for i in range(features)],
        "failed_features": [],
        "processing_history": history,
        "cost_usd": cost,
        "context_token_estimate": tokens,
    }
    result: shapes.Show = {
        "batch": batch_item(total_features=features, status="completed"),
        "feature_states": ["completed"] * features,
        "running": None,
        "state": state,
        "retry": {"global_retry_count": 0, "circuit_breaker_open": False},
    }
    return render_batches.format_show(result, NOW, 100)


def rows_of(text: str) -> dict[str, list[str]]:
    rows = [line.split() for line in text.splitlines()]
    return {row[0]: row for row in rows if row and row[0] in ("0", "1", "2", "total")}


def test_estimated_tokens_read_tilde_n() -> None:
    """A feature whose tokens were estimated (output bytes / 4) shows ~N, as does the total;
    reported counts show plainly."""
    text = show(
        [attempt(0, 0.1, 1200, True), attempt(1, 0.1, 800, False), attempt(2, 0.1, 500, None)],
        3,
        0.3,
        2500,
    )
    rows = rows_of(text)
    assert rows["0"][4] == "~1200" and rows["1"][4] == "800" and rows["2"][4] == "500"
    assert rows["total"][3] == "~2500"
    plain = rows_of(show([attempt(0, 0.1, 12_345, False)], 1, 0.1, 12_345))
    assert plain["0"][4] == "12k" and plain["total"][3] == "12k"
    assert render.tokens(12_345, estimated=True) == "~12k" and render.tokens(0, True) == "-"


def test_per_feature_costs_add_up_to_the_total_shown() -> None:
    """Three features at $0.333333 each: $0.34 + $0.33 + $0.33 = $1.00 (not 3 x $0.33);
    costs under a cent switch the whole column to four places."""
    third = 0.333333
    rows = rows_of(show([attempt(i, third, 1, None) for i in range(3)], 3, 0.999999, 3))
    parts = [rows[str(i)][5] for i in range(3)]
    assert parts == ["$0.34", "$0.33", "$0.33"] and rows["total"][4] == "$1.00"
    rows = rows_of(show([attempt(0, 0.004, 1, None), attempt(1, 1.5, 1, None)], 2, 1.504, 2))
    assert [rows["0"][5], rows["1"][5], rows["total"][4]] == ["$0.0040", "$1.5000", "$1.5040"]


def cents(text: str) -> int:
    return 0 if text == "-" else round(float(text.lstrip("$")) * 10_000)


@given(st.lists(st.floats(min_value=0, max_value=50, allow_nan=False), min_size=1, max_size=30))
def test_money_column_parts_always_add_up(parts: list[float]) -> None:
    """For any costs, the parts shown add up exactly to the total shown, each part is within
    one unit of its own value, and a zero cost reads '-'."""
    total = round(sum(parts), 6)  # as the daemon keeps the batch's cost
    shown, shown_total = render.money_column(parts, total)
    assert sum(cents(s) for s in shown) == cents(shown_total)
    unit = 100 if all(p == 0 or p >= 0.01 for p in parts) and not 0 < total < 0.01 else 1
    for part, text in zip(parts, shown, strict=True):
        assert abs(cents(text) - part * 10_000) <= unit + 1e-6
        assert (text == "-") == (part == 0)
