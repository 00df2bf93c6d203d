"""An agent's usage limit end to end (SPEC 13, issue 20): real daemons on both backends.

The agent is ``tests/bin/fake-agent`` printing what the agents print when their
limit is reached: Claude Code's result (``usage_limit=N`` prints an older CLI's
``Claude AI usage limit reached|<epoch>``, the reset N seconds away; a file
holds the current ``You've hit your limit · resets ...``) and codex's ``error``
event. ``once=PATH`` makes the limit pass: the run after it completes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from batchd.model import parse_iso, utc_iso
from tests.harness import Daemon, agent_command, toml_list
from tests.test_integrations import hook_script, records
from tests.test_systemd import drain
from tests.test_systemd import ns as ns  # the notify socket fixture

MakeDaemon = Callable[..., Daemon]

NO_MARGIN = "[limits]\nreset_margin = 0\n"
CODEX = f'[runners.codex]\ncommand = {toml_list(agent_command())}\noutput_format = "codex-jsonl"\n'
# codex's own words (SPEC 13), in an ``error`` event of ``codex exec --json``.
CODEX_LIMIT = (
    "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/codex/settings/usage to purchase more credits or try again in "
    "2 days 17 hours 14 minutes."
)
CLAUDE_LIMIT = "You've hit your limit \u00b7 resets 10pm (America/New_York)"


def starts(d: Daemon, batch_id: str | None = None) -> list[dict[str, Any]]:
    return [
        r for r in d.agent_runs() if r["event"] == "start" and batch_id in (None, r["batch_id"])
    ]


def drop_together(d: Daemon, files: dict[str, list[str]]) -> None:
    """Queue these files as batches before any of them starts (the queue paused meanwhile):
    a trouble that pauses a profile finds them all there."""
    assert d.ctl("pause").returncode == 0
    for name, lines in files.items():
        d.drop(name, lines)
    d.wait_for(lambda: len(d.status()["batches"]) == len(files), what="the batches queued")
    assert d.ctl("resume", "--all").returncode == 0


def all_paused(d: Daemon) -> list[dict[str, Any]] | None:
    """Every batch of ``status``, once all of them are paused."""
    batches: list[dict[str, Any]] = d.status()["batches"]
    return batches if all(b["status"] == "paused" for b in batches) else None


def claude_result(path: Path, text: str) -> Path:
    """A headless Claude Code result with ``text``, as ``claude -p --output-format json``
    prints it when its usage limit is reached (exit 1)."""
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": text,
        "session_id": "0c2a5be1-7d3e-4f55-9a51-2d6c1f0e9b11",
        "total_cost_usd": 0,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    path.write_text(json.dumps(result) + "\n")
    return path


def codex_events(path: Path, *events: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def wait_begun(d: Daemon, runner: str = "default") -> dict[str, Any]:
    """The wait of ``runner`` as status shows it, once it is there."""
    waits = d.wait_for(
        lambda: [w for w in d.status()["limit_waits"] if w["runner"] == runner],
        what=f"{runner}'s usage-limit wait",
    )
    wait: dict[str, Any] = waits[0]
    return wait


def next_10pm_new_york(after: float) -> float:
    """When ``resets 10pm (America/New_York)`` means, seen at ``after``."""
    zone = ZoneInfo("America/New_York")
    today = datetime.fromtimestamp(after, zone).date()
    for day in (today, today + timedelta(days=1)):
        at = datetime(day.year, day.month, day.day, 22, tzinfo=zone).timestamp()
        if at > after:
            return at
    raise AssertionError("10pm comes every day")


def test_a_limited_attempt_waits_then_runs_again_uncharged(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Retries off: the limited feature runs again once the reset (an epoch, no margin) has
    passed, keeps attempt 1 and completes; nothing charged; the audit has the wait with its
    until and its end (reset_passed); hooks.on_limit got the profile, the ISO until and
    the agent's text."""
    hook = hook_script(tmp_path, "on_limit")
    d = make_daemon(config=NO_MARGIN + f"[hooks]\non_limit = {json.dumps(hook)}\n")
    d.start()
    d.drop("l.txt", [f"limited once={tmp_path / 'm'} usage_limit=3", "second"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed", state
    hist = [(h["feature_index"], h["attempt"], h["outcome"]) for h in state["processing_history"]]
    assert hist == [(0, 1, "limited"), (0, 1, "completed"), (1, 1, "completed")]
    assert [(r["index"], r["attempt"]) for r in starts(d)] == [("0", 1), ("0", 1), ("1", 1)]
    retry = d.retry_state(state["batch_id"])
    assert retry["retry_counts"] == {} and retry["global_retry_count"] == 0
    assert retry["consecutive_failures"] == 0 and not retry["circuit_breaker_open"]
    audit = d.audit(state["batch_id"])
    assert [e["event_type"] for e in audit] == ["usage_limit_wait", "usage_limit_end"]
    began, ended = audit
    assert began["feature_index"] == 0 and began["until"] is not None
    assert "Claude AI usage limit reached|" in began["error_message"]
    reset = float(began["error_message"].rsplit("|", 1)[1])
    assert began["until"] == utc_iso(max(reset, parse_iso(began["timestamp"])))
    assert ended["reason"] == "reset_passed" and ended["feature_index"] == 0
    assert starts(d)[1]["t"] >= parse_iso(began["until"])
    [env] = records(tmp_path, "on_limit")
    assert env["BATCHD_RUNNER_PROFILE"] == "default"
    assert env["BATCHD_LIMIT_UNTIL"] == began["until"]
    assert env["BATCHD_LIMIT_MESSAGE"] == began["error_message"]
    assert d.status()["limit_waits"] == []
    log = (d.state / "batches" / state["batch_id"] / "logs" / "0.1.log").read_text()
    assert "Claude AI usage limit reached|" in log.split("\n[batchd: ")[0]
    assert ": the attempt stopped at the usage limit runs again from here]" in log


def test_a_wait_is_said_survives_kill_9_and_clear_ends_it(
    make_daemon: MakeDaemon, tmp_path: Path, ns: socket.socket
) -> None:
    """Claude's current text (resets 10pm in New York): status (words and --json),
    `batchctl limit` and systemd's STATUS= say the wait; kill -9 keeps its until in
    daemon.json; after the restart a codex batch runs and nothing of the waiting profile
    starts; `batchctl limit --clear default` ends it (audit: cleared), the probe completes
    on attempt 1 and the batch goes on."""
    limit_file = claude_result(tmp_path / "limit.json", CLAUDE_LIMIT)
    d = make_daemon(config=CODEX)
    notify = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    d.start(env=notify)
    d.drop("l.txt", [f"probe once={tmp_path / 'm'} print={limit_file} exit=1", "after"])
    wait = wait_begun(d)
    [since] = [h["finished_at"] for h in d.batch_states()[0]["processing_history"]]
    assert wait["until"] == utc_iso(next_10pm_new_york(parse_iso(since)) + 120)
    assert wait["message"] == CLAUDE_LIMIT
    [batch] = d.status()["batches"]
    assert batch["limit_until"] == wait["until"] and batch["status"] != "paused"
    human = d.ctl("status").stdout
    assert "waiting for default's usage limit: until " in human and " in " in human
    assert "`batchctl limit --clear` ends the waits now" in human
    shown = d.ctl("show", batch["batch_id"]).stdout
    assert "runner: default\n" in shown
    assert "waiting for default's usage limit until " in shown
    unknown = d.ctl("limit", "--clear", "codex")
    assert unknown.returncode == 1 and unknown.stderr.strip().endswith(
        "runner profile 'codex' is not waiting for a usage limit (waiting: default)"
    )
    listed = d.ctl("limit").stdout
    assert listed.splitlines()[0] == wait["in_words"]
    assert CLAUDE_LIMIT in listed and "batchctl limit --clear [RUNNER]" in listed
    idle = f"STATUS=waiting for default's usage limit until {wait['until']}"
    assert idle in drain(ns, lambda m: idle in m)

    d.kill9()
    daemon_json = json.loads((d.state / "daemon.json").read_bytes())
    assert daemon_json["limit_waits"]["default"]["until"] == wait["until"]
    restarted = time.time()
    d.start(env=notify)
    assert d.status()["limit_waits"][0]["until"] == wait["until"]
    drain(ns, lambda m: any(f"usage limit until {wait['until']}" in x for x in m))
    d.drop("c.txt", ["# batchd: runner = codex", f"print={codex_done(tmp_path)}"])
    codex = d.wait_for(
        lambda: [
            s for s in d.batch_states() if s["runner"] == "codex" and s["status"] == "completed"
        ],
        what="the codex batch, during the wait",
    )[0]
    assert {r["batch_id"] for r in starts(d) if r["t"] >= restarted} == {codex["batch_id"]}
    both = f"; waiting for default's usage limit until {wait['until']}"
    msgs = drain(ns, lambda m: any("STATUS=1 running (1 slots): " in x and both in x for x in m))
    assert any(both in x for x in msgs), msgs

    cleared = d.ctl("limit", "--clear", "default")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.splitlines()[0] == "ended the usage-limit wait of default"
    [state, _] = d.wait_finished(2)
    assert state["status"] == "completed"
    runs = [(h["feature_index"], h["attempt"], h["outcome"]) for h in state["processing_history"]]
    assert runs == [(0, 1, "limited"), (0, 1, "completed"), (1, 1, "completed")]
    ended = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "usage_limit_end"]
    assert [e["reason"] for e in ended] == ["cleared"]
    assert d.ctl("limit").stdout.strip() == "no runner profile waits for a usage limit"


def runner_keys(d: Daemon, keys: str) -> None:
    """Add ``keys`` to the [runner] table of ``d``'s configuration."""
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("[runner]\n", f"[runner]\n{keys}\n", 1))


