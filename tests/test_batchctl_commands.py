"""batchctl's everyday commands end to end (issue 15): the real batchctl against a real daemon.

Short ids, ``add``, ``submit -``, ``wait``, ``skip`` of what runs, ``logs -n/--all/--follow``,
``watch`` across a restart, ``reload``, ``prune --dry-run``, JSON errors, replies that say
what happened, the terminal's width, and the shell completion scripts (real bash, zsh and
fish). Every test that runs a daemon runs on both backends.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, agent_command, poll

MakeDaemon = Callable[..., Daemon]
BATCHCTL = [sys.executable, "-m", "batchctl"]
FAST_RETRY = '[retry]\nbackoff_initial = 0.05\njitter = "none"\n'


def ok(d: Daemon, *args: str) -> str:
    out = d.ctl(*args)
    assert out.returncode == 0, out
    return out.stdout


def as_json(d: Daemon, *args: str) -> Any:
    return json.loads(ok(d, "--json", *args))


def batch_ids(d: Daemon) -> list[str]:
    return [b["batch_id"] for b in d.ok("list")["batches"]]


def wait_batches(d: Daemon, n: int) -> list[str]:
    """The ids of the first n batches, once the daemon knows them."""
    d.wait_for(lambda: len(d.ok("list")["batches"]) >= n, what=f"{n} batches")
    return batch_ids(d)


def running(d: Daemon) -> list[dict[str, Any]]:
    """The running features whose runner has started (not those in a before_feature hook
    or between the slot and the spawn: their pid is still None)."""
    return [x for x in d.status()["running"] if x["pid"] is not None]


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("batchctl did not end in time") from None


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def on_pty(argv: list[str], env: dict[str, str], columns: int) -> str:
    """Run argv with a pty of ``columns`` columns as its stdout; its whole output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(10) == 0, out
    os.close(master)
    return out.decode(errors="replace").replace("\r\n", "\n")


# --- the basics -------------------------------------------------------------------------------


def test_no_command_is_status_and_version_needs_no_daemon(make_daemon: MakeDaemon) -> None:
    """`batchctl` alone is `batchctl status`; `--version` answers without a daemon."""
    d = make_daemon()
    version = d.ctl("--version")
    assert version.returncode == 0 and version.stdout.startswith("batchctl 0.")
    assert d.ctl().returncode == 3  # status: nothing listens yet
    d.start()
    d.drop("a.txt", ["one"])
    d.wait_finished(1)
    bare, status = as_json(d), as_json(d, "status")
    assert bare["batches"] == status["batches"] and set(bare) == set(status)
    assert ok(d).startswith("batchd ")


