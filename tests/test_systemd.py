"""The daemon under systemd's protocols, with real processes: notify order, socket activation, child env."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound where NOTIFY_SOCKET will point (tmp_path/notify.sock)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(0.2)
    yield s
    s.close()


def drain(s: socket.socket, until: Callable[[list[str]], bool], timeout: float = 20) -> list[str]:
    msgs: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(msgs):
        with contextlib.suppress(TimeoutError):
            msgs.append(s.recv(65536).decode())
    return msgs


def test_notify_sequence_ready_status_watchdog_stopping(
    make_daemon: MakeDaemon, tmp_path: Path, ns: socket.socket
) -> None:
    """READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 arrive in that order."""
    d = make_daemon()
    d.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    d.drop("n.txt", ["one"])
    d.wait_finished(1)
    msgs = drain(ns, lambda m: sum("WATCHDOG=1" in x for x in m) >= 2)
    d.stop()
    msgs += drain(ns, lambda m: any("STOPPING=1" in x for x in m), timeout=5)
    lines = [line for m in msgs for line in m.splitlines()]
    first = {
        key: next(i for i, x in enumerate(lines) if x.startswith(key))
        for key in ("READY=1", "STATUS=", "WATCHDOG=1", "STOPPING=1")
    }
    assert first["READY=1"] < first["STATUS="] or first["READY=1"] <= first["STATUS="] + 1
    assert first["READY=1"] < first["WATCHDOG=1"] < first["STOPPING=1"]
    assert any(
        x.startswith("STATUS=1 running (1 slots): batch-") and "1/1: one" in x for x in lines
    )


def test_ready_only_after_orphan_is_gone(
    make_daemon: MakeDaemon, tmp_path: Path, ns: socket.socket
) -> None:
    """Started with a live orphaned runner that no attempt records (a kill between its start
    and the record), READY=1 follows its death."""
    d = make_daemon()
    d.start(env={"BATCHD_FAILPOINTS": "after_spawn"}, wait=False)
    d.drop("o.txt", ["orphan ignore_term sleep=60"])
    assert d.proc is not None and d.proc.wait(30) == -9
    d.wait_for(lambda: [r for r in d.agent_runs() if r["event"] == "start"], what="runner")
    assert not d.batch_states()[0]["processing_history"]
    pid = int(next(r for r in d.agent_runs() if r["event"] == "start")["pid"])
    d.start(wait=False, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    msgs = drain(ns, lambda m: any("READY=1" in x for x in m))
    assert any("READY=1" in m for m in msgs)
    with (
        open(f"/proc/{pid}/stat", "rb")
        if os.path.exists(f"/proc/{pid}/stat")
        else io.BytesIO(b"(x) Z") as f
    ):
        raw = f.read()
    assert raw[raw.rfind(b")") + 2 :].split()[0] == b"Z" or not os.path.exists(f"/proc/{pid}")
    d.stop()


def test_reload_sends_reloading_then_ready(
    make_daemon: MakeDaemon, tmp_path: Path, ns: socket.socket
) -> None:
    """SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1; a bad config keeps the old one."""
    import signal

    d = make_daemon()
    d.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    drain(ns, lambda m: any("READY=1" in x for x in m))
    drain(ns, lambda m: False, timeout=0.5)  # whatever followed READY=1
    assert d.proc is not None
    d.config_path.write_text(d.config_path.read_text() + "\n[retry]\nbogus = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    msgs = drain(ns, lambda m: any("READY=1" in x for x in m))
    reloading = next(i for i, m in enumerate(msgs) if "RELOADING=1" in m)
    ready = next(i for i, m in enumerate(msgs) if "READY=1" in m)
    assert reloading < ready and "MONOTONIC_USEC=" in msgs[reloading]
    d.wait_for(lambda: "the previous configuration is kept" in d.stderr(), what="log")
    assert "retry.bogus" in d.stderr()
    assert d.request("ping")["ok"]


@pytest.mark.skipif(
    not shutil.which("systemd-socket-activate"), reason="systemd-socket-activate missing"
)
def test_real_socket_activation_answers_first_client(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """systemd-socket-activate starts batchd on the first connection, which gets its answer."""
    d = make_daemon()
    sock_path = tmp_path / "act" / "batchd.sock"
    sock_path.parent.mkdir(mode=0o700)
    err = open(d.stderr_path, "ab")
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(sock_path),
            sys.executable,
            "-m",
            "batchd",
            "--backend",
            d.backend,
        ],
        env={**d.env, "BATCHD_SOCKET": str(tmp_path / "unused.sock")},
        stdout=err,
        stderr=err,
    )
    err.close()
    try:
        d.wait_for(sock_path.exists, what="systemd-socket-activate listening")
        d.socket = sock_path
        reply = d.request("status", timeout=30)
        assert reply["ok"] and reply["result"]["daemon"]["backend"] == d.backend
        assert not (tmp_path / "unused.sock").exists()  # it used the inherited socket
    finally:
        proc.terminate()
        proc.wait(30)


def test_notify_reaches_abstract_socket(tmp_path: Path) -> None:
    """A leading @ in NOTIFY_SOCKET means the abstract namespace."""
    name = f"batchd-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    code = "from batchd.systemd import notify; import sys; sys.exit(0 if notify('READY=1', 'STATUS=x') else 1)"
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": "@" + name}, check=True
    )
    assert s.recv(100) == b"READY=1\nSTATUS=x"
    s.close()


def test_runner_never_sees_listen_or_watchdog_vars(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """WATCHDOG_* and NOTIFY_SOCKET are kept from the runner."""
    d = make_daemon(
        runner=[
            sys.executable,
            "-c",
            "import os, json, sys; print(json.dumps(sorted(k for k in os.environ if k.startswith(('WATCHDOG', 'LISTEN', 'NOTIFY')))))",
        ]
    )
    d.start(env={"WATCHDOG_USEC": "60000000", "NOTIFY_SOCKET": str(tmp_path / "nowhere")})
    d.drop("e.txt", ["x"])
    [state] = d.wait_finished(1)
    log = d.state / "batches" / state["batch_id"] / "logs" / "0.1.log"
    assert json.loads(log.read_text()) == []
