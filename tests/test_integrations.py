"""Agent results, hooks and the cost cap with a real daemon (issue 6)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from tests.harness import Daemon, agent_command, alive

MakeDaemon = Callable[..., Daemon]


def test_claude_results_decide_and_are_costed(make_daemon: MakeDaemon) -> None:
    """is_error with exit 0 fails; malformed or missing results fall back to the exit code."""
    d = make_daemon()
    d.start()
    d.drop(
        "c.txt",
        [
            "ok claude=ok cost=0.25 tokens=1000",
            "denied claude=error cost=0.5 result=Permission_denied_for_tool_Bash",
            "malformed claude=malformed",
            "plain exit=0 stdout=TypeError:_fixed_it",
        ],
    )
    [state] = d.wait_finished(1)
    hist = state["processing_history"]
    assert [h["outcome"] for h in hist] == ["completed", "failed", "completed", "completed"]
    assert hist[0]["cost_usd"] == 0.25 and hist[0]["tokens"] == 1050
    assert hist[1]["cost_usd"] == 0.5 and hist[1]["exit_code"] == 0
    assert "Permission denied for tool Bash" in hist[1]["error_message"]
    assert hist[1]["failure_type"] == "permanent"
    assert state["cost_usd"] == 0.75
    assert state["failed_features"][0]["feature_index"] == 1
    assert state["context_token_estimate"] >= 1050 + 150  # reported tokens, not text length


def test_claude_json_format_requires_a_result(make_daemon: MakeDaemon) -> None:
    """output_format = claude-json: no result (or a malformed one) is a failure."""
    d = make_daemon(config="[runner]\n")  # placeholder, replaced below
    d.write_config(agent_command())
    d.config_path.write_text(
        d.config_path.read_text().replace("[runner]\n", '[runner]\noutput_format = "claude-json"\n')
    )
    d.start()
    d.drop("c.txt", ["ok claude=ok", "none stdout=all_good", "bad claude=malformed"])
    [state] = d.wait_finished(1)
    assert [h["outcome"] for h in state["processing_history"]] == ["completed", "failed", "failed"]
    assert "no Claude result" in state["processing_history"][1]["error_message"]


def test_text_format_ignores_results(make_daemon: MakeDaemon) -> None:
    """output_format = text: only the exit code decides."""
    d = make_daemon()
    d.config_path.write_text(
        d.config_path.read_text().replace("[runner]\n", '[runner]\noutput_format = "text"\n')
    )
    d.start()
    d.drop("c.txt", ["err claude=error"])
    [state] = d.wait_finished(1)
    assert state["processing_history"][0]["outcome"] == "completed"


def test_transcript_mentioning_errors_does_not_change_the_class(make_daemon: MakeDaemon) -> None:
    """TypeError in stdout transcript: a success stays a success, stderr decides the class."""
    d = make_daemon(env={"BATCH_RETRY_ENABLED": "1"}, config="[retry]\nmax_per_feature = 0\n")
    d.start()
    d.drop(
        "t.txt",
        [
            "a stdout=TypeError:_fixed",
            "b exit=1 stdout=TypeError_in_transcript stderr=ConnectionError",
        ],
    )
    [state] = d.wait_finished(1)
    hist = state["processing_history"]
    assert hist[0]["outcome"] == "completed"
    assert hist[1]["failure_type"] == "transient"


def hook_script(tmp: Path, name: str, body: str = "") -> list[str]:
    out = tmp / f"{name}.jsonl"
    script = tmp / f"{name}.py"
    script.write_text(
        "import json, os, sys\n"
        f"rec = {{k: v for k, v in os.environ.items() if k.startswith('BATCHD_')}}\n"
        "rec['cwd'] = os.getcwd()\n"
        "rec['pid'] = str(os.getpid())\n"
        f"open({str(out)!r}, 'a').write(json.dumps(rec) + '\\n')\n" + body
    )
    return [__import__("sys").executable, str(script)]


def records(tmp: Path, name: str) -> list[dict[str, str]]:
    path = tmp / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hooks_run_once_at_the_right_moment(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Each hook runs once per event with its environment, in the feature's cwd."""
    hooks = {n: hook_script(tmp_path, n) for n in ("before", "after", "done", "breaker")}
    cfg = (
        "[breaker]\nthreshold = 1\n[hooks]\n"
        f"before_feature = {json.dumps(hooks['before'])}\n"
        f"after_feature = {json.dumps(hooks['after'])}\n"
        f"on_batch_done = {json.dumps(hooks['done'])}\n"
        f"on_breaker_open = {json.dumps(hooks['breaker'])}\n"
    )
    d = make_daemon(config=cfg)
    d.start()
    d.drop("h.txt", ["one", "two exit=3"])
    [state] = d.wait_finished(1)
    d.wait_for(lambda: records(tmp_path, "done"), what="on_batch_done")
    before, after = records(tmp_path, "before"), records(tmp_path, "after")
    assert [r["BATCHD_FEATURE_INDEX"] for r in before] == ["0", "1"]
    assert [r["BATCHD_OUTCOME"] for r in after] == ["completed", "failed"]
    assert all(r["cwd"] == str(d.workdir) for r in before + after)
    [done] = records(tmp_path, "done")
    assert done["BATCHD_BATCH_ID"] == state["batch_id"]
    assert (done["BATCHD_STATUS"], done["BATCHD_COMPLETED"], done["BATCHD_FAILED"]) == (
        "failed",
        "1",
        "1",
    )
    assert json.loads(Path(done["BATCHD_STATE_FILE"]).read_text())["batch_id"] == state["batch_id"]
    [breaker] = records(tmp_path, "breaker")
    assert breaker["BATCHD_BATCH_ID"] == state["batch_id"]