def test_short_ids_and_seq_first(make_daemon: MakeDaemon) -> None:
    """A batch's seq or `last` works wherever a BATCH_ID goes; status and list show seq first."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["first"])
    d.wait_finished(1)
    d.drop("b.txt", ["second stdout=from_two"])
    first, second = [s["batch_id"] for s in d.wait_finished(2)]
    assert as_json(d, "show", "1")["batch"]["batch_id"] == first
    assert as_json(d, "show", "last")["batch"]["batch_id"] == second
    assert "from two" in ok(d, "logs", "last", "0")
    assert ok(d, "show", "2").startswith(f"[2] {second}")
    for command in ("status", "list"):
        rows = [line.split() for line in ok(d, command).splitlines() if "batch-" in line]
        assert [r[:2] for r in rows[-2:]] == [["1", first], ["2", second]], command
    missing = d.ctl("--json", "show", "99")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == "unknown_batch"


def test_json_errors_are_json_on_stdout(make_daemon: MakeDaemon) -> None:
    """With --json every error is {"error": {"code", "message"}} on stdout, exit code as usual."""
    d = make_daemon()
    down = d.ctl("status", "--json")
    assert down.returncode == 3 and json.loads(down.stdout)["error"]["code"] == "not_running"
    d.start()
    d.drop("a.txt", ["one"])
    d.wait_finished(1)
    for args, code, error in [
        (["show", "nope"], 1, "unknown_batch"),
        (["show", "99"], 1, "unknown_batch"),
        (["frobnicate"], 2, "usage"),
        (["skip", "1", "x"], 2, "usage"),
        (["cancel", "1"], 1, "bad_state"),
        (["resume"], 2, "usage"),
    ]:
        out = d.ctl("--json", *args)
        assert out.returncode == code, (args, out)
        body = json.loads(out.stdout)
        assert body["error"]["code"] == error and body["error"]["message"], (args, body)
        assert out.stderr == "", (args, out.stderr)


# --- add and submit -------------------------------------------------------------------------


def test_add_queues_a_batch_from_the_command_line(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """`add --cwd DIR --name TEXT F1 F2` queues one batch that runs there; it says where."""
    d = make_daemon()
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "link").symlink_to(project)
    out = d.ctl(
        "add", "--cwd", str(tmp_path / "link"), "--name", "from the shell", "f one", "f two"
    )
    assert out.returncode == 0, out
    assert "queued 2 features:" in out.stdout and f"runs in: {project}\n" in out.stdout
    assert "no batchd is running, so nothing watches the spool" in out.stderr
    single = d.ctl("add", "lonely", cwd=project)
    assert "queued 1 feature:" in single.stdout, single
    d.start()
    states = d.wait_finished(2)
    assert states[0]["name"] == "from the shell" and states[0]["features"] == ["f one", "f two"]
    assert states[1]["name"] == "lonely" and states[1]["cwd"] == str(project)
    cwds = {r["cwd"] for r in d.agent_runs() if r["event"] == "start"}
    assert cwds == {str(project)}
    assert "runs in: " + str(project) in ok(d, "show", "1")
    missing = d.ctl("add", "--cwd", str(tmp_path / "missing"), "x")
    assert missing.returncode == 1 and "no such directory" in missing.stderr


def test_submit_dash_reads_stdin(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """`submit -` reads the feature file from standard input; a bad one writes nothing."""
    d = make_daemon()
    d.start()
    out = d.ctl("submit", "-", "--cwd", str(tmp_path), input="# batchd: name = piped\nx\ny\n")
    assert out.returncode == 0 and "queued 2 features" in out.stdout, out
    assert f"runs in: {os.path.realpath(tmp_path)}" in out.stdout
    [state] = d.wait_finished(1)
    assert state["name"] == "piped" and state["features"] == ["x", "y"]
    bad = d.ctl("submit", "-", input="ok\nnul\x00here\n")
    assert bad.returncode == 1 and "stdin: line 2" in bad.stderr


def test_show_prints_where_a_batch_without_cwd_runs(make_daemon: MakeDaemon) -> None:
    """A spool file without a cwd runs in runner.cwd, and show says so (not '(runner.cwd)')."""
    d = make_daemon()
    d.start()
    d.drop("plain.txt", ["one"])
    d.wait_finished(1)
    assert f"runs in: {os.path.realpath(d.workdir)}" in ok(d, "show", "last")
    assert as_json(d, "show", "last")["batch"]["workdir"] == os.path.realpath(d.workdir)


# --- wait -----------------------------------------------------------------------------------------


def test_wait_exit_codes(make_daemon: MakeDaemon) -> None:
    """wait: 0 when all completed, 1 when one failed or was cancelled, 4 on --timeout."""
    d = make_daemon()
    d.start()
    d.drop("good.txt", ["fine"])
    d.drop("bad.txt", ["broken exit=3 stderr=TypeError:_boom"])
    d.wait_finished(2)
    good = d.ctl("wait", "1")
    assert good.returncode == 0 and "completed: 1 completed" in good.stdout, good
    both = d.ctl("wait", "1", "2")
    assert both.returncode == 1 and "[2] " in both.stdout and " failed: " in both.stdout
    d.drop("slow.txt", ["slow sleep=600"])  # only --timeout ends a wait for it in time
    wait_batches(d, 3)
    late = d.ctl("wait", "last", "--timeout", "0.5")
    assert late.returncode == 4 and "--timeout 0.5s passed" in late.stderr, late
    late_json = d.ctl("--json", "wait", "last", "--timeout", "0.2")
    assert late_json.returncode == 4
    assert json.loads(late_json.stdout)["error"]["code"] == "timeout"
    ok(d, "cancel", "last")
    cancelled = d.ctl("--json", "wait", "3")
    assert cancelled.returncode == 1
    body = json.loads(cancelled.stdout)
    assert body["all_completed"] is False and body["batches"][0]["status"] == "cancelled"


def test_wait_without_ids_waits_for_what_was_just_submitted(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """`add ... && wait`: every unfinished batch, including one still in the spool."""
    d = make_daemon()
    d.start()
    assert d.ctl("wait").stdout.startswith("nothing to wait for")
    ok(d, "pause")  # nothing can finish before wait has listed what it waits for
    ok(d, "add", "--cwd", str(tmp_path), "a", "b")
    ok(d, "add", "--cwd", str(tmp_path), "c")
    out = tmp_path / "wait.out"
    proc = d.ctl_background("wait", out=out)
    poll(
        lambda: "waiting for 2 batches" in out.read_text(),
        30,
        "wait to list both batches",
        lambda: out.read_text() + Path(f"{out}.err").read_text(),
    )
    ok(d, "resume", "--all")
    assert wait_exit(proc) == 0, Path(f"{out}.err").read_text()
    assert out.read_text().count("completed: ") == 2
    assert all(s["status"] == "completed" for s in d.batch_states())


def test_wait_survives_a_daemon_restart(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """wait keeps waiting while batchd restarts, and ends when the batch completes after it."""
    d = make_daemon()
    d.start()
    go = tmp_path / "go"  # the batch cannot complete before the restart
    d.drop("r.txt", [f"long wait={go}", "after"])
    d.wait_for(lambda: running(d), what="the feature to run")
    log = tmp_path / "wait.out"
    proc = d.ctl_background("wait", "last", out=log)
    poll(lambda: "waiting for 1 batch" in text(log), 30, "wait to start", lambda: text(log))
    d.stop()
    poll(lambda: "lost batchd" in text(Path(f"{log}.err")), 30, "the loss noticed", lambda: "")
    d.start()
    go.touch()
    assert wait_exit(proc) == 0, text(log) + text(Path(f"{log}.err"))
    assert "completed: 2 completed" in text(log)


# --- skip, resume, cancel, prune, reload: replies that say what happened ------------------------


def test_skip_stops_the_running_feature(make_daemon: MakeDaemon) -> None:
    """skip of the running feature stops its runner, records it skipped, and says so."""
    d = make_daemon()
    d.start()
    ready = d.root / "ready"  # touched once the agent's SIGTERM handler is in place
    d.drop("s.txt", [f"long sleep=60 touch={ready}", "after"])
    [run] = d.wait_for(lambda: running(d), what="the feature to run")
    d.wait_for(ready.exists, what="the agent ready")
    out = d.ctl("skip", "last", "0")
    assert out.returncode == 0, out
    assert "feature 1 (index 0) skipped; it was running and has been stopped" in out.stdout
    [state] = d.wait_finished(1)
    assert state["status"] == "completed" and state["skipped_features"] == [0]
    assert any(r["event"] == "term" and r["pid"] == run["pid"] for r in d.agent_runs())
    assert as_json(d, "show", "last")["feature_states"] == ["skipped", "completed"]


def test_resume_says_the_truth(make_daemon: MakeDaemon) -> None:
    """resume: 'queue resumed' after a queue pause; a batch over its cost cap is said to pause
    again at once, with the fix; no argument: what resume needs."""
    d = make_daemon(config="[limits]\nmax_cost_usd = 0.1\n")
    d.start()
    ok(d, "pause")
    assert ok(d, "resume", "--all").splitlines()[0] == "queue resumed"
    d.drop("c.txt", ["costly claude=ok cost=0.25", "next"])
    d.wait_for(lambda: d.batch_states() and d.batch_states()[0]["status"] == "paused", what="cap")
    out = ok(d, "resume", "last")
    assert "note:" in out and "paused again at once" in out and "limits.max_cost_usd" in out
    assert "batchctl reload" in out
    bare = d.ctl("resume")
    assert bare.returncode == 2 and "resume needs a BATCH_ID, or --all" in bare.stderr


def test_cancelled_batch_features_read_cancelled(make_daemon: MakeDaemon) -> None:
    """A cancelled batch's features that never ran read 'cancelled', not 'pending'."""
    d = make_daemon()
    d.start()
    d.drop("c.txt", ["first sleep=60", "second", "third"])
    d.wait_for(lambda: running(d), what="the feature to run")
    assert "its running feature was stopped" in ok(d, "cancel", "last")
    shown = ok(d, "show", "last")
    statuses = [line.split()[1] for line in shown.splitlines() if line[:4].strip() in ("1", "2")]
    assert statuses == ["cancelled", "cancelled"], shown
    assert as_json(d, "show", "last")["feature_states"][1:] == ["cancelled", "cancelled"]


