"""What a newcomer hit, end to end through the real batchctl (and batchd): a spool no daemon
watches, a mistyped option, an error blaming a file never written, exit codes, costs.

Each test drives ``python -m batchctl`` (and ``python -m batchd``) as subprocesses; where a
daemon matters it is a real one from ``tests/harness.py``, on both event-loop backends.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batchctl.table import BY_NAME
from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]


def ctl(d: Daemon, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env={**d.env, **env},
        cwd=d.workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- (1) a spool that no daemon watches ------------------------------------------------------


def test_a_spool_the_running_daemon_does_not_watch_is_refused(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """add/submit into another spool than the running daemon's exit 1 naming both folders and
    queue nothing (by --spool and by BATCHD_SPOOL_DIR; --issues before gh runs); the same spool by another path (through
    a symlinked parent) is the daemon's spool, and its batch runs."""
    d = make_daemon()
    d.start()
    other = tmp_path / "other-spool"
    todo = tmp_path / "todo.txt"
    todo.write_text("from a file\n")
    gh = tmp_path / "bin" / "gh"  # a gh that leaves a trace: --issues asks nothing of it
    gh.parent.mkdir()
    gh.write_text(f"#!/bin/sh\ntouch {tmp_path / 'gh-ran'}\n")
    gh.chmod(0o755)
    path = f"{gh.parent}:{d.env['PATH']}"
    for out in (
        ctl(d, "--spool", str(other), "add", "one"),
        ctl(d, "submit", str(todo), "--spool", str(other)),
        ctl(d, "add", "one", BATCHD_SPOOL_DIR=str(other)),
        ctl(d, "--spool", str(other), "submit", "--issues", "7", PATH=path),
    ):
        assert out.returncode == 1, out
        assert f"watches the spool {d.spool}, not {other}" in out.stderr
        assert "--spool" in out.stderr and out.stdout == ""
    assert files_in(other) == [] and d.batch_states() == []
    assert not (tmp_path / "gh-ran").exists()
    assert json.loads(ctl(d, "--json", "--spool", str(other), "add", "x").stdout)["error"][
        "code"
    ] == ("wrong_spool")
    link = tmp_path / "link-to-root"
    link.symlink_to(d.root)
    out = ctl(d, "--spool", str(link / d.spool.name), "add", "by the link")
    assert out.returncode == 0 and out.stderr == "", out
    [state] = d.wait_finished(1)
    assert state["features"] == ["by the link"] and state["status"] == "completed"


def test_with_no_daemon_running_submit_warns_and_queues(tmp_path: Path) -> None:
    """No daemon: add and submit still queue (exit 0) and say on stderr that nothing watches
    that spool yet, and how to start batchd; stdout says only what was queued."""
    d = Daemon(tmp_path / "d")
    out = ctl(d, "add", "one")
    assert out.returncode == 0, out
    assert out.stderr.startswith(
        f"batchctl: warning: no batchd is running, so nothing watches the spool {d.spool} yet"
    )
    assert "systemctl --user start batchd" in out.stderr
    [name] = files_in(d.spool)
    assert out.stdout.splitlines() == [
        f"queued 1 feature: {d.spool / name}",
        f"runs in: {d.workdir}",
    ]


