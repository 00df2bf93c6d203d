"""batchctl end to end: every command, exit codes, --json, submit, gh, consent (issues 4-6)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TESTS, Daemon

MakeDaemon = Callable[..., Daemon]


def ctl_json(d: Daemon, *args: str) -> Any:
    out = d.ctl("--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_read_commands_human_and_json(make_daemon: MakeDaemon) -> None:
    """status, list, show and ping print fitting text and JSON with the spec's fields."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one claude=ok cost=0.25", "two exit=3 stderr=TypeError:_boom"])
    [state] = d.wait_finished(1)
    bid = state["batch_id"]
    st = ctl_json(d, "status")
    assert st["daemon"]["backend"] == d.backend and st["batches"][0]["batch_id"] == bid
    human = d.ctl("status")
    assert human.returncode == 0 and bid in human.stdout
    assert all(len(line) <= 80 for line in human.stdout.splitlines())
    assert ctl_json(d, "list")["batches"][0]["status"] == "failed"
    shown = d.ctl("show", bid)
    assert shown.returncode == 0
    assert "$0.25" in shown.stdout and "TypeError: boom" in shown.stdout
    # Everything fits but a path, which is never cut (the test's own may be long).
    assert all(
        len(line) <= 80 for line in shown.stdout.splitlines() if not line.startswith("runs in:")
    )
    assert ctl_json(d, "show", bid)["state"]["cost_usd"] == 0.25
    # --json after the subcommand works too
    out = d.ctl("show", bid, "--json")
    assert json.loads(out.stdout)["batch"]["batch_id"] == bid
    assert d.ctl("ping").returncode == 0


def test_exit_codes(make_daemon: MakeDaemon) -> None:
    """1 for refusals and unknown or malformed ids, 2 for usage, 3 with no daemon."""
    d = make_daemon()
    down = d.ctl("status")
    assert down.returncode == 3
    assert "batchd" in down.stderr and "systemctl --user start batchd" in down.stderr
    assert str(d.socket) in down.stderr
    d.start()
    assert d.ctl("show", "batch-20200101-000000-000000").returncode == 1
    bad = d.ctl("show", "../../etc/passwd")
    assert bad.returncode == 1 and "unknown batch" in bad.stderr
    assert d.ctl("frobnicate").returncode == 2
    assert d.ctl("skip", "batch-20200101-000000-000000", "notanumber").returncode == 2
    bare = d.ctl("resume")  # a usage error, found before anything is sent
    assert bare.returncode == 2 and "resume needs a BATCH_ID, or --all" in bare.stderr


def test_control_commands(make_daemon: MakeDaemon) -> None:
    """pause/resume/cancel/retry/skip/reset-breaker/prune through batchctl."""
    d = make_daemon()
    d.start()
    assert d.ctl("pause").returncode == 0
    d.drop("a.txt", ["a1", "a2 exit=1"])
    d.wait_for(lambda: d.batch_states(), what="batch")
    bid = d.batch_states()[0]["batch_id"]
    assert ctl_json(d, "status")["queue_paused"] is True
    assert d.ctl("skip", bid, "0").returncode == 0
    out = d.ctl("resume", "--all")
    assert out.returncode == 0 and "queue resumed" in out.stdout
    [state] = d.wait_finished(1)
    assert state["status"] == "failed" and state["skipped_features"] == [0]
    assert d.ctl("reset-breaker", bid).returncode == 0
    d.stop()
    d.write_config(["/bin/true"])
    d.start()
    assert ctl_json(d, "retry", bid)["requeued"] == [1]
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert d.ctl("cancel", bid).returncode == 1  # finished: bad state
    assert ctl_json(d, "prune", "--older-than", "0")["removed"] == [bid]
    assert ctl_json(d, "list")["batches"] == []


