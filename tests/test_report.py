"""The morning report (SPEC 14) built from batch states and rendered: golden files and rules.

The golden files in tests/data/report/ are the report of tests/report_states.py's
morning. After a deliberate change of wording, write them again with
``BATCHD_WRITE_GOLDEN=1 pytest tests/test_report.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd import report, reportmd, reportrender, reportshapes
from batchd.batch import Batch
from batchd.model import BatchState, DaemonState, RetryState, batch_id_for, utc_iso
from tests.report_states import NOW, T0, attempt, batch, log_path, morning

GOLDEN = Path(__file__).resolve().parent / "data" / "report"


def morning_report() -> reportshapes.Report:
    batches, queue = morning()
    return report.build(batches, queue=queue, log_path=log_path, now=NOW)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BATCHD_WRITE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"


def test_the_text_report_of_a_morning_matches_its_golden_file() -> None:
    """Needs-you first, then a table per batch, then totals, for a 100-column terminal."""
    check_golden("morning.txt", reportrender.render_text(morning_report(), width=100))


def test_the_markdown_report_of_a_morning_matches_its_golden_file() -> None:
    """The Markdown report: GitHub tables for what needs a person, each batch, the totals."""
    check_golden("morning.md", reportmd.render_markdown(morning_report()))


def test_the_json_report_of_a_morning_matches_its_golden_file_and_shape() -> None:
    """The JSON report is the ``reportshapes.Report`` value, and decodes as that shape."""
    text = reportrender.render_json(morning_report())
    check_golden("morning.json", text)
    msgspec.json.decode(text, type=reportshapes.Report, strict=True)


def test_the_window_takes_unfinished_batches_and_those_finished_within_it() -> None:
    """Default selection: every unfinished batch, and the finished ones updated in the last
    24 h; the batch finished the day before is left out unless named."""
    batches, _ = morning()
    seqs = [b.state.seq for b in report.select(batches, NOW)]
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]
    named = report.select(batches, NOW, batch_ids={batch_id_for(T0), batch_id_for(T0 + 2)})
    assert [b.state.seq for b in named] == [0, 2]
    wide = report.select(batches, NOW, since_s=3 * 86400)
    assert wide[0].state.seq == 0


def test_what_needs_a_person_comes_with_the_command_that_lifts_it() -> None:
    """A breaker pause is lifted by reset-breaker, other pauses by resume, the queue's by
    resume --all, a usage-limit wait by limit --clear; an open breaker of a batch that goes
    on is listed once."""
    a = morning_report()["needs_attention"]
    commands = {(p["name"], p["command"].split(" ", 2)[1]) for p in a["paused"]}
    assert commands == {
        (None, "resume"),
        ("docs", "resume"),
        ("refactor", "reset-breaker"),
        ("expensive", "resume"),
        ("claude work", "resume"),
        ("gone cwd", "resume"),
    }
    assert a["paused"][0]["command"] == "batchctl resume --all"
    assert [w["command"] for w in a["limit_waits"]] == ["batchctl limit --clear codex"]
    assert [k["name"] for k in a["breakers"]] == ["migrations"]
    parser = [f for f in a["failed"] if f["name"] == "parser"]
    assert parser == [
        {
            "batch_id": batch_id_for(T0 + 2),
            "seq": 2,
            "name": "parser",
            "index": 1,
            "feature": "Handle `*` globs and <angle> brackets in keys",
            "reason": parser[0]["reason"],
            "attempts": 3,
            "log_path": log_path(batch_id_for(T0 + 2), 1, 3),
            "session_id": "5e551011-aaaa-4bbb-8ccc-000000000003",
        }
    ]
    assert parser[0]["reason"].startswith("verify failed (exit 2): ")


def test_entries_of_an_older_version_show_a_dash_for_what_they_never_recorded() -> None:
    """The v0.2 state (no git, check or session fields) gives None in JSON and "–" in text."""
    r = morning_report()
    [old] = [b for b in r["batches"] if b["seq"] == 13]
    first = old["features"][0]
    assert first["commits"] is None and first["check"] is None and first["session_id"] is None
    assert first["cost_usd"] == 0.35 and first["attempts"] == 2 and first["duration_s"] == 476.8
    row = reportrender._row(reportrender.feature_cells(first), [5, 10, 5, 7, 8, 7, 9, 6])
    assert row.split() == ["0", "completed", "2", "7m57s", "$0.3500", "–", "–", "–"]


def test_an_estimated_token_count_is_shown_with_a_tilde() -> None:
    """Tokens counted as output bytes / 4 (tokens_estimated) read ``~N``; reported ones ``N``."""
    r = morning_report()
    [parser] = [b for b in r["batches"] if b["name"] == "parser"]
    assert parser["counts"]["tokens_estimated"] and parser["counts"]["tokens"] == 44_500
    assert reportrender.tokens(44_500, True) == "~44,500"
    assert "~44,500 tokens" in reportrender.render_text(r)
    assert r["totals"]["tokens_estimated"]
    [api] = [b for b in r["batches"] if b["name"] == "api limits"]
    assert "83,500 tokens" in reportrender.money_line(api["counts"])


@given(st.lists(st.lists(st.floats(0, 50, allow_nan=False) | st.none(), max_size=4), max_size=30))
def test_the_costs_shown_per_feature_add_up_to_the_totals_shown(
    costs: list[list[float | None]],
) -> None:
    """Whatever the costs, the per-feature figures as displayed sum to the batch's and the
    report's displayed totals (rounding is done once, per feature)."""
    history = [
        attempt(i, n + 1, float(i), 1.0, "failed", cost_usd=c)
        for i, per in enumerate(costs)
        for n, c in enumerate(per)
    ]
    features = [f"feature {i}" for i in range(len(costs))]
    records = batch(1, "costs", features, history, status="in_progress")
    r = report.build([records], queue=DaemonState(), log_path=log_path, now=NOW)
    shown = [reportrender.cost(f["cost_usd"]) for f in r["batches"][0]["features"]]
    cents = sum(int(s[1:].replace(".", "")) for s in shown if s != reportrender.NONE)
    total = reportrender.cost(r["totals"]["cost_usd"])
    assert int(total[1:].replace(".", "")) == cents
    assert reportrender.cost(r["batches"][0]["counts"]["cost_usd"]) == total