# --- (3) a mistyped option or command ----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--sockt", "/tmp/x", "status"], "unknown option --sockt (did you mean --socket?)"),
        (["status", "--sockt", "/tmp/x"], "unknown option --sockt (did you mean --socket?)"),
        (["stauts"], "unknown command stauts (did you mean status?)"),
        (["add", "--wroktree", "x"], "unknown option --wroktree (did you mean --worktree?)"),
        (["logs", "1", "--folow"], "unknown option --folow (did you mean --follow?)"),
        (["frobnicate"], "unknown command frobnicate; `batchctl --help` lists the commands"),
    ],
)
def test_batchctl_names_a_mistyped_option_or_command(
    tmp_path: Path, argv: list[str], said: str
) -> None:
    """The unknown word is named with what was probably meant (exit 2), never read as a
    command ('invalid choice: /tmp/x'); --json says it as a usage error on stdout."""
    d = Daemon(tmp_path / "d")
    out = ctl(d, *argv)
    assert out.returncode == 2, out
    assert said in out.stderr and "invalid choice" not in out.stderr
    out = ctl(d, "--json", *argv)
    assert out.returncode == 2 and json.loads(out.stdout)["error"] == {
        "code": "usage",
        "message": said,
    }


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--sockt", "/tmp/x"], "unknown option --sockt (did you mean --socket?)"),
        (["--spool", "/tmp/s", "pahts"], "unknown command pahts (did you mean paths?)"),
        (["check-config", "--spool", "/tmp/s"], "option --spool goes before the command"),
        (["--log-levl", "debug"], "unknown option --log-levl (did you mean --log-level?)"),
    ],
)
def test_batchd_names_a_mistyped_option_or_command(
    tmp_path: Path, argv: list[str], said: str
) -> None:
    """batchd too: the mistyped word and the likely one, exit 2, nothing started."""
    d = Daemon(tmp_path / "d")
    out = subprocess.run(
        [sys.executable, "-m", "batchd", *argv],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert said in out.stderr
    assert not d.socket.exists() and not d.state.exists()


# --- (4) errors name what the user wrote --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["a\nb"], "feature 1: control character U+000A at column 2"),
        (["fine", "also\x1b[2Jfine"], "feature 2: control character U+001B at column 5"),
        (["fine", "  "], "feature 2: empty; give each feature some text"),
        (["x" * 2001], "feature 1: 2001 characters, over spool.max_line_chars (2000)"),
        (["--name", "a\x07b", "fine"], "add: name: name contains a control character"),
    ],
)
def test_add_names_the_argument_at_fault(tmp_path: Path, argv: list[str], said: str) -> None:
    """add with bad feature text exits 1 naming the argument (feature N), never a file the user
    never wrote; nothing is queued."""
    d = Daemon(tmp_path / "d")
    out = ctl(d, "add", *argv)
    assert out.returncode == 1, out
    assert said in out.stderr and ".json" not in out.stderr
    assert files_in(d.spool) == []


# --- (5) exit codes --------------------------------------------------------------------------

ONE_BATCH = ("show", "cancel", "retry", "logs", "reset-breaker")


