"""End to end: a real daemon, the fake agent, files in the spool (issue 3)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, agent_command

MakeDaemon = Callable[..., Daemon]


def test_plain_file_runs_every_feature_in_order_once(make_daemon: MakeDaemon) -> None:
    """A dropped file becomes a batch whose features run in order, each exactly once."""
    d = make_daemon()
    d.start()
    d.drop("todo.txt", ["# a comment", "first", "", "second", "first", "third"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert state["features"] == ["first", "second", "third"]
    assert state["completed_features"] == [0, 1, 2]
    starts = [r for r in d.agent_runs() if r["event"] == "start"]
    assert [r["feature"] for r in starts] == ["first", "second", "third"]
    assert [h["outcome"] for h in state["processing_history"]] == ["completed"] * 3
    bdir = d.state / "batches" / state["batch_id"]
    assert (bdir / "source").read_text().startswith("# a comment")
    assert not (d.spool / "todo.txt").exists()
    assert d.stop() == 0


def test_json_request_and_arrival_order_across_batches(make_daemon: MakeDaemon) -> None:
    """Batches run one feature at a time, lowest seq first; .json requests are read at once."""
    d = make_daemon()
    d.start()
    d.ok("pause")
    d.drop_request("a.json", {"features": ["a1 sleep=0.05", "a2"], "name": "first batch"})
    d.wait_for(lambda: len(d.batch_states()) == 1, what="first batch")
    d.drop("b.txt", ["b1", "b2"])
    d.wait_for(lambda: len(d.batch_states()) == 2, what="second batch")
    d.ok("resume", all=True)
    states = d.wait_finished(2)
    assert [s["seq"] for s in states] == [1, 2]
    assert states[0]["name"] == "first batch"
    runs = [r["feature"] for r in d.agent_runs() if r["event"] == "start"]
    assert runs == ["a1 sleep=0.05", "a2", "b1", "b2"]
    # Never two runners at once: each run ends before the next starts.
    recs = d.agent_runs()
    for prev, nxt in itertools.pairwise(recs):
        if prev["event"] == "start":
            assert nxt["event"] == "end" and nxt["pid"] == prev["pid"]


def test_settle_time_holds_back_a_file_written_in_pieces(make_daemon: MakeDaemon) -> None:
    """A plain file written in place in slow pieces (each gap well under settle_ms) is read
    only once it has settled: its batch holds every piece."""
    settle = 1.5
    d = make_daemon(config=f"[spool]\nsettle_ms = {int(settle * 1000)}\n")
    d.start()
    # The daemon may rightly take a file whose writer stalls for the settle time; on a busy
    # machine this writer can stall, so a try counts only if no gap between pieces came near it.
    for attempt in range(5):
        name = f"slow{attempt}.txt"
        gaps = []
        with open(d.spool / name, "w") as f:
            last = time.monotonic()
            for i in range(5):
                f.write(f"piece {i}\n")
                f.flush()
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                time.sleep(0.2)
        if max(gaps) < settle / 2:
            break
    else:
        pytest.fail(f"the writer stalled for {settle / 2}s or more in every try")
    d.wait_for(
        lambda: any(s["features_file"] == name for s in d.batch_states()), what=f"{name} accepted"
    )
    [state] = [s for s in d.batch_states() if s["features_file"] == name]
    assert state["features"] == [f"piece {i}" for i in range(5)]


def test_feature_text_is_one_literal_argv_element(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Shell syntax and placeholders in a feature reach the runner as one literal argument."""
    d = make_daemon(runner=agent_command("{index}", "{attempt}", "{batch_id}"))
    d.start()
    evil = "$(touch pwned) `touch pwned2` ; rm -rf ~ {attempt} {feature} 'q' \"dq\" *"
    d.drop("evil.txt", [evil])
    [state] = d.wait_finished(1)
    [start] = [r for r in d.agent_runs() if r["event"] == "start"]
    assert start["argv"] == [evil, "0", "1", state["batch_id"]]
    assert not (d.workdir / "pwned").exists() and not (d.workdir / "pwned2").exists()
    assert start["cwd"] == str(d.workdir)