def test_prune_dry_run_removes_nothing(make_daemon: MakeDaemon) -> None:
    """prune --dry-run lists what would go and keeps it; prune then removes it."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    [state] = d.wait_finished(1)
    out = ok(d, "prune", "--dry-run", "--older-than", "0")
    assert out.splitlines() == ["would remove 1 finished batch", f"  {state['batch_id']}"]
    assert batch_ids(d) == [state["batch_id"]]
    assert as_json(d, "prune", "--older-than", "0") == {
        "removed": [state["batch_id"]],
        "dry_run": False,
    }
    assert batch_ids(d) == []


def test_reload_reports_a_bad_config(make_daemon: MakeDaemon) -> None:
    """`batchctl reload` applies a good config; a bad one is exit 1 with the error, old kept."""
    d = make_daemon()
    d.start()
    d.write_config(agent_command(), "[queue]\nslots = 2\n")
    assert ok(d, "reload") == f"reloaded {d.config_path} (2 slots)\n"
    assert d.status()["slots"] == 2
    d.write_config(agent_command(), "[retry]\nno_such_key = 1\n")
    bad = d.ctl("reload")
    assert bad.returncode == 1 and "retry.no_such_key" in bad.stderr, bad
    assert d.status()["slots"] == 2 and d.ok("ping")["pong"]


# --- status with slots, logs ----------------------------------------------------------------------


def test_status_shows_every_running_feature(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """With two slots and two cwds, status shows both running features, each with its seq."""
    d = make_daemon(config="[queue]\nslots = 2\n")
    d.start()
    for name in ("p1", "p2"):
        (tmp_path / name).mkdir()
        ok(d, "add", "--cwd", str(tmp_path / name), f"{name} sleep=30")
    d.wait_for(lambda: len(running(d)) == 2, what="two running features")
    out = ok(d, "status")
    assert "queue: running, 2 slots" in out
    assert out.count("running: [") == 2 and "p1 sleep=30" in out and "p2 sleep=30" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_status_counts_finished_batches_beyond_the_recent_ones(make_daemon: MakeDaemon) -> None:
    """status lists the 20 most recent finished batches and says how many there are in all."""
    d = make_daemon(runner=["/bin/true"])
    d.start()
    for i in range(22):
        d.drop(f"b{i:02d}.txt", ["one"])
    d.wait_finished(22, timeout=120)
    out = ok(d, "status")
    assert "20 of 22 finished batches shown; `batchctl list` has all" in out
    assert len(ok(d, "list").splitlines()) == 23


def test_logs_lines_and_every_attempt(make_daemon: MakeDaemon) -> None:
    """logs -n LINES prints the last lines; --all every attempt, each under its header."""
    d = make_daemon(config=FAST_RETRY)
    d.start()
    ok(d, "consent", "--enable")
    d.drop("l.txt", ["talk stderr_esc=l1\\nl2\\nl3 fail_until=2"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert ok(d, "logs", "last", "-n", "2") == "l2\nl3\n"
    assert ok(d, "logs", "last", "0", "-n", "1") == "l3\n"
    assert ok(d, "logs", "last", "-n", "0") == ""
    every = ok(d, "logs", "last", "0", "--all")
    headers = [line for line in every.splitlines() if line.startswith("==> ")]
    assert [h.split(":")[0] for h in headers] == [
        "==> feature 1 (index 0), attempt 1",
        "==> feature 1 (index 0), attempt 2",
    ]
    assert "ConnectionError" in every.split(headers[1])[0]
    assert len(as_json(d, "logs", "last", "--all")["attempts"]) == 2


def test_logs_follow_waits_for_a_feature_not_started(make_daemon: MakeDaemon) -> None:
    """logs --follow on a feature that has not started waits for it, then streams it."""
    d = make_daemon()
    d.start()
    go = d.root / "go"  # the second feature cannot start before the follow is waiting
    d.drop("f.txt", [f"first wait={go}", "second stdout=hello_there"])
    wait_batches(d, 1)
    out = d.root / "follow.out"
    err = Path(f"{out}.err")
    proc = d.ctl_background("logs", "last", "1", "--follow", out=out)
    waiting = "feature 2 (index 1) has not started yet; waiting for it"
    poll(lambda: waiting in text(err), 30, "the follow waiting", lambda: text(out) + text(err))
    go.touch()
    assert wait_exit(proc) == 0, text(out) + text(err)
    assert text(out) == "hello there\n"


def test_logs_follow_with_lines_starts_from_the_last_ones(make_daemon: MakeDaemon) -> None:
    """logs -f -n 1 prints the last line so far, then only what is new."""
    d = make_daemon()
    d.start()
    go = d.root / "go"  # the result line comes only once the follow has started
    d.drop("f.txt", [f"talk stderr_esc=a\\nb\\nc wait={go} claude=ok result=later"])
    [batch] = wait_batches(d, 1)
    log = d.state / "batches" / batch / "logs" / "0.1.log"
    d.wait_for(lambda: log.exists() and "c\n" in log.read_text(), what="the first lines")
    out = d.root / "follow.out"
    err = Path(f"{out}.err")
    proc = d.ctl_background("logs", "last", "-f", "-n", "1", out=out)
    poll(lambda: "c\n" in text(out), 30, "the last line so far", lambda: text(out) + text(err))
    go.touch()
    assert wait_exit(proc) == 0, text(out) + text(err)
    followed = text(out)
    assert followed.startswith("c\n") and "a\n" not in followed and "b\n" not in followed
    assert '"result": "later"' in followed  # written after the first lines: followed


def test_watch_reconnects_after_a_restart(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """watch says when batchd goes away and comes back, and goes on printing progress."""
    d = make_daemon()
    d.start()
    out = tmp_path / "watch.out"
    err = Path(f"{out}.err")
    proc = d.ctl_background("watch", out=out)
    poll(lambda: "idle" in text(out), 30, "a first line", lambda: text(out) + text(err))
    d.stop()
    poll(lambda: "batchd went away" in text(err), 30, "the loss", lambda: text(err))
    d.start()
    poll(lambda: "batchd is back" in text(err), 30, "the return", lambda: text(err))
    go = tmp_path / "go"  # the feature runs until watch has shown it
    d.drop("w.txt", [f"after restart wait={go}"])
    poll(lambda: "after restart" in text(out), 30, "progress", lambda: text(out) + text(err))
    go.touch()
    proc.send_signal(signal.SIGINT)
    assert wait_exit(proc) == 0 and "Traceback" not in text(err)


# --- the terminal's width ------------------------------------------------------------------------


def test_list_and_show_use_the_terminal_width(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """On a wide terminal list and show print whole names and features; on 80 columns they fit."""
    d = make_daemon()
    d.start()
    name = "a batch name that is much longer than thirteen characters " * 2
    feature = "implement a feature whose text runs well past eighty columns " * 2
    ok(d, "add", "--cwd", str(tmp_path), "--name", name, feature)
    d.wait_finished(1)
    wide_list = on_pty([*BATCHCTL, "list"], d.env, 220)
    assert name.strip() in wide_list
    wide_show = on_pty([*BATCHCTL, "show", "last"], d.env, 220)
    assert feature.strip() in wide_show
    narrow = on_pty([*BATCHCTL, "show", "last"], d.env, 80)
    assert feature.strip() not in narrow
    # Everything fits, but a path: it is never cut (the test's own may be long).
    assert all(len(line) <= 80 for line in narrow.splitlines() if not line.startswith("runs in:"))


# --- completion ----------------------------------------------------------------------------------


def ctl_bin(tmp_path: Path) -> Path:
    """A `batchctl` executable on a PATH of its own (this checkout's, by this python)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "batchctl"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m batchctl "$@"\n')
    exe.chmod(0o755)
    return bindir