def test_exit_codes_of_every_command(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Every command of batchctl's table exits as SPEC 8 says: 0 success, 1 refused or failed,
    2 usage, 3 no daemon, 4 wait --timeout (watch: 0 on Ctrl-C)."""
    d = make_daemon()
    todo, bad = tmp_path / "todo.txt", tmp_path / "bad.txt"
    todo.write_text("from a file\n")
    bad.write_text("a\x01b\n")
    seen: set[str] = set()

    def expect(code: int, *argv: str) -> None:
        out = ctl(d, *argv)
        assert out.returncode == code, (argv, out)
        seen.update(w for w in argv if w in BY_NAME)

    needs = {"resume": ["--all"], "skip": ["1", "0"], **{n: ["1"] for n in ONE_BATCH}}
    for c in BY_NAME.values():  # nothing listens yet: every command that asks the daemon
        if c.sends and c.name not in ("submit", "add", "consent"):
            expect(3, c.name, *needs.get(c.name, []))
    expect(2, "--sockt", "/tmp/x", "status")
    expect(1, "submit", str(bad))
    expect(0, "consent", "--enable")
    d.start()
    expect(0, "add", "one")
    expect(0, "wait", "last")
    expect(0, "add", "two exit=3 stderr=TypeError:_boom")
    expect(1, "wait", "last")
    for code, *argv in (
        (0, "status"),
        (2, "status", "extra"),
        (0, "list", "--ids"),
        (2, "list", "--idz"),
        (0, "show", "1"),
        (1, "show", "99"),
        (1, "show", "nope"),
        (2, "show"),
        (0, "ping"),
        (2, "ping", "extra"),
        (0, "logs", "1", "0"),
        (1, "logs", "99"),
        (2, "logs"),
        (2, "logs", "1", "-n", "x"),
        (1, "retry", "1"),  # it has no failed feature
        (0, "retry", "2"),
        (1, "wait", "2"),  # it fails again
        (1, "retry", "99"),
        (2, "retry"),
        (0, "reset-breaker", "2"),
        (1, "reset-breaker", "99"),
        (2, "reset-breaker"),
        (0, "consent", "--disable"),
        (2, "consent", "--enable", "--disable"),
        (0, "prune", "--dry-run"),
        (2, "prune", "--older-than", "-1"),
        (0, "completion", "bash"),
        (2, "completion", "tcsh"),
        (2, "completion"),
        (2, "add"),
        (2, "add", "--parallel", "x"),
        (1, "add", "--runner", "nope", "x"),
        (1, "add", "a\nb"),
        (2, "submit"),
        (1, "submit", str(tmp_path / "missing.txt")),
        (1, "--spool", str(tmp_path / "elsewhere"), "add", "x"),
        (2, "wait", "--timeout", "-1"),
        (1, "wait", "nope"),
        (0, "pause"),
        (0, "submit", str(todo)),
        (4, "wait", "last", "--timeout", "0.3"),
        (1, "skip", "3", "5"),
        (2, "skip", "3", "x"),
        (2, "skip", "3", "-1"),
        (0, "pause", "3"),
        (1, "pause", "99"),
        (2, "pause", "3", "4"),
        (2, "resume"),
        (2, "resume", "3", "--all"),
        (1, "resume", "99"),
        (0, "resume", "3"),
        (0, "resume", "--all"),
        (0, "wait", "3"),
        (1, "cancel", "3"),
        (1, "cancel", "99"),
        (2, "cancel"),
        (2, "watch", "--all"),
        (0, "reload"),
    ):
        expect(code, *argv)
    d.config_path.write_text("[runner]\ncommand = 5\n")
    expect(1, "reload")
    with subprocess.Popen(
        [sys.executable, "-m", "batchctl", "watch"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as watch:
        try:
            assert watch.stdout is not None and watch.stdout.readline().startswith("idle")
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            watch.kill()  # a failure here must not leave the with block waiting forever
    seen.add("watch")
    assert seen == set(BY_NAME), set(BY_NAME) - seen


# --- (9) what status and show say ---------------------------------------------------------------


def test_show_costs_add_up_and_a_paused_batch_has_no_eta(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Through a real daemon: three features at $0.333333 show $0.34, $0.33, $0.33 and a total
    of $1.00; a paused batch with a known mean duration shows no ETA in status."""
    d = make_daemon()
    d.start()
    third = "claude=ok cost=0.333333"
    gate = tmp_path / "go"
    features = [f"a {third}", f"b {third}", f"c {third}", f"d wait={gate}", "e"]
    assert ctl(d, "add", *features).returncode == 0
    d.wait_for(
        lambda: any(r["feature"].startswith("d ") for r in d.agent_runs()),
        what="the fourth feature to start",
    )
    assert ctl(d, "pause", "1").returncode == 0  # the running feature ends, the rest waits
    status = json.loads(ctl(d, "--json", "status").stdout)["batches"][0]
    assert status["eta_s"] is not None  # the daemon knows one; it is not shown while paused
    gate.touch()
    d.wait_for(lambda: d.batch_states()[0]["status"] == "paused", what="the pause after d")
    text = ctl(d, "status").stdout
    row = next(line for line in text.splitlines() if line.startswith("  1 batch-"))
    assert row.split()[2] == "paused" and row.split()[-1] == "-", text
    shown = ctl(d, "show", "1").stdout.splitlines()
    costs = {line.split()[0]: line.split()[5] for line in shown if line[:4].strip().isdigit()}
    assert [costs["0"], costs["1"], costs["2"]] == ["$0.34", "$0.33", "$0.33"]
    [total] = [line.split() for line in shown if line.split()[:1] == ["total"]]
    assert total[-1] == "$1.00"  # the feature table's last row; each attempt follows it