def test_runner_environment(make_daemon: MakeDaemon) -> None:
    """The runner gets runner.env and BATCHD_* but never NOTIFY_SOCKET."""
    d = make_daemon(config='[runner.env]\nEXTRA_VAR = "yes"\n')
    d.start(env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    d.drop("env.txt", ["one"])
    d.wait_finished(1)
    [start] = [r for r in d.agent_runs() if r["event"] == "start"]
    assert start["env_notify"] is None
    assert start["run_id"] and start["index"] == "0" and start["attempt"] == 1


def test_sigterm_interrupts_and_reruns_at_next_start(make_daemon: MakeDaemon) -> None:
    """SIGTERM exits 0, records the running feature interrupted, and it runs again later."""
    d = make_daemon()
    d.start()
    d.drop("long.txt", ["long sleep=30", "after"])
    d.wait_for(lambda: any(r["event"] == "start" for r in d.agent_runs()), what="runner start")
    assert d.stop() == 0
    [state] = d.batch_states()
    assert state["status"] == "in_progress"
    assert [h["outcome"] for h in state["processing_history"]] == ["interrupted"]
    d.start()
    d.wait_for(lambda: sum(r["event"] == "start" for r in d.agent_runs()) >= 2, what="rerun")
    runs = [r for r in d.agent_runs() if r["event"] == "start"]
    assert runs[1]["feature"] == "long sleep=30" and runs[1]["attempt"] == 1
    assert d.stop() == 0
    [state] = d.batch_states()
    assert [h["outcome"] for h in state["processing_history"]] == ["interrupted", "interrupted"]
    assert [h["attempt"] for h in state["processing_history"]] == [1, 1]


def test_timeout_kills_the_whole_group(make_daemon: MakeDaemon) -> None:
    """On timeout the group gets TERM then KILL: even a member ignoring TERM dies."""
    d = make_daemon(config="")
    d.write_config(agent_command(), "")
    cfg = d.config_path.read_text().replace("timeout = 60", "timeout = 1")
    d.config_path.write_text(cfg)
    d.start()
    d.drop("hang.txt", ["hang ignore_term grandchild=600 sleep=600"])
    [state] = d.wait_finished(1, timeout=60)
    [h] = state["processing_history"]
    assert h["outcome"] == "timed_out"
    assert h["failure_type"] == "transient"
    pid = h["pid"]
    assert not _alive_group(pid)


def _alive_group(pgid: int) -> bool:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def test_leftover_child_holding_stdout_does_not_hang(make_daemon: MakeDaemon) -> None:
    """A runner that exits 0 but leaves a child holding stdout is recorded without waiting for
    that child (it would hold the pipe for ten minutes), and the child is killed."""
    d = make_daemon()
    d.start()
    d.drop("leftover.txt", ["leaves grandchild=600"])
    [state] = d.wait_finished(1, timeout=60)
    [h] = state["processing_history"]
    assert h["outcome"] == "completed"
    assert not _alive_group(h["pid"])


def test_missing_runner_pauses_queue_without_charging(make_daemon: MakeDaemon) -> None:
    """A runner that does not exist pauses the queue; SIGHUP after the fix continues."""
    d = make_daemon(runner=["/nonexistent/agent", "{feature}"])
    d.start()
    d.drop("x.txt", ["one", "two"])
    st = d.wait_for(lambda: (s := d.status())["queue_paused"] and s, what="queue pause")
    assert st["pause_reason"].startswith("runner_unavailable")
    assert "/nonexistent/agent" in st["pause_reason"]
    [state] = d.batch_states()
    assert state["processing_history"] == []
    d.write_config(agent_command())
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert [h["attempt"] for h in state["processing_history"]] == [1, 1]


def test_second_daemon_on_same_state_dir_exits_1(make_daemon: MakeDaemon) -> None:
    """A second daemon on the same state dir exits 1 and says why."""
    d = make_daemon()
    d.start()
    second = Daemon(d.root, d.backend)
    second.stderr_path = d.root / "second.stderr"
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(20) == 1
    assert "already running" in second.stderr()
    assert d.request("ping")["ok"]


def test_bad_config_exits_78(make_daemon: MakeDaemon) -> None:
    """A bad key exits 78 naming the file and the key."""
    d = make_daemon(config="[retry]\nmax_per_feature = -1\n")
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(20) == 78
    err = d.stderr()
    assert "config.toml" in err and "retry.max_per_feature" in err


def test_state_files_are_private(make_daemon: MakeDaemon) -> None:
    """State files are 0600 and directories 0700."""
    d = make_daemon()
    d.start()
    d.drop("p.txt", ["one"])
    [state] = d.wait_finished(1)
    bdir = d.state / "batches" / state["batch_id"]
    for p in [d.state, d.state / "batches", bdir, bdir / "logs", d.socket.parent]:
        assert os.stat(p).st_mode & 0o777 == 0o700, p
    for p in [bdir / "state.json", bdir / "retry_state.json", bdir / "logs" / "0.1.log", d.socket]:
        assert os.stat(p).st_mode & 0o777 == 0o600, p
    assert json.loads((d.state / "daemon.json").read_text())["next_seq"] == 2


def test_log_cap_keeps_head_and_tail(make_daemon: MakeDaemon) -> None:
    """Past max_log_bytes the attempt log keeps the first and last halves with a marker."""
    code = "import sys\nfor i in range(60000): sys.stdout.write(f'line {i:06d}\\n')\n"
    # Braces in runner.command are placeholders: the code's own are written doubled.
    code = code.replace("{", "{{").replace("}", "}}")
    d = make_daemon(runner=[sys.executable, "-c", code], config="")
    d.config_path.write_text(
        d.config_path.read_text().replace(
            "kill_grace = 2\n", "kill_grace = 2\nmax_log_bytes = 65536\n"
        )
    )
    d.start()
    d.drop("big.txt", ["talk a lot"])
    [state] = d.wait_finished(1)
    log = (d.state / "batches" / state["batch_id"] / "logs" / "0.1.log").read_text()
    assert log.startswith("line 000000\n") and log.endswith("line 059999\n")
    assert "bytes omitted here" in log
    assert 65536 <= len(log) <= 65536 + 200
    assert state["context_token_estimate"] == 60000 * 12 // 4


def test_a_bad_reload_keeps_the_old_config_and_says_so(make_daemon: MakeDaemon) -> None:
    """SIGHUP with a bad config, then with the file deleted: the old config stays in force,
    the log says why at error level, and status shows it under problems until a good reload."""
    d = make_daemon(config='[runner.env]\nMARK = "old"\n')
    d.start()
    assert d.proc is not None
    good = d.config_path.read_text()
    d.config_path.write_text(good + "[retry]\nmax_per_featur = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    [problem] = d.wait_for(lambda: d.status()["problems"], what="the reload problem")
    assert problem["kind"] == "config" and "retry.max_per_featur" in problem["message"]
    assert "previous configuration is kept" in problem["message"]
    assert "ERROR reload failed" in d.stderr()
    d.config_path.unlink()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(
        lambda: "was deleted" in d.status()["problems"][0]["message"], what="the deleted config"
    )
    d.drop("a.txt", ["stderr_env=MARK"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    log = d.state / "batches" / state["batch_id"] / "logs" / "0.1.log"
    assert log.read_text().strip() == "old"  # ran with the old config's runner.env
    d.config_path.write_text(good.replace('"old"', '"new"'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: d.status()["problems"] == [], what="the problem cleared")
