"""Drive a real batchd process: temp dirs, a config with the fake agent, raw socket requests.

Nothing here imitates batchd: the daemon under test is the real program started
as a subprocess; the only fake is the agent at the edge (``tests/bin/fake-agent``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

TESTS = Path(__file__).resolve().parent
FAKE_AGENT = TESTS / "bin" / "fake-agent"
REPO = TESTS.parent

T = TypeVar("T")


def agent_command(*extra: str) -> list[str]:
    return [sys.executable, str(FAKE_AGENT), "{feature}", *extra]


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (neither gone nor a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] != b"Z"


def comm(pid: int) -> str:
    """The process's name (``/proc/PID/comm``), or "" when gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def poll(pred: Callable[[], T | None], timeout: float, what: str, why: Callable[[], str]) -> T:
    """The first truthy ``pred()``, checked every 20 ms; AssertionError with ``why()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{why()}")
        time.sleep(0.02)


class Daemon:
    """One batchd under test, with its own spool, state dir, socket and config."""

    def __init__(
        self,
        root: Path,
        backend: str = "asyncio",
        *,
        runner: list[str] | None = None,
        config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.backend = backend
        self.spool = root / "spool"
        self.state = root / "state"
        self.runtime = root / "run"
        self.socket = self.runtime / "batchd.sock"
        self.config_path = root / "config.toml"
        self.agent_log = root / "agent.jsonl"
        self.workdir = root / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = root / "daemon.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_env = env or {}
        self.runner_argv = runner or agent_command()
        self.write_config(self.runner_argv, config)

    def write_config(self, runner: list[str], extra: str = "") -> None:
        text = f"[runner]\ncommand = {toml_list(runner)}\ncwd = {json.dumps(str(self.workdir))}\n"
        text += "timeout = 60\nkill_grace = 2\n"
        if "[spool]" not in extra:
            text += "[spool]\nsettle_ms = 100\n"
        self.config_path.write_text(text + extra)

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("BATCHD_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "BATCH_RETRY", "INVOCATION_ID")
            )
        }
        env.update(
            BATCHD_CONFIG=str(self.config_path),
            BATCHD_SPOOL_DIR=str(self.spool),
            BATCHD_STATE_DIR=str(self.state),
            BATCHD_SOCKET=str(self.socket),
            FAKE_AGENT_LOG=str(self.agent_log),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # --- process control ---

    def start(
        self,
        *args: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """Start the daemon (``prefix`` goes before it, e.g. an ``unshare`` command)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "batchd",
                "--backend",
                self.backend,
                *args,
            ],
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
        err.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"batchd exited {self.proc.returncode}:\n{self.stderr()}")
            try:
                if self.request("ping")["ok"]:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"batchd did not answer within {timeout}s:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"batchd did not stop within {timeout}s:\n{self.stderr()}"
            ) from None

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def keepers(self) -> list[int]:
        """The keepers that hold (or held) runs of this state dir and are alive: those its
        run files name, and the daemon's own."""
        found = set()
        for path in self.state.glob("batches/*/logs/*.exit"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.add(int(json.loads(path.read_bytes())["held_by"]))
        if self.proc is not None:
            found.update(children(self.proc.pid))
        return sorted(pid for pid in found if alive(pid) and comm(pid) == "batchd-keeper")

    def power_cut(self) -> None:
        """kill -9 of the daemon, its keepers and every runner: what a reboot leaves behind."""
        keepers = self.keepers()
        self.kill9()
        for pid in keepers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The keepers first: one that saw its runner die would record how.
        poll(lambda: not any(alive(p) for p in keepers), 10, "the keepers' end", str)
        runners = self.live_runners()
        self.kill_runners()
        poll(lambda: not any(alive(p) for p in runners), 10, "the runners' end", str)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.kill_runners()  # leave no runner behind between tests

    def live_runners(self) -> list[int]:
        """The runners of this daemon still alive: a pid of the agent's log whose process
        carries this daemon's agent log (an old pid may be another process by now)."""
        mark = f"FAKE_AGENT_LOG={self.agent_log}".encode()
        found = []
        for rec in self.agent_runs():
            if rec["event"] == "start":
                try:
                    env = Path(f"/proc/{rec['pid']}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if mark in env:
                    found.append(int(rec["pid"]))
        return found

    def kill_runners(self) -> None:
        """SIGKILL to the process group of each live runner of this daemon."""
        for pid in self.live_runners():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- talking to it ---

    def request(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            req = {"v": 1, "id": 1, "cmd": cmd, "args": args}
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed without a reply")
                buf += chunk
        reply: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
        return reply

    def ok(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = self.request(cmd, **args)
        assert reply["ok"], reply
        result: dict[str, Any] = reply["result"]
        return result

    def status(self) -> dict[str, Any]:
        return self.ok("status")

    def ctl(
        self, *args: str, input: str | None = None, timeout: float = 30, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            cwd=cwd,
        )

    def ctl_background(self, *args: str, out: Path) -> subprocess.Popen[bytes]:
        """batchctl running on its own: stdout in ``out``, stderr in ``out`` + ``.err``."""
        with open(out, "wb") as stdout, open(f"{out}.err", "wb") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "batchctl", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )

    # --- input and observation ---

    def drop(self, name: str, lines: Iterable[str]) -> Path:
        """Write a plain feature file into the spool the right way (temp name, rename)."""
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.spool / f".{name}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.rename(tmp, self.spool / name)
        return self.spool / name

    def drop_request(self, name: str, request: dict[str, Any]) -> Path:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.spool / f".{name}.tmp"
        tmp.write_text(json.dumps(request))
        os.rename(tmp, self.spool / name)
        return self.spool / name

    def wait_for(
        self, pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        return poll(pred, timeout, what, lambda: f"--- daemon stderr:\n{self.stderr()}")

    def batch_states(self) -> list[dict[str, Any]]:
        """Every batch's state.json as stored on disk, by seq."""
        out: list[dict[str, Any]] = []
        bdir = self.state / "batches"
        if not bdir.is_dir():
            return out
        for d in sorted(bdir.iterdir()):
            f = d / "state.json"
            if f.exists():
                out.append(json.loads(f.read_bytes()))
        return sorted(out, key=lambda s: s["seq"])

    def retry_state(self, batch_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.state / "batches" / batch_id / "retry_state.json").read_bytes()
        )
        return data

    def audit(self, batch_id: str) -> list[dict[str, Any]]:
        path = self.state / "batches" / batch_id / "retry_audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def finished(self, count: int) -> bool:
        states = self.batch_states()
        return len(states) >= count and all(
            s["status"] in ("completed", "failed", "cancelled") for s in states
        )

    def wait_finished(self, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.wait_for(lambda: self.finished(count), timeout, f"{count} finished batches")
        return self.batch_states()

    def agent_runs(self) -> list[dict[str, Any]]:
        if not self.agent_log.exists():
            return []
        out = []
        for line in self.agent_log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                out.append(json.loads(line))
        return out