def read_until(proc: subprocess.Popen[bytes], text: str, timeout: float = 60) -> bytes:
    """What ``proc`` printed on stdout up to and including ``text`` (it keeps running)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} within {timeout}s; got {out!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed before {text!r}; got {out!r}"
            out += chunk
    return out


def test_logs_and_watch(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """logs follows an attempt's output until it ends; watch prints the running feature's
    progress line and stops on Ctrl-C with exit 0."""
    d = make_daemon()
    d.start()
    go = tmp_path / "go"
    d.drop("l.txt", [f"talk stdout=hi_there wait={go}"])  # runs until the test lets it end
    bid = d.wait_for(lambda: (c := d.status()["current"]) and c["batch_id"], what="running")
    watch = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "watch"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    follow = subprocess.Popen(
        [sys.executable, "-m", "batchctl", "logs", bid, "--follow"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        read_until(watch, bid)  # the progress line of the running feature
        read_until(follow, "hi there")  # streamed while the feature still runs
        go.touch()
        _, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        [state] = d.wait_finished(1)
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        for proc in (watch, follow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = d.ctl("logs", state["batch_id"], "0")
    assert logs.returncode == 0 and "hi there" in logs.stdout


def test_submit_validates_locally_and_works_without_daemon(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """submit writes one valid request with the caller's cwd; a bad file exits 1, writes nothing."""
    d = make_daemon()
    good = tmp_path / "todo.txt"
    good.write_text("# batchd: name = mine\nfirst\nsecond\nfirst\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "batchctl", "submit", str(good)],
        env=d.env,
        cwd=proj,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    [req_path] = [p for p in d.spool.iterdir()]
    assert req_path.suffix == ".json" and str(req_path) in out.stdout
    req = json.loads(req_path.read_text())
    assert req == {
        "features": ["first", "second"],
        "source_type": "file",
        "issue_numbers": None,
        "cwd": str(proj),
        "name": "mine",
    }
    assert os.stat(req_path).st_mode & 0o777 == 0o600
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nnul\x00here\n")
    out = d.ctl("submit", str(bad))
    assert out.returncode == 1 and "line 2" in out.stderr
    assert len(list(d.spool.iterdir())) == 1
    out = d.ctl("submit", str(good), "--cwd", str(tmp_path / "missing"))
    assert out.returncode == 1
    d.start()
    [state] = d.wait_finished(1)
    assert state["cwd"] == str(proj) and state["name"] == "mine"


def gh_env(
    d: Daemon, tmp_path: Path, mode: str, titles: dict[str, str] | None = None
) -> dict[str, str]:
    bindir = tmp_path / "ghbin"
    bindir.mkdir(exist_ok=True)
    gh = bindir / "gh"
    if not gh.exists():
        gh.write_text(f'#!/bin/sh\nexec {sys.executable} {TESTS / "bin" / "fake-gh"} "$@"\n')
        gh.chmod(0o755)
    return {
        **d.env,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_GH_MODE": mode,
        "FAKE_GH_TITLES": json.dumps(titles or {}),
        "FAKE_GH_LOG": str(tmp_path / "gh.log"),
        # Short only where gh hangs (every call does then); elsewhere a slow start must not
        # read as a hang.
        "BATCHCTL_GH_TIMEOUT": "1" if mode == "hang" else "60",
    }


def submit_issues(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchctl", "submit", "--issues", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_issues_success(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Titles are cleaned (escapes, whitespace, control chars, 200 cut, Unicode kept), dups dropped."""
    d = make_daemon(
        runner=[sys.executable, str(TESTS / "bin" / "fake-agent"), "{feature}", "{issue}"]
    )
    titles = {
        "72": "Fix \x1b[31mred\x1b[0m\tlogin\n\nbug",
        "8": "Ünïcödé ✓ " + "x" * 300,
        "9": "bell\x07 here",
    }
    env = gh_env(d, tmp_path, "ok", titles)
    out = submit_issues(env, "72", "8", "72", "9", "--repo", "me/app")
    assert out.returncode == 0, out.stderr
    [req_path] = list(d.spool.iterdir())
    req = json.loads(req_path.read_text())
    assert req["source_type"] == "github_issues" and req["issue_numbers"] == [72, 8, 9]
    assert req["features"][0] == "Issue #72: Fix red login bug"
    assert req["features"][1].startswith("Issue #8: Ünïcödé ✓ x")
    assert len(req["features"][1]) == len("Issue #8: ") + 200
    assert req["features"][2] == "Issue #9: bell here"
    calls = [json.loads(line) for line in (tmp_path / "gh.log").read_text().splitlines()]
    assert ["issue", "view", "72", "--json", "number,title", "--repo", "me/app"] in calls
    assert len(calls) == 3
    d.start()
    d.wait_finished(1)
    argv = [r["argv"] for r in d.agent_runs() if r["event"] == "start"]
    assert [a[1] for a in argv] == ["72", "8", "9"]


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("notfound", "not found"),
        ("auth", "gh auth login"),
        ("hang", "did not answer"),
        ("malformed", "unexpected output"),
        ("missing", "cli.github.com"),
    ],
)
def test_submit_issues_failures_queue_nothing(
    make_daemon: MakeDaemon, tmp_path: Path, mode: str, expect: str
) -> None:
    """Every gh failure names the issue and the fix, exits 1 and writes nothing to the spool."""
    d = make_daemon()
    env = gh_env(d, tmp_path, mode)
    if mode == "missing":
        env["PATH"] = "/nonexistent"
    out = subprocess.run(
        [sys.executable, "-m", "batchctl", "submit", "--issues", "5", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out
    assert "#5" in out.stderr and expect in out.stderr
    assert not d.spool.exists() or list(d.spool.iterdir()) == []


def test_submit_issue_number_rules(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Non-positive numbers are usage errors; more than 100 is refused; nothing is written."""
    d = make_daemon()
    env = gh_env(d, tmp_path, "ok")
    assert submit_issues(env, "0").returncode == 2
    assert submit_issues(env, "-3").returncode == 2
    assert submit_issues(env, "abc").returncode == 2
    many = [str(i) for i in range(1, 102)]
    out = submit_issues(env, *many)
    assert out.returncode == 1 and "at most 100" in out.stderr
    assert not d.spool.exists() or list(d.spool.iterdir()) == []


def test_consent_offline_and_symlink_refused(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """consent --enable/--disable without a daemon writes user_state.json 0600 in a 0700 dir."""
    d = make_daemon()
    assert d.ctl("consent", "--enable").returncode == 0
    path = d.state / "user_state.json"
    assert json.loads(path.read_text())["batch_retry_enabled"] is True
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(d.state).st_mode & 0o777 == 0o700
    assert d.ctl("consent", "--disable").returncode == 0
    assert json.loads(path.read_text())["batch_retry_enabled"] is False
    assert "disabled" in d.ctl("consent").stdout
    path.unlink()
    os.symlink(tmp_path / "elsewhere", path)
    out = d.ctl("consent", "--enable")
    assert out.returncode == 1 and "symlink" in out.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_consent_through_the_daemon(make_daemon: MakeDaemon) -> None:
    """With the daemon up, consent goes through it and status shows it."""
    d = make_daemon()
    d.start()
    assert d.ctl("consent", "--enable").returncode == 0
    assert ctl_json(d, "status")["retry_enabled"] is True


def answer_prompt(d: Daemon, answer: bytes) -> str:
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "batchctl", "consent"], d.env)
    out = b""
    sent = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"[y/N]" in out:
                os.write(fd, answer)
                sent = True
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace")


def test_consent_prompt_on_a_terminal(make_daemon: MakeDaemon) -> None:
    """batchctl consent explains and asks on a pty; Enter means no, y means yes."""
    d = make_daemon()
    text = answer_prompt(d, b"\r")
    assert "rate limit" in text and "--disable" in text
    assert json.loads((d.state / "user_state.json").read_text())["batch_retry_enabled"] is False
    answer_prompt(d, b"y\r")
    assert json.loads((d.state / "user_state.json").read_text())["batch_retry_enabled"] is True


def test_status_does_not_import_anyio_or_msgspec(make_daemon: MakeDaemon) -> None:
    """batchctl status loads neither anyio nor msgspec (it must start fast)."""
    d = make_daemon()
    d.start()
    code = (
        "import sys\n"
        "sys.argv = ['batchctl', '--json', 'status']\n"
        "from batchctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('anyio', 'msgspec', 'trio') if m in sys.modules]\n"
        "print('HEAVY', heavy, code, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=d.env, capture_output=True, text=True)
    assert "HEAVY [] 0" in out.stderr, out.stderr