def completion_env(d: Daemon, tmp_path: Path) -> dict[str, str]:
    return {**d.env, "PATH": f"{ctl_bin(tmp_path)}:{os.environ['PATH']}"}


BASH_COMPLETE = """
source <(batchctl completion bash)
complete_line() {
    read -ra COMP_WORDS <<< "$1"
    [[ $1 == *' ' ]] && COMP_WORDS+=('')
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _batchctl
    echo "${COMPREPLY[*]}"
}
for line in "$@"; do complete_line "$line"; done
"""


def test_bash_completion(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """The bash script completes commands, options, choices, dirs, and batch ids from the daemon."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    [state] = d.wait_finished(1)
    (tmp_path / "somedir").mkdir()
    lines = [
        "batchctl sh",
        "batchctl show ",
        "batchctl logs 1 ",
        "batchctl completion ",
        "batchctl logs --f",
        f"batchctl add --cwd {tmp_path}/som",
        "batchctl --socket /nonexistent show ",
        "batchctl wa",
        "batchctl wait 1 ",
    ]
    out = subprocess.run(
        ["bash", "-c", BASH_COMPLETE, "bash", *lines],
        env=completion_env(d, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    got = dict(zip(lines, out.stdout.splitlines(), strict=True))
    assert got["batchctl sh"] == "show"
    assert set(got["batchctl show "].split()) == {"last", "1", state["batch_id"]}
    assert got["batchctl logs 1 "] == ""
    assert got["batchctl completion "] == "bash zsh fish"
    assert got["batchctl logs --f"] == "--follow"
    assert got[f"batchctl add --cwd {tmp_path}/som"] == f"{tmp_path}/somedir"
    assert got["batchctl --socket /nonexistent show "] == "last"  # the socket given is asked
    assert set(got["batchctl wa"].split()) == {"wait", "watch"}
    assert set(got["batchctl wait 1 "].split()) == {"last", "1", state["batch_id"]}


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """The fish script completes commands with help, options, and batch ids with status."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    [state] = d.wait_finished(1)
    script = "source (batchctl completion fish | psub); for l in $argv; complete -C$l; echo ==; end"
    lines = ["batchctl sh", "batchctl show ", "batchctl logs --fo", "batchctl completion "]
    out = subprocess.run(
        ["fish", "-c", script, *lines],
        env=completion_env(d, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    blocks = [b.strip().splitlines() for b in out.stdout.split("==\n")][: len(lines)]
    got = dict(zip(lines, blocks, strict=True))
    assert got["batchctl sh"] == ["show\tone batch, feature by feature"]
    ids = {line.split("\t")[0]: line.split("\t")[1] for line in got["batchctl show "]}
    assert set(ids) == {"last", "1", state["batch_id"]}
    assert ids["1"].startswith("completed")
    assert [line.split("\t")[0] for line in got["batchctl logs --fo"]] == ["--follow"]
    assert sorted(got["batchctl completion "]) == ["bash", "fish", "zsh"]


@pytest.mark.skipif(
    shutil.which("zsh") is None or shutil.which("tmux") is None, reason="needs zsh and tmux"
)
def test_zsh_completion_on_a_terminal(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """In an interactive zsh (tmux), Tab completes a command and lists batch ids by seq."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    [state] = d.wait_finished(1)
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(
        "autoload -U compinit && compinit -u\nsource <(batchctl completion zsh)\nPS1='%% '\n"
    )
    env = {**completion_env(d, tmp_path), "ZDOTDIR": str(zdot), "TERM": "xterm"}
    session = f"batchctl-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = ["-L", session]
    subprocess.run(
        ["tmux", *sock, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", "zsh"],
        env=env,
        check=True,
    )

    def screen() -> str:
        done = subprocess.run(
            ["tmux", *sock, "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    try:
        poll(lambda: screen().strip().endswith("%"), 30, "the prompt", screen)
        subprocess.run(
            ["tmux", *sock, "send-keys", "-t", session, "batchctl sh", "Tab"], check=True
        )
        poll(lambda: "batchctl show" in screen(), 30, "the command completed", screen)
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, " ", "Tab"], check=True)
        poll(lambda: state["batch_id"] in screen(), 30, "the batch ids listed", screen)
        shown = screen()
        assert "the batch with the highest seq" in shown and "completed a.txt" in shown
    finally:
        subprocess.run(["tmux", *sock, "kill-server"], capture_output=True)
