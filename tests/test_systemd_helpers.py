"""batchd.systemd's runtime helpers: sd_notify, watchdog, socket activation, child env."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd import systemd


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (AF_UNIX paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="bd-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def receiver(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound at a path that NOTIFY_SOCKET names."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(short_dir / "notify"))
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "notify"))
    yield s
    s.close()


# --- notify ---------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path(receiver: socket.socket) -> None:
    """notify() joins its lines with newlines into one datagram on $NOTIFY_SOCKET."""
    assert systemd.notify("READY=1", "STATUS=ready; 2 batches") is True
    assert receiver.recv(4096) == b"READY=1\nSTATUS=ready; 2 batches"


def test_notify_reaches_the_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading @ in NOTIFY_SOCKET means an abstract socket name."""
    name = f"batchd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert s.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_quiet_no_op_without_a_listener(
    monkeypatch: pytest.MonkeyPatch, short_dir: Path
) -> None:
    """Unset, empty, dangling or absurd NOTIFY_SOCKET: False, never an exception."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    for value in ("", str(short_dir / "nobody"), "/" + "x" * 200, "@", "vsock:2:1234"):
        monkeypatch.setenv("NOTIFY_SOCKET", value)
        assert systemd.notify("READY=1") is False, value


def test_notify_without_lines_sends_nothing(receiver: socket.socket) -> None:
    """notify() with no lines returns False and sends no datagram."""
    assert systemd.notify() is False
    assert systemd.notify("STATUS=after") is True
    assert receiver.recv(4096) == b"STATUS=after"  # the first datagram is the later one


def test_notify_keeps_a_newline_from_adding_an_assignment(receiver: socket.socket) -> None:
    """A newline inside one line is sent as a space: STATUS cannot inject READY=1."""
    assert systemd.notify("STATUS=a\nREADY=1")
    assert receiver.recv(4096) == b"STATUS=a READY=1"


def test_notify_reuses_one_cached_socket(receiver: socket.socket) -> None:
    """Repeated notify() calls send through the same cached socket."""
    assert systemd.notify("STATUS=1")
    first = systemd._notify_sock
    assert systemd.notify("STATUS=2")
    assert first is not None and systemd._notify_sock is first
    assert [receiver.recv(100), receiver.recv(100)] == [b"STATUS=1", b"STATUS=2"]


def test_notify_reloading_carries_the_monotonic_time(receiver: socket.socket) -> None:
    """notify_reloading() sends RELOADING=1 and MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.notify_reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


# --- watchdog -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 30.0),
        ("60000000", "SELF", 30.0),
        ("60000000", "OTHER", None),
        ("500000", "", 0.25),
        ("0", None, None),
        ("-5", None, None),
        ("sixty", None, None),
        ("60000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval_rules(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    """Half of WATCHDOG_USEC, only when WATCHDOG_PID is unset or this process; else None."""
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            value = {"SELF": str(os.getpid()), "OTHER": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, value)
    assert systemd.watchdog_interval_s() == expected


# --- socket activation ----------------------------------------------------------------------


def test_listen_sockets_ignores_another_process_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    """LISTEN_PID of another process: no sockets, and the LISTEN_* variables stay."""
    for pid in (str(os.getpid() + 1), "garbage"):
        monkeypatch.setenv("LISTEN_PID", pid)
        monkeypatch.setenv("LISTEN_FDS", "1")
        monkeypatch.setenv("LISTEN_FDNAMES", "control")
        assert systemd.listen_sockets() == []
        assert os.environ["LISTEN_PID"] == pid
        assert os.environ["LISTEN_FDS"] == "1" and os.environ["LISTEN_FDNAMES"] == "control"
    monkeypatch.delenv("LISTEN_PID")
    assert systemd.listen_sockets() == []


# Runs as the activated process: moves the passed fds to 3.. (where systemd puts
# them), calls listen_sockets() and reports what it got.
ACTIVATED = """
import fcntl, json, os, socket, sys
fds = [int(x) for x in sys.argv[1:]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
from batchd.systemd import listen_sockets
socks = listen_sockets()
report = {
    "fds": [s.fileno() for s in socks],
    "families": [s.family == socket.AF_UNIX for s in socks],
    "stream": [s.type == socket.SOCK_STREAM for s in socks],
    "inheritable": [os.get_inheritable(s.fileno()) for s in socks],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "again": len(listen_sockets()),
}
for s in socks:
    s.settimeout(10)
    conn, _ = s.accept()
    conn.sendall(b"served")
    conn.close()
print(json.dumps(report))
"""


def activate(fds: list[int], env: dict[str, str], count: int) -> dict[str, object]:
    """Run ACTIVATED with LISTEN_PID equal to its own pid (sh's $$ survives exec)."""
    proc = subprocess.run(
        [
            "sh",
            "-c",
            f'LISTEN_PID=$$ LISTEN_FDS={count} LISTEN_FDNAMES=control exec "$0" "$@"',
            sys.executable,
            "-c",
            ACTIVATED,
            *map(str, fds),
        ],
        env=env,
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_listen_sockets_takes_over_the_inherited_socket(short_dir: Path) -> None:
    """LISTEN_PID = own pid: fd 3 becomes a working close-on-exec socket, LISTEN_* unset."""
    path = str(short_dir / "ctl.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)  # waits in the backlog until the child accepts it
            client.settimeout(30)
            report = activate([listener.fileno()], env, 1)
            assert client.recv(100) == b"served"
    assert report == {
        "fds": [3],
        "families": [True],
        "stream": [True],
        "inheritable": [False],
        "env": [],
        "again": 0,
    }


def test_listen_sockets_skips_an_fd_that_is_not_a_socket(short_dir: Path) -> None:
    """LISTEN_FDS counting a pipe: the pipe is skipped, the socket is still used."""
    path = str(short_dir / "ctl.sock")
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                client.settimeout(30)
                report = activate([r, listener.fileno()], dict(os.environ), 2)
                assert client.recv(100) == b"served"
    finally:
        os.close(r)
        os.close(w)
    assert report["fds"] == [4] and report["env"] == []


# --- child environment ----------------------------------------------------------------------


def test_child_env_drops_what_belongs_to_the_service_manager() -> None:
    """NOTIFY_SOCKET, LISTEN_* and WATCHDOG_* are removed; everything else is copied."""
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "NOTIFY_SOCKET": "/run/user/1000/systemd/notify",
        "LISTEN_PID": "42",
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "control",
        "WATCHDOG_USEC": "60000000",
        "WATCHDOG_PID": "42",
        "JOURNAL_STREAM": "8:123",
        "MY_LISTEN_FDS": "kept",
        "INVOCATION_ID": "abc",
    }
    out = systemd.child_env(env)
    assert out == {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "JOURNAL_STREAM": "8:123",
        "MY_LISTEN_FDS": "kept",
        "INVOCATION_ID": "abc",
    }
    assert out is not env and len(env) == 11  # a copy; the input is untouched