def codex_done(tmp_path: Path) -> Path:
    return codex_events(
        tmp_path / "codex-done.jsonl",
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "turn.started"},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 5}},
    )


def test_a_reset_too_far_away_pauses_the_profile_instead(make_daemon: MakeDaemon) -> None:
    """A reset an hour away with limits.max_limit_wait = 60: no wait, the profile's batches
    pause (usage_limit, naming the key); the codex batch goes on; nothing is charged;
    `batchctl resume --all` runs the feature again on attempt 1."""
    d = make_daemon(config=CODEX + "[limits]\nmax_limit_wait = 60\n")
    marker = d.root / "m"
    d.start()
    drop_together(
        d,
        {
            "l.txt": [f"far once={marker} usage_limit=3600"],
            "w.txt": [f"# batchd: cwd = {d.root}", "same profile, other cwd"],
        },
    )
    [paused, other] = d.wait_for(
        lambda: all_paused(d),
        what="both default batches paused",
    )
    for b in (paused, other):
        assert b["pause_reason"].startswith("usage_limit: default's usage limit resets at ")
        assert (
            "more than limits.max_limit_wait (60 s) away: Claude AI usage limit"
            in b["pause_reason"]
        )
    assert d.status()["limit_waits"] == []
    retry = d.retry_state(paused["batch_id"])
    assert retry["retry_counts"] == {} and retry["consecutive_failures"] == 0
    d.drop("c.txt", ["# batchd: runner = codex", f"print={codex_done(d.root)}"])
    d.wait_for(
        lambda: any(
            s["runner"] == "codex" and s["status"] == "completed" for s in d.batch_states()
        ),
        what="the codex batch",
    )
    assert d.ctl("resume", "--all").returncode == 0
    states = d.wait_finished(3)
    assert [s["status"] for s in states] == ["completed", "completed", "completed"]
    runs = [(h["attempt"], h["outcome"]) for h in states[0]["processing_history"]]
    assert runs == [(1, "limited"), (1, "completed")]


