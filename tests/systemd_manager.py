"""A real, private ``systemd --user`` manager for end-to-end tests of the batchd units.

systemd 252 refuses ``--user`` when the machine was not booted with systemd
(``/run/systemd/system`` missing). In a private mount namespace with a tmpfs on
``/run/systemd`` it runs as an ordinary process (recipe in NOTES.md "A real
systemd user manager"). Root only.

What the manager gets, and nothing else of the test process:
- its own ``HOME`` (units in ``$HOME/.config/systemd/user``, batchd's config in
  ``$HOME/.config/batchd/``) and a 0700 ``XDG_RUNTIME_DIR`` (short, in /tmp: a
  socket path must fit in 108 bytes);
- its own cgroup (a child of the test's cgroup in each hierarchy systemd tracks
  processes with), so two managers started at once never share
  ``app.slice/batchd.service``, and teardown can find every process it left;
- no journald: a ``service.d`` drop-in sends every service's output to one file
  (``UserManager.log``); the batchd units themselves load exactly as installed.

Teardown: ``systemctl --user exit``, then SIGKILL for whatever is still in the
manager's cgroups (reported as strays), then the cgroups and the runtime dir go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.harness import Daemon, poll

SYSTEMD = Path("/lib/systemd/systemd")
# The batchd of the installation under test: this checkout's venv (the script
# pip wrote next to the interpreter running the tests).
VENV_BATCHD = Path(sys.executable).parent / "batchd"


# Runs inside the new mount namespace: join the private cgroups, hide the host's
# /run/systemd, then become the manager (same pid as the unshare process).
_START = """
for d in "$@"; do echo $$ > "$d/cgroup.procs" || exit 1; done
mount -t tmpfs -o mode=0755 tmpfs /run/systemd || exit 1
mkdir -p /run/systemd/system || exit 1
exec /lib/systemd/systemd --user
"""


def skip_reason() -> str | None:
    """Why a real user manager cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a private systemd --user manager needs root (mount namespace, cgroups)"
    if not SYSTEMD.is_file():
        return f"{SYSTEMD} is not installed"
    for tool in ("systemctl", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not VENV_BATCHD.is_file():
        return f"{VENV_BATCHD} missing: run the tests with this checkout's venv python"
    return None


# --- cgroups -------------------------------------------------------------------------------


def _tracking_hierarchies() -> list[Path]:
    """Mount points of the hierarchies systemd tracks processes in (name=systemd, cgroup2)."""
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", ""][:3]
            mount = Path(left.split()[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
                found.append(mount)
    return found


def _own_cgroup(mount: Path) -> Path:
    """This process's cgroup inside the hierarchy mounted at ``mount``."""
    wanted = "name=systemd" if (mount / "cgroup.clone_children").exists() else ""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _num, names, path = line.rstrip("\n").split(":", 2)
            if names == wanted:
                return mount / path.lstrip("/")
    return mount


def _cgroup_pids(cgroup: Path) -> list[int]:
    """Every pid in ``cgroup`` and below it."""
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(x) for x in procs.read_text().split()]
    return pids


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir ``cgroup`` and its children, deepest first (they must be empty)."""
    if not cgroup.is_dir():
        return
    for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()


# --- the manager ---------------------------------------------------------------------------


class UserManager:
    """One private ``systemd --user``; drive it with ``systemctl`` and ``show``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runtime = Path(tempfile.mkdtemp(prefix="sdm-", dir="/tmp"))  # mode 0700
        self.unit_dir = self.home / ".config" / "systemd" / "user"
        self.log = root / "services.log"  # stdout and stderr of every service
        self.manager_log = root / "manager.log"
        self.ends_log = root / "service-ends.log"  # "UNIT RESULT EXIT_CODE EXIT_STATUS" lines
        name = f"batchd-sdtest-{uuid.uuid4().hex[:12]}"
        self.cgroups = [_own_cgroup(m) / name for m in _tracking_hierarchies()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.strays: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment of the manager and of every client of it: no DBUS_*, no XDG_* but ours."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LANG": "C.UTF-8",
        }

    def start(self, timeout: float = 30) -> None:
        """Start the manager and wait until ``$XDG_RUNTIME_DIR/systemd/private`` answers."""
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        dropin = self.unit_dir / "service.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "zz-test-output.conf").write_text(
            "# No journald in the test manager: service output goes to one file, and\n"
            "# how each run ended to another (an inactive unit is unloaded, and with\n"
            "# it what `systemctl show` knew about the run).\n"
            f"[Service]\nStandardOutput=append:{self.log}\nStandardError=inherit\n"
            'ExecStopPost=/bin/sh -c \'echo "%n $${SERVICE_RESULT} $${EXIT_CODE} $${EXIT_STATUS}"'
            f" >> {self.ends_log}'\n"
        )
        for cg in self.cgroups:
            cg.mkdir()
        with open(self.manager_log, "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", _START, "sh"]
                + [str(cg) for cg in self.cgroups],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        private = self.runtime / "systemd" / "private"
        poll(
            lambda: private.exists() and self.systemctl("is-system-running", check=False).stdout,
            timeout,
            f"{private}",
            self.diagnostics,
        )

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS`` against this manager; with ``check``, a failure raises."""
        done = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"systemctl --user {' '.join(args)} exited {done.returncode}: "
                f"{done.stdout}{done.stderr}\n{self.diagnostics()}"
            )
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl --user show -p PROPS UNIT`` as a dict."""
        out = self.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_show(
        self, unit: str, timeout: float = 30, **want: str | Callable[[str], bool]
    ) -> dict[str, str]:
        """Poll ``show`` until every property matches (a value, or a predicate on it)."""

        def matches() -> dict[str, str] | None:
            got = self.show(unit, *want)
            ok = all(w(got.get(k, "")) if callable(w) else got.get(k) == w for k, w in want.items())
            return got if ok else None

        return poll(
            matches,
            timeout,
            f"{unit} {want}",
            lambda: f"now: {self.show(unit, *want)}\n{self.diagnostics()}",
        )

    def run_ends(self, unit: str) -> list[tuple[str, str, str]]:
        """How each run of ``unit`` ended: (``$SERVICE_RESULT``, ``$EXIT_CODE``, ``$EXIT_STATUS``)."""
        try:
            lines = self.ends_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        fields = [line.split(" ") for line in lines]
        return [(f[1], f[2], f[3]) for f in fields if len(f) == 4 and f[0] == unit]

    def diagnostics(self) -> str:
        """The manager's and the services' output, for an assertion message."""
        parts = []
        for path in (self.manager_log, self.ends_log, self.log):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def unit_pids(self, unit: str) -> list[int]:
        """Every process in ``unit``'s cgroup now (its ``ControlGroup``, in each hierarchy)."""
        group = self.show(unit, "ControlGroup")["ControlGroup"].lstrip("/")
        if not group:
            return []
        return sorted({pid for m in _tracking_hierarchies() for pid in _cgroup_pids(m / group)})

    def pids(self) -> list[int]:
        """Every process in the manager's cgroups (the manager too, while it runs)."""
        return sorted({pid for cg in self.cgroups for pid in _cgroup_pids(cg)})

    def close(self) -> None:
        """Exit the manager, SIGKILL whatever is left (recorded in ``strays``), remove its traces."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
                self.systemctl("exit", check=False, timeout=30)
                self.proc.wait(60)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while (left := self.pids()) and time.monotonic() < deadline:
            self.strays += [p for p in left if p not in self.strays]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for cg in self.cgroups:
            _remove_cgroup(cg)
        shutil.rmtree(self.runtime, ignore_errors=True)


@contextlib.contextmanager
def user_manager(root: Path) -> Iterator[UserManager]:
    """A started ``UserManager`` under ``root``; torn down on exit, failing if it left strays."""
    manager = UserManager(root)
    try:
        manager.start()
        yield manager
    finally:
        manager.close()
    assert not manager.strays, f"processes outlived the user manager: {manager.strays}"


# --- batchd as a user service --------------------------------------------------------------


class Service(Daemon):
    """batchd as the manager's unit sees it: the default paths under the manager's HOME.

    The config (fake agent, fast settle) is ``$HOME/.config/batchd/config.toml``
    and the agent's log path goes into ``$HOME/.config/batchd/environment``, the
    unit's ``EnvironmentFile=``; nothing else tells the service where things are.
    The inherited helpers (``drop``, ``batch_states``, ``agent_runs``,
    ``wait_for``, ``request``) observe it from outside.
    """

    def __init__(self, manager: UserManager, config: str = "") -> None:
        self.manager = manager
        home = manager.home
        super().__init__(home / ".config" / "batchd", "asyncio", config=config)
        self.spool = home / ".local" / "share" / "batchd" / "spool"
        self.state = home / ".local" / "state" / "batchd"
        self.socket = manager.runtime / "batchd" / "batchd.sock"
        self.agent_log = home / "agent.jsonl"
        self.stderr_path = manager.log
        self.environment = self.root / "environment"
        self.write_environment()

    def write_environment(self, **extra: str) -> None:
        """The unit's EnvironmentFile (KEY=value lines, 0600)."""
        lines = {"FAKE_AGENT_LOG": str(self.agent_log), "PYTHONUNBUFFERED": "1", **extra}
        fd = os.open(self.environment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in lines.items())

    def run_batchd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """This venv's ``batchd ARGS`` as the user would run it (the manager's environment)."""
        return subprocess.run(
            [str(VENV_BATCHD), *args],
            env=self.manager.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``batchd install-service ARGS``; it must succeed."""
        done = self.run_batchd("install-service", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def batchctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """This venv's batchctl with only the manager's environment (default paths)."""
        return subprocess.run(
            [str(VENV_BATCHD.parent / "batchctl"), *args],
            env=self.manager.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def main_pid(self) -> int:
        return int(self.manager.show("batchd.service", "MainPID")["MainPID"])

    def starts(self, index: int | None = None) -> list[dict[str, Any]]:
        """The fake agent's start records (of one feature index, given one)."""
        return [
            r
            for r in self.agent_runs()
            if r["event"] == "start" and (index is None or r["index"] == str(index))
        ]