def test_failing_and_hanging_hooks_never_stop_the_queue(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A hook that fails or hangs is logged; a failing before_feature fails the attempt as transient."""
    # The hang outlasts any deadline here: the queue gets past it only by the hook timeout.
    hang = hook_script(tmp_path, "hang", "import time; time.sleep(600)\n")
    fail = hook_script(tmp_path, "fail", "sys.exit(4)\n")
    cfg = (
        "[hooks]\ntimeout = 1\n"
        f"after_feature = {json.dumps(hang)}\n"
        f"on_batch_done = {json.dumps(fail)}\n"
    )
    d = make_daemon(config=cfg)
    d.start()
    d.drop("h.txt", ["one", "two"])
    [state] = d.wait_finished(1, timeout=60)
    assert state["status"] == "completed"
    # on_batch_done runs after the second after_feature hook has ended.
    d.wait_for(
        lambda: re.search(r"hook on_batch_done \(.*fail\.py\) failed: exit code 4", d.stderr()),
        what="the hook failure logged with the hook's name and argv",
    )
    timed_out = r"hook after_feature \(.*hang\.py\) failed: timed out after 1 s \(hooks.timeout\)"
    assert len(re.findall(timed_out, d.stderr())) == 2
    assert not any(alive(int(r["pid"])) for r in records(tmp_path, "hang"))
    # A failing before_feature: the attempt fails as transient and is retried with consent.
    d.stop()
    flag = tmp_path / "fail-once"
    flag.write_text("")
    gate = hook_script(
        tmp_path,
        "gate",
        f"import os; p = {str(flag)!r}\nif os.path.exists(p): os.unlink(p); sys.exit(1)\n",
    )
    d.config_path.write_text(
        d.config_path.read_text().split("[hooks]")[0]
        + f"[hooks]\nbefore_feature = {json.dumps(gate)}\n[retry]\nbackoff_initial = 0.05\n"
    )
    d.extra_env = {"BATCH_RETRY_ENABLED": "1"}
    d.start()
    d.drop("g.txt", ["gated"])
    states = d.wait_finished(2)
    hist = states[1]["processing_history"]
    assert [(h["outcome"], h["failure_type"]) for h in hist] == [
        ("failed", "transient"),
        ("completed", None),
    ]
    assert hist[0]["pid"] is None and "hook before_feature failed" in hist[0]["error_message"]


def test_cost_cap_pauses_then_raising_it_continues(make_daemon: MakeDaemon) -> None:
    """The batch pauses at the first feature that reaches max_cost_usd; a higher cap + resume go on."""
    d = make_daemon(config="[limits]\nmax_cost_usd = 1.0\n")
    d.start()
    d.drop("c.txt", [f"f{i} claude=ok cost=0.4" for i in range(5)])
    st = d.wait_for(
        lambda: (s := d.status())["batches"] and s["batches"][0]["status"] == "paused" and s,
        what="cost pause",
    )
    item = st["batches"][0]
    assert item["pause_reason"] == "cost_limit"
    assert item["completed"] == 3 and abs(item["cost_usd"] - 1.2) < 1e-9
    # f3 would have been next; a later batch runs only once the queue has passed it by.
    d.drop("later.txt", ["later"])
    d.wait_for(
        lambda: [s["status"] for s in d.batch_states()] == ["paused", "completed"],
        what="the later batch done",
    )
    started = [r["feature"] for r in d.agent_runs() if r["event"] == "start"]
    assert started == [f"f{i} claude=ok cost=0.4" for i in range(3)] + ["later"]
    d.config_path.write_text(
        d.config_path.read_text().replace("max_cost_usd = 1.0", "max_cost_usd = 10")
    )
    assert d.proc is not None
    import signal

    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: "reload: configuration" in d.stderr(), what="reload")
    d.ok("resume", batch_id=item["batch_id"])
    [state, _] = d.wait_finished(2)
    assert state["status"] == "completed" and abs(state["cost_usd"] - 2.0) < 1e-9


def test_sigterm_stops_a_hanging_hook_at_once(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """A hook that hangs does not hold up a clean stop: SIGTERM ends it and exits 0 at once,
    long before the hook's own timeout."""
    hang = hook_script(tmp_path, "hang", "import time; time.sleep(600)\n")
    d = make_daemon(config=f"[hooks]\ntimeout = 600\non_batch_done = {json.dumps(hang)}\n")
    d.start()
    d.drop("h.txt", ["one"])
    [hook] = d.wait_for(lambda: records(tmp_path, "hang"), what="the hook to start")
    assert d.stop(timeout=60) == 0  # waiting for the hook would take ten minutes
    assert not alive(int(hook["pid"]))


def test_cancel_replies_without_waiting_for_the_done_hook(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """cancel replies at once; on_batch_done (held until the test lets go) runs afterwards
    from the queue loop."""
    go = tmp_path / "go"
    held = hook_script(
        tmp_path,
        "held",
        "import time\nend = time.monotonic() + 600\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < end: time.sleep(0.01)\n"
        f"open({str(tmp_path / 'held.end')!r}, 'w').close()\n",
    )
    d = make_daemon(config=f"[hooks]\ntimeout = 600\non_batch_done = {json.dumps(held)}\n")
    d.start()
    d.ok("pause")
    d.drop("c.txt", ["never"])
    d.wait_for(lambda: d.batch_states(), what="batch")
    bid = d.batch_states()[0]["batch_id"]
    # The hook cannot end before `go` exists, so a reply that waited for it never comes.
    assert d.ok("cancel", batch_id=bid)["status"] == "cancelled"
    [done] = d.wait_for(lambda: records(tmp_path, "held"), what="the hook")
    assert done["BATCHD_STATUS"] == "cancelled" and done["BATCHD_BATCH_ID"] == bid
    go.touch()
    d.wait_for(lambda: (tmp_path / "held.end").exists(), what="the hook to end")


def test_status_names_the_attempt_that_ran_while_its_after_feature_hook_holds_the_slot(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """While after_feature runs, status shows the attempt that ran (its number, start and
    pid), not the next attempt "starting"."""
    go = tmp_path / "go"
    held = hook_script(
        tmp_path,
        "held",
        "import time\nend = time.monotonic() + 600\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < end: time.sleep(0.01)\n",
    )
    d = make_daemon(config=f"[hooks]\ntimeout = 600\nafter_feature = {json.dumps(held)}\n")
    d.start()
    d.drop("c.txt", ["one"])
    d.wait_for(lambda: records(tmp_path, "held"), what="the after_feature hook")
    [run] = d.ok("status")["running"]
    [attempt] = d.batch_states()[0]["processing_history"]
    assert attempt["outcome"] == "completed"
    assert (run["attempt"], run["started_at"], run["pid"]) == (
        1,
        attempt["started_at"],
        attempt["pid"],
    )
    assert "starting" not in d.ctl("status").stdout
    go.touch()
    d.wait_for(lambda: d.batch_states()[0]["status"] == "completed", what="the batch")
