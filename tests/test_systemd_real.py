"""batchd under a real systemd user manager: the installed units, as systemd runs them.

Each test starts its own private ``systemd --user`` (tests/systemd_manager.py;
~0.2 s), installs the units with this checkout's ``batchd install-service`` and
drives them with ``systemctl --user`` only. Observations come from ``systemctl
show``, batchctl, the state files and the fake agent's log. The unit is used as
installed: ``RestartSec=5`` makes the restart tests take ~6 s each.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchd.exitcodes import EXIT_RESTART
from tests.harness import FAKE_AGENT, agent_command, comm
from tests.systemd_manager import VENV_BATCHD, Service, UserManager, skip_reason, user_manager

UNIT = "batchd.service"

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[UserManager]:
    """A private, running systemd --user; gone (with everything it started) after the test."""
    with user_manager(tmp_path) as m:
        yield m


def start_service(manager: UserManager, config: str = "") -> Service:
    """Config written, units installed, ``enable --now batchd.service``, READY reached."""
    service = Service(manager, config)
    service.install()
    manager.systemctl("enable", "--now", UNIT)
    manager.wait_show(UNIT, ActiveState="active", SubState="running")
    return service


# The fake agent, after leaving a process of its own behind: in a new session (out of the
# runner's process group) and without BATCHD_RUN_ID, so that neither batchd's stop of the
# group nor its search for orphaned runs can find it; only the unit's cgroup still holds it.
ESCAPING_RUNNER = """#!/bin/sh
setsid sh -c 'echo $$ >> "$ESCAPEES"; exec env -u BATCHD_RUN_ID sleep 600' \\
  </dev/null >/dev/null 2>&1 &
exec {python} {agent} "$@"
"""

# A stand-in for `batchctl restart` until it exists: SIGUSR2 makes the real batchd (this file
# is its sitecustomize, through PYTHONPATH in the unit's EnvironmentFile) exit with the status
# batchd exits with when it leaves its runners and asks to be started again.
RESTART_EXIT = """import os, signal
signal.signal(signal.SIGUSR2, lambda *_: os._exit({status}))
"""


def escaping_service(manager: UserManager) -> Service:
    """Units installed for a batchd whose runner leaves an escapee (pids in $HOME/escapees)
    and that exits EXIT_RESTART on SIGUSR2; started, READY reached."""
    runner = manager.home / "escaping-runner"
    runner.write_text(ESCAPING_RUNNER.format(python=sys.executable, agent=FAKE_AGENT))
    runner.chmod(0o755)
    site = manager.home / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RESTART_EXIT.format(status=EXIT_RESTART))
    service = Service(manager)
    service.write_config([str(runner), "{feature}"])
    service.write_environment(ESCAPEES=str(manager.home / "escapees"), PYTHONPATH=str(site))
    service.install()
    manager.systemctl("enable", "--now", UNIT)
    manager.wait_show(UNIT, ActiveState="active", SubState="running")
    return service


def escapees(service: Service, count: int) -> list[int]:
    """Wait until ``count`` escapees wrote their pid; their pids."""
    path = service.manager.home / "escapees"

    def written() -> list[int] | None:
        pids = [int(p) for p in path.read_text().split()] if path.exists() else []
        return pids if len(pids) >= count else None

    found: list[int] = service.wait_for(written, what=f"{count} escapee pids in {path}")
    return found


def wait_restarted_once(manager: UserManager, old_pid: int) -> None:
    """Wait (RestartSec=5 and more) until systemd restarted batchd once and it is READY again."""
    manager.wait_show(
        UNIT,
        timeout=60,
        NRestarts="1",
        ActiveState="active",
        MainPID=lambda p: p not in ("0", str(old_pid)),
    )


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def history(service: Service, index: int) -> list[str | None]:
    """The recorded outcomes of one feature of the first batch, attempt by attempt."""
    state = service.batch_states()[0]
    return [h["outcome"] for h in state["processing_history"] if h["feature_index"] == index]


def ends(service: Service, index: int) -> list[dict[str, Any]]:
    """The fake agent's end records of one feature index."""
    return [r for r in service.agent_runs() if r["event"] == "end" and r["index"] == str(index)]