def test_markdown_cells_escape_pipes_newlines_and_markup() -> None:
    """A cell's ``|`` cannot end the cell, a newline cannot end the row, and Markdown
    punctuation (code, emphasis, links, HTML, math) renders as the characters."""
    assert reportmd.md("a | b\nc\\|d `x` *y* [l](u) <b> $1 $2") == (
        "a \\| b c\\\\\\|d \\`x\\` \\*y\\* \\[l\\](u) \\<b\\> \\$1 \\$2"
    )
    assert reportmd.md_code("/tmp/a|b") == "`/tmp/a\\|b`"
    assert reportmd.md_code("we`ird") == "we\\`ird"
    assert reportmd.md_code(None) == reportrender.NONE


def test_every_markdown_table_row_has_as_many_cells_as_its_header() -> None:
    """No text of the report (feature texts with ``|`` included) breaks a table."""
    batches, queue = morning()
    state = batches[0].state
    state.features[0] = "pipes | in | text"
    state.name = "a|b"
    md = reportmd.render_markdown(report.build(batches, queue=queue, log_path=log_path, now=NOW))
    unescaped = re.compile(r"(?<!\\)(?:\\\\)*\|")
    header_cells = 0
    for line in md.splitlines():
        if not line.startswith("|"):
            header_cells = 0
            continue
        cells = len(unescaped.findall(line))
        header_cells = header_cells or cells
        assert cells == header_cells, line


def test_a_running_check_and_a_usage_limit_wait_are_outcomes_of_their_own() -> None:
    """An open attempt in its check reads ``verifying`` (check ``running``); a feature whose
    last attempt hit the usage limit reads ``limited``; both count as not done."""
    r = morning_report()
    by_name = {b["name"]: b for b in r["batches"]}
    cache = by_name["cache"]["features"]
    assert [f["outcome"] for f in cache] == ["completed", "verifying", "pending"]
    assert cache[1]["check"] == "running" and cache[1]["duration_s"] == (540 - 401) * 60
    assert by_name["cache"]["counts"]["running"] == 1
    codex = by_name["codex chores"]["features"]
    assert [f["outcome"] for f in codex] == ["completed", "limited"]
    assert by_name["codex chores"]["counts"]["pending"] == 1


def test_a_check_that_failed_then_passed_and_git_evidence_add_up_per_feature() -> None:
    """Attempts, time, cost and git figures of a feature are the sums over its attempts; its
    check is its last attempt's."""
    [api] = [b for b in morning_report()["batches"] if b["name"] == "api limits"]
    second = api["features"][1]
    assert (second["attempts"], second["duration_s"], second["cost_usd"]) == (2, 960.0, 0.2235)
    assert (second["commits"], second["insertions"], second["deletions"]) == (2, 36, 5)
    assert second["check"] == "passed" and second["error"] is None
    assert api["counts"]["wall_s"] == 36 * 60 and api["counts"]["agent_s"] == 33 * 60


def test_batch_objects_of_the_engine_are_reported_as_they_are() -> None:
    """``batch.Batch`` (what the engine holds) is accepted as is, and never changed."""
    records, _ = morning()
    engine_batches = [Batch(r.state, r.retry) for r in records]
    before = [msgspec.json.encode(b.state) for b in engine_batches]
    r = report.build(engine_batches, queue=DaemonState(), log_path=log_path, now=NOW)
    assert [msgspec.json.encode(b.state) for b in engine_batches] == before
    assert r["needs_attention"]["paused"][0]["batch_id"] is not None  # the queue is not paused
    assert json.loads(reportrender.render_json(r)) == r


def test_a_report_with_nothing_to_do_says_so() -> None:
    """No batch and no wait: the report says there is nothing, in text and Markdown."""
    r = report.build([], queue=DaemonState(), log_path=log_path, now=NOW)
    assert "Needs you: nothing." in reportrender.render_text(r)
    assert "Nothing." in reportmd.render_markdown(r)
    assert r["totals"]["features"] == 0 and r["totals"]["wall_s"] is None


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "–"),
        (0.4, "0s"),
        (59.6, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (90061, "1d01h"),
    ],
)
def test_durations_read_short(seconds: float | None, shown: str) -> None:
    """Durations are shown in the two largest units."""
    assert reportrender.duration(seconds) == shown


def test_a_pending_feature_has_no_attempt_and_no_log() -> None:
    """A feature that never ran has 0 attempts and no log path (not a path to a missing file)."""
    state = BatchState(
        batch_id=batch_id_for(T0),
        seq=1,
        name="n",
        features_file="n.txt",
        source_sha256="0" * 64,
        total_features=1,
        features=["x"],
        created_at=utc_iso(T0),
        updated_at=utc_iso(T0),
    )
    retry = RetryState(batch_id=state.batch_id, created_at=utc_iso(T0), updated_at=utc_iso(T0))
    r = report.build(
        [report.Records(state, retry)], queue=DaemonState(), log_path=log_path, now=NOW
    )
    [f] = r["batches"][0]["features"]
    assert (f["outcome"], f["attempts"], f["log_path"], f["duration_s"]) == (
        "pending",
        0,
        None,
        None,
    )
