"""Runs outlive a restart of batchd under the real systemd user manager (SPEC 9, 16).

The unit is the one ``batchd install-service`` writes, as installed: it must
let runners outlive the daemon's process (``KillMode=process``) and start
batchd again after it exits 75 (``RestartForceExitStatus=75``). A test is
skipped, saying which directive is missing, only when the unit lacks them.
``RestartSec=5`` makes each restart take ~6 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import alive
from tests.systemd_manager import Service, UserManager, skip_reason, user_manager
from tests.test_outlive import set_runner_keys

UNIT = "batchd.service"
NEEDED = ("KillMode=process", "RestartForceExitStatus=75")

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[UserManager]:
    """A private, running systemd --user; gone (with everything it started) after the test."""
    with user_manager(tmp_path) as m:
        yield m


def start_service(manager: UserManager, on_stop: str | None = None) -> Service:
    """Units installed (skipped if the unit cannot let runners outlive batchd), started."""
    service = Service(manager)
    if on_stop is not None:
        set_runner_keys(service, on_stop=on_stop)
    service.install()
    unit = (manager.unit_dir / UNIT).read_text()
    missing = [d for d in NEEDED if d not in unit.splitlines()]
    if missing:
        pytest.skip(f"the unit `batchd install-service` writes lacks {', '.join(missing)}")
    manager.systemctl("enable", "--now", UNIT)
    manager.wait_show(UNIT, ActiveState="active", SubState="running")
    return service


def long_run(service: Service, go: Path) -> int:
    """Drop a feature that runs until ``go`` exists, then one more; the runner's pid once
    its attempt is recorded."""
    service.drop("r.txt", [f"long wait={go}", "next"])
    service.wait_for(lambda: service.starts(0), what="the long feature's start")
    running = service.wait_for(
        lambda: [r["pid"] for r in service.status()["running"] if r["pid"]], what="its record"
    )
    return int(running[0])


def finishes_once(service: Service, go: Path) -> None:
    """After ``go``: both features completed, the long one started once, nothing interrupted."""
    go.touch()
    (state,) = service.wait_finished(1)
    assert [h["outcome"] for h in state["processing_history"]] == ["completed", "completed"]
    assert len(service.starts(0)) == 1 and len(service.starts(1)) == 1


def test_batchctl_restart_leaves_the_runner_and_systemd_starts_batchd_again(
    manager: UserManager,
) -> None:
    """`batchctl restart` under systemd: batchd exits 75, systemd starts it again (a new main
    pid), the runner runs on in the unit all the while and is recorded once."""
    service = start_service(manager)
    first_pid = service.main_pid()
    go = manager.home / "go"
    runner = long_run(service, go)
    done = service.batchctl("restart", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started again by systemd" in done.stdout
    manager.wait_show(UNIT, NRestarts="1", ActiveState="active")
    assert service.main_pid() != first_pid
    assert manager.run_ends(UNIT) == [("success", "exited", "75")]
    assert alive(runner) and runner in manager.unit_pids(UNIT)
    service.wait_for(lambda: service.status()["running"][0]["pid"] == runner, what="followed")
    finishes_once(service, go)


def test_systemctl_restart_with_on_stop_leave_keeps_the_runner(manager: UserManager) -> None:
    """runner.on_stop = "leave": `systemctl --user restart batchd` leaves the runner running
    and the new batchd follows it to its end."""
    service = start_service(manager, on_stop="leave")
    go = manager.home / "go"
    runner = long_run(service, go)
    manager.systemctl("restart", UNIT)
    manager.wait_show(UNIT, ActiveState="active", SubState="running")
    assert alive(runner)
    service.wait_for(lambda: service.status()["running"][0]["pid"] == runner, what="followed")
    finishes_once(service, go)


def test_kill9_of_batchd_leaves_the_runner_to_the_next_batchd(manager: UserManager) -> None:
    """SIGKILL of batchd's main pid: systemd restarts it (Restart=on-failure) and kills
    nothing else; the new batchd follows the runner to its end, recorded once."""
    service = start_service(manager)
    first_pid = service.main_pid()
    go = manager.home / "go"
    runner = long_run(service, go)
    manager.systemctl("kill", "-s", "KILL", "--kill-whom=main", UNIT)
    manager.wait_show(UNIT, timeout=60, NRestarts="1", ActiveState="active")
    assert service.main_pid() != first_pid and alive(runner)
    service.wait_for(lambda: service.status()["running"][0]["pid"] == runner, what="followed")
    finishes_once(service, go)