def test_enable_now_is_ready_and_runs_a_batch(manager: UserManager) -> None:
    """install-service + enable --now: READY with batchd's status; a dropped file completes."""
    service = Service(manager)
    printed = service.install().stdout
    assert "systemctl --user enable --now batchd.service" in printed
    unit = (manager.unit_dir / UNIT).read_text()
    assert re.findall(r"^ExecStart=(.*)$", unit, re.M) == [f"{VENV_BATCHD.resolve()} run"]
    manager.systemctl("enable", "--now", UNIT)
    manager.wait_show(UNIT, ActiveState="active", SubState="running", StatusText=bool)
    pid = service.status()["daemon"]["pid"]
    assert int(manager.show(UNIT, "MainPID")["MainPID"]) == pid
    service.drop("a.txt", ["one", "two"])
    (state,) = service.wait_finished(1)
    assert state["status"] == "completed" and state["completed_features"] == [0, 1]
    listing = service.batchctl("status")
    assert listing.returncode == 0 and f"pid {pid}" in listing.stdout
    assert state["batch_id"] in listing.stdout


def test_kill9_of_main_pid_restarts_and_resumes(manager: UserManager) -> None:
    """SIGKILL of the main pid: systemd kills nothing else and restarts batchd, which follows
    the feature that was running (SPEC 16): it runs once, nothing runs twice."""
    service = start_service(manager)
    first_pid = service.main_pid()
    go = manager.home / "go"  # the long feature runs until its rerun has started
    service.drop("k.txt", ["first", f"long wait={go}", "last"])
    (cut,) = service.wait_for(lambda: service.starts(1), what="the long feature's start")
    manager.systemctl("kill", "-s", "KILL", "--kill-whom=main", UNIT)
    # Until systemd starts batchd again (RestartSec=5), the runner outlives it (KillMode=process).
    manager.wait_show(UNIT, SubState="auto-restart")
    assert alive(int(cut["pid"])) and int(cut["pid"]) in manager.unit_pids(UNIT)
    wait_restarted_once(manager, first_pid)
    assert manager.run_ends(UNIT) == [("signal", "killed", "KILL")]
    service.wait_for(
        lambda: "outlived the daemon" in service.stderr(), what="the run followed again"
    )
    go.touch()
    (state,) = service.wait_finished(1)
    assert state["status"] == "completed" and state["completed_features"] == [0, 1, 2]
    assert history(service, 1) == ["completed"]
    assert [len(service.starts(i)) for i in range(3)] == [1, 1, 1]
    assert [len(ends(service, i)) for i in range(3)] == [1, 1, 1]
    assert cut["pid"] in [r["pid"] for r in ends(service, 1)]
    assert not alive(int(cut["pid"])) and int(cut["pid"]) not in manager.unit_pids(UNIT)
    # batchd and the keeper of its local runs (SPEC 16), nothing else.
    others = [p for p in manager.unit_pids(UNIT) if comm(p) != "batchd-keeper"]
    assert others == [service.main_pid()]