def test_two_slots_on_the_limited_profile_both_wait_then_one_probe_runs(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Two slots, two batches of one profile hit the limit while both run: one wait (its
    hook once), each batch audits it; after the reset one probe runs alone, and the other
    batch starts only when the probe has ended the wait."""
    hook = hook_script(tmp_path, "on_limit")
    d = make_daemon(
        config=NO_MARGIN + f"[queue]\nslots = 2\n[hooks]\non_limit = {json.dumps(hook)}\n"
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    d.start()
    words = f"barrier={barrier}:2 usage_limit=3 sleep=0.5"
    d.drop("a.txt", [f"a once={tmp_path / 'ma'} {words}"])
    d.drop("b.txt", [f"# batchd: cwd = {other}", f"b once={tmp_path / 'mb'} {words}"])
    states = d.wait_finished(2)
    assert [s["status"] for s in states] == ["completed", "completed"]
    for s in states:
        runs = [(h["attempt"], h["outcome"]) for h in s["processing_history"]]
        assert runs == [(1, "limited"), (1, "completed")]
        kinds = [e["event_type"] for e in d.audit(s["batch_id"])]
        assert kinds == ["usage_limit_wait", "usage_limit_end"], kinds
    assert len(records(tmp_path, "on_limit")) == 1
    events = d.agent_runs()
    limited = [r for r in events if r["event"] == "end" and r.get("code") == 1]
    assert len(limited) == 2
    later = [r for r in events if r["t"] > max(r["t"] for r in limited)]
    kinds = [(r["event"], r["batch_id"]) for r in later]
    probe, rest = kinds[0][1], kinds[2][1]
    assert kinds == [("start", probe), ("end", probe), ("start", rest), ("end", rest)], kinds
    assert probe != rest


def test_a_codex_limit_waits_while_the_other_profile_works(make_daemon: MakeDaemon) -> None:
    """codex's `error`/`turn.failed` usage-limit text (try again in 2 days 17 hours 14
    minutes) starts codex's wait from its duration; a Claude batch on [runner] runs and
    completes meanwhile; `batchctl limit --clear` (every profile) lets codex's probe run."""
    d = make_daemon(config=CODEX)
    limit = codex_events(
        d.root / "limit.jsonl",
        {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
        {"type": "turn.started"},
        {"type": "error", "message": CODEX_LIMIT},
        {"type": "turn.failed", "error": {"message": CODEX_LIMIT}},
    )
    d.start()
    d.drop(
        "c.txt",
        [
            "# batchd: runner = codex",
            f"once={d.root / 'm'} print={limit} exit=1 then={codex_done(d.root)}",
        ],
    )
    wait = wait_begun(d, "codex")
    [limited] = d.batch_states()[0]["processing_history"]
    assert limited["outcome"] == "limited" and limited["session_id"].startswith("0199a213")
    ended = parse_iso(limited["finished_at"])
    expected = ended + 2 * 86400 + 17 * 3600 + 14 * 60 + 120
    assert abs(parse_iso(wait["until"]) - expected) < 1, (wait, expected)
    assert wait["message"] == CODEX_LIMIT
    d.drop("w.txt", [f"# batchd: cwd = {d.root}", "works meanwhile"])
    d.wait_for(
        lambda: any(
            s["runner"] == "default" and s["status"] == "completed" for s in d.batch_states()
        ),
        what="the default batch, during codex's wait",
    )
    assert [w["runner"] for w in d.status()["limit_waits"]] == ["codex"]
    out = d.ctl("limit", "--clear")
    assert out.returncode == 0 and "ended the usage-limit wait of codex" in out.stdout
    [codex, _] = d.wait_finished(2)
    assert codex["status"] == "completed"
    assert [h["outcome"] for h in codex["processing_history"]] == ["limited", "completed"]
    assert codex["processing_history"][1]["tokens"] == 15


def test_a_silent_run_is_stopped_by_the_stall_timeout(make_daemon: MakeDaemon) -> None:
    """runner.stall_timeout = 1.5: a run that prints once and goes silent is stopped within
    1.5 s + 1 s of its output, timed_out, transient, with the stall message."""
    d = make_daemon()
    runner_keys(d, "stall_timeout = 1.5")
    d.start()
    d.drop("s.txt", ["stdout=working sleep=120"])
    [state] = d.wait_finished(1)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"]) == ("timed_out", "transient")
    assert attempt["error_message"].startswith(
        "stalled: no output for 1.5 s (runner.stall_timeout)"
    )
    [start] = starts(d)
    [term] = [r for r in d.agent_runs() if r["event"] == "term"]
    assert term["t"] - start["t"] <= 1.5 + 1.0


def test_a_limit_without_a_reset_time_waits_the_probe_interval(make_daemon: MakeDaemon) -> None:
    """A text of limits.usage_patterns naming no reset time (on stderr of a plain runner):
    the profile waits limits.probe_interval from the end of the attempt, then the feature
    runs again on attempt 1 and completes."""
    d = make_daemon(
        config='[limits]\nusage_patterns = ["monthly quota exhausted"]\nprobe_interval = 2\n'
    )
    d.start()
    d.drop("q.txt", [f"once={d.root / 'm'} stderr=Error:_monthly_quota_exhausted exit=1"])
    [state] = d.wait_finished(1)
    limited, done = state["processing_history"]
    assert (limited["outcome"], done["outcome"]) == ("limited", "completed")
    assert limited["attempt"] == done["attempt"] == 1
    [began, ended] = d.audit(state["batch_id"])
    assert (ended["event_type"], ended["reason"]) == ("usage_limit_end", "reset_passed")
    assert began["until"] == utc_iso(parse_iso(began["timestamp"]) + 2)
    assert began["error_message"] == "Error: monthly quota exhausted"
    assert starts(d)[1]["t"] >= parse_iso(began["until"])