def test_bad_config_exits_78_and_is_not_restarted(manager: UserManager) -> None:
    """An unknown config key: batchd exits 78, the start fails, and systemd does not restart it."""
    service = Service(manager, "[retry]\nno_such_key = 1\n")
    service.install()
    started = manager.systemctl("start", UNIT, check=False)
    assert started.returncode != 0
    shown = manager.wait_show(UNIT, ActiveState="failed")
    assert shown["ActiveState"] == "failed"  # a pending restart would be activating/auto-restart
    final = manager.show(UNIT, "SubState", "Result", "ExecMainStatus", "NRestarts")
    assert final == {
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    assert manager.run_ends(UNIT) == [("exit-code", "exited", "78")]
    log = service.stderr()
    assert "retry.no_such_key" in log and str(service.config_path) in log
    assert log.count("bad configuration") == 1


def test_watchdog_kills_and_restarts_a_stopped_daemon(manager: UserManager) -> None:
    """WatchdogSec=2 and a SIGSTOPped batchd: systemd kills it (Result=watchdog) and restarts it."""
    dropin = manager.unit_dir / f"{UNIT}.d"
    dropin.mkdir(parents=True)
    (dropin / "watchdog.conf").write_text("[Service]\nWatchdogSec=2\n")
    service = start_service(manager)
    assert manager.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "2s"
    ping = manager.show(UNIT, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    manager.wait_show(UNIT, WatchdogTimestampMonotonic=lambda t: t != ping)  # pings arrive
    frozen = service.main_pid()
    try:
        os.kill(frozen, signal.SIGSTOP)
        wait_restarted_once(manager, frozen)
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGCONT)
    assert not alive(frozen)
    ((result, _code, sig),) = manager.run_ends(UNIT)  # "killed" or "dumped" (a core)
    assert (result, sig) == ("watchdog", "ABRT")  # WatchdogSignal=, then SIGCONT
    assert service.request("ping")["ok"]


def test_socket_activation_starts_the_service_on_first_batchctl(manager: UserManager) -> None:
    """With only batchd.socket started, `batchctl status` starts batchd, which answers it."""
    service = Service(manager)
    service.install("--socket-activation")
    manager.systemctl("enable", "batchd.socket")
    manager.systemctl("start", "batchd.socket")
    manager.wait_show("batchd.socket", ActiveState="active", SubState="listening")
    assert manager.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert (
        service.socket.stat().st_mode & 0o777,
        service.socket.parent.stat().st_mode & 0o777,
    ) == (
        0o600,
        0o700,
    )
    status = service.batchctl("status")
    assert status.returncode == 0, status.stderr
    shown = manager.wait_show(UNIT, ActiveState="active", MainPID=lambda p: p != "0")
    assert f"pid {shown['MainPID']}," in status.stdout
    assert "control socket inherited from systemd" in service.stderr()


def test_reload_applies_a_changed_config(manager: UserManager) -> None:
    """systemctl reload with a good new config: the next runner sees the new runner.env value."""
    service = start_service(manager, '[runner.env]\nSDTEST_MARK = "before-reload"\n')
    pid = service.main_pid()
    service.drop("a.txt", ["show stderr_env=SDTEST_MARK"])
    (first,) = service.wait_finished(1)
    service.write_config(agent_command(), '[runner.env]\nSDTEST_MARK = "after-reload"\n')
    manager.systemctl("reload", UNIT)
    manager.wait_show(UNIT, StatusText=lambda s: "reloaded" in s)
    service.drop("b.txt", ["show stderr_env=SDTEST_MARK"])
    _, second = service.wait_finished(2)
    logs = [service.batchctl("logs", s["batch_id"], "0").stdout for s in (first, second)]
    assert "before-reload" in logs[0] and "after-reload" in logs[1], logs
    assert "before-reload" not in logs[1]
    assert manager.show(UNIT, "ActiveState", "MainPID", "NRestarts") == {
        "ActiveState": "active",
        "MainPID": str(pid),
        "NRestarts": "0",
    }


def test_reload_with_a_bad_config_fails_and_keeps_the_old_one(manager: UserManager) -> None:
    """systemctl reload with an unknown key fails; batchd keeps running on the old config."""
    service = start_service(manager)
    pid = service.main_pid()
    service.write_config(agent_command(), "[retry]\nno_such_key = 1\n")
    reloaded = manager.systemctl("reload", UNIT, check=False)
    service.wait_for(lambda: "previous configuration is kept" in service.stderr(), what="log")
    assert manager.show(UNIT, "ActiveState", "MainPID") == {
        "ActiveState": "active",
        "MainPID": str(pid),
    }
    assert reloaded.returncode != 0


def test_install_service_with_config_runs_that_config(manager: UserManager) -> None:
    """`batchd --config PATH install-service`: the service runs with PATH's settings."""
    service = Service(manager)
    custom = manager.home / "custom.toml"
    state_dir = manager.home / "custom-state"
    custom.write_text(f'state_dir = "{state_dir}"\n' + service.config_path.read_text())
    service.config_path.unlink()
    done = service.run_batchd("--config", str(custom), "install-service")
    assert done.returncode == 0, done.stdout + done.stderr
    manager.systemctl("enable", "--now", UNIT)
    manager.wait_show(UNIT, ActiveState="active")
    assert service.status()["paths"]["state_dir"] == str(state_dir)


def test_socket_activation_listens_on_the_configured_socket(manager: UserManager) -> None:
    """With `socket = PATH` configured, the socket unit listens there and batchctl reaches it."""
    custom = manager.runtime / "custom.sock"
    service = Service(manager)
    service.config_path.write_text(f'socket = "{custom}"\n' + service.config_path.read_text())
    service.install("--socket-activation")
    manager.systemctl("enable", "batchd.socket")
    manager.systemctl("start", "batchd.socket")
    manager.wait_show("batchd.socket", ActiveState="active")
    status = service.batchctl("status")
    assert status.returncode == 0, status.stderr
    assert custom.is_socket()


def test_manager_leaves_no_process_behind(tmp_path: Path) -> None:
    """The fixture's teardown: after exit, nothing the manager started is left running."""
    with user_manager(tmp_path) as manager:
        service = start_service(manager)
        ready = tmp_path / "ready"  # touched by the agent once its grandchild is started
        service.drop("g.txt", [f"orphan grandchild=60 touch={ready} sleep=60"])
        service.wait_for(ready.exists, what="the agent and its grandchild started")
        started = manager.pids()
        assert len(started) >= 4  # manager, batchd, the agent, its grandchild
    assert manager.strays == [] and not any(alive(p) for p in started)


def test_stop_records_interrupted_and_ends_every_process_of_the_unit(
    manager: UserManager,
) -> None:
    """systemctl stop during a feature: batchd stops its runner (recorded interrupted) and exits
    0, and the stop sweep ends a process that left the runner's group and its marks."""
    service = escaping_service(manager)
    service.drop("s.txt", ["slow sleep=600"])
    (run,) = service.wait_for(lambda: service.starts(0), what="the feature's start")
    service.wait_for(lambda: history(service, 0) == [None], what="the attempt record")
    [escapee] = escapees(service, 1)
    assert {int(run["pid"]), escapee} <= set(manager.unit_pids(UNIT))
    manager.systemctl("stop", UNIT)  # returns when the unit is down (or TimeoutStopSec hit)
    assert manager.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    # Not "timeout" (TimeoutStopSec passed) nor "signal": batchd itself exited 0.
    assert manager.run_ends(UNIT) == [("success", "exited", "0")]
    assert history(service, 0) == ["interrupted"]
    assert [r["event"] for r in service.agent_runs() if r["pid"] == run["pid"]] == ["start", "term"]
    assert not alive(int(run["pid"])) and not alive(escapee)
    assert manager.proc is not None
    me = manager.proc.pid  # a killed process stays in its cgroup until it is reaped
    service.wait_for(lambda: manager.pids() == [me], what="the manager alone in its cgroups")


def test_restart_exit_status_restarts_batchd_and_leaves_the_runners(manager: UserManager) -> None:
    """batchd exiting EXIT_RESTART: systemd kills none of the unit's other processes, counts the
    exit as a success, starts batchd again; a later stop still ends them all."""
    service = escaping_service(manager)
    first_pid = service.main_pid()
    go = manager.home / "go"
    service.drop("r.txt", [f"long wait={go}"])
    (run,) = service.wait_for(lambda: service.starts(0), what="the feature's start")
    [escapee] = escapees(service, 1)
    manager.systemctl("kill", "-s", "USR2", "--kill-whom=main", UNIT)
    # Between the exit and the new start (RestartSec=5): batchd is gone, its runner is not.
    manager.wait_show(UNIT, SubState="auto-restart")
    assert not alive(first_pid) and alive(int(run["pid"])) and alive(escapee)
    assert manager.run_ends(UNIT) == [("success", "exited", str(EXIT_RESTART))]
    wait_restarted_once(manager, first_pid)
    assert alive(escapee) and escapee in manager.unit_pids(UNIT)
    # The new batchd follows the run the old one left (SPEC 16): the same runner, no rerun.
    service.wait_for(
        lambda: "outlived the daemon" in service.stderr(), what="the run followed again"
    )
    assert alive(int(run["pid"])) and len(service.starts(0)) == 1
    manager.systemctl("stop", UNIT)
    assert manager.run_ends(UNIT)[-1] == ("success", "exited", "0")
    assert history(service, 0) == ["interrupted"]
    assert not alive(escapee) and not alive(int(run["pid"]))
    assert manager.proc is not None
    me = manager.proc.pid  # a killed process stays in its cgroup until it is reaped
    service.wait_for(lambda: manager.pids() == [me], what="the manager alone in its cgroups")


def test_a_stop_before_the_restart_leaves_the_runners_to_systemctl_kill(
    manager: UserManager,
) -> None:
    """A stop between a restart exit and the new start runs no sweep (the runners live on, as
    docs/systemd.md says), and `systemctl --user kill --signal=KILL` then reaches them."""
    service = escaping_service(manager)
    service.drop("w.txt", ["slow sleep=600"])
    (run,) = service.wait_for(lambda: service.starts(0), what="the feature's start")
    [escapee] = escapees(service, 1)
    manager.systemctl("kill", "-s", "USR2", "--kill-whom=main", UNIT)
    manager.wait_show(UNIT, SubState="auto-restart")
    manager.systemctl("stop", UNIT)
    assert manager.show(UNIT, "ActiveState", "NRestarts") == {
        "ActiveState": "inactive",
        "NRestarts": "0",
    }
    left = {int(run["pid"]), escapee}
    assert all(alive(p) for p in left) and left <= set(manager.unit_pids(UNIT))
    manager.systemctl("kill", "--signal=KILL", UNIT)
    service.wait_for(lambda: not any(alive(p) for p in left), what="the runners' end")
    assert manager.proc is not None
    me = manager.proc.pid  # a killed process stays in its cgroup until it is reaped
    service.wait_for(lambda: manager.pids() == [me], what="the manager alone in its cgroups")
