"""A private single-node Slurm cluster in a temp dir, for the Slurm engine's tests.

``start_cluster()`` starts munged, slurmctld and slurmd with everything they
write (key, sockets, state, spool, pid files, logs) inside one temp dir and
their own free ports, waits until ``sinfo`` says the node is idle, and
``Cluster.stop()`` ends all three and removes the dir. Nothing outside the
temp dir is written, and no name needs to resolve (every address is 127.0.0.1).

What munge and Slurm refuse, found by trying (munge 0.5.15, Slurm 22.05):
- munged wants execute permission for everyone on every directory above its
  socket ("Socket is inaccessible: execute permissions for all required");
  ``--force`` would override it, but then other users (the test's job of
  another user) could not reach the socket. So the temp dir and the munge dir
  are 0711: traversable, not listable. The key stays 0400 root (munged refuses
  a key readable by others).
- slurm.conf must be readable by every client, including another user's
  ``sbatch``: 0644 in the 0711 dir. The spool dir is 0711 too: a job runs
  its script from there as the job's user (0700 fails another user's job with
  "execve(): .../slurm_script: Permission denied").
- ``MinJobAge=1`` is raised to 2 ("MinJobAge must be at least 2" in the
  slurmctld log); 0 means never purge. slurmctld purges ended jobs every
  max(10, MinJobAge) seconds, so with 2 a job is forgotten 2 to 12 s after it
  ends (measured: 7 s after the end, purge at 10 s after slurmctld's start; 5
  gave the same, 12 gave 21 s, 20 gave 37 s).
- ``batch_sched_delay`` (default 3 s) holds a submitted batch job before the
  scheduler looks at it: submit-to-start took 3.0 s (median of 10) with the
  default and 1.0 s with 0, the rest being slurmctld's one-second background
  loop. 0 here keeps the tests quick; a real cluster keeps its own setting.
- Preemption, for the test of a ``PREEMPTED`` job: a second partition
  ``urgent`` (``PriorityTier=2``) over the same node, with
  ``PreemptType=preempt/partition_prio`` and ``PreemptMode=CANCEL``: an
  ``--exclusive`` job there ends every job of ``debug`` on the node, which
  Slurm then records as ``JobState=PREEMPTED`` (the program gets TERM first).
- Daemons run in the foreground (``-D``, ``--foreground``) as our children, so
  that we know their pids and reap them; a job's slurmstepd outlives slurmd, so
  ``stop()`` cancels every job before it stops the daemons.

Run ``python -m tests.slurm_cluster`` as root to start one by hand and print
its environment; Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MIN_JOB_AGE = 2  # seconds: the smallest that Slurm 22.05 accepts; see the module docstring
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
START_DEADLINE = 60.0
STOP_DEADLINE = 15.0


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "a private Slurm cluster needs root (slurmd must switch to the job's user)"
    missing = [b for b in BINARIES if shutil.which(b, path=_search_path()) is None]
    if missing:
        return f"missing {', '.join(missing)}: install slurm-wlm and munge (.ci/run does as root)"
    return None


def _search_path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _which(name: str) -> str:
    found = shutil.which(name, path=_search_path())
    assert found is not None, name
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Cluster:
    """A running cluster: ``env`` is what every Slurm client needs (``SLURM_CONF``, ...)."""

    dir: Path
    env: dict[str, str]
    conf: Path
    node: str
    started_in: float = 0.0
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_daemon(self, *argv: str) -> None:
        """Start one daemon in the foreground, as our child, so that we reap it."""
        name = Path(argv[0]).name
        with open(self.dir / "log" / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append(proc)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=30
        )

    def log(self, name: str) -> str:
        path = self.dir / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def job_ids(self) -> list[str]:
        """Every job still pending or running, of any user."""
        out = self.run("squeue", "-h", "-o", "%i", check=False)
        return out.stdout.split() if out.returncode == 0 else []

    def stop(self) -> None:
        """Cancel every job, end the daemons (TERM, then KILL), remove the temp dir.

        Jobs first: a job's slurmstepd outlives slurmd, so stopping the daemons
        alone would leave the job's processes behind.
        """
        if all(p.poll() is None for p in self.daemons[:3]) and self.job_ids():
            self.run("scancel", "--signal=KILL", "--full", *self.job_ids(), check=False)
            _wait_until(lambda: not self.job_ids(), STOP_DEADLINE)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.daemons):
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_until(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _slurm_conf(root: Path, node: str, ports: list[int], munge_socket: Path) -> str:
    return f"""\
ClusterName=batchdtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=2
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes={node} MaxTime=INFINITE State=UP PriorityTier=2
"""


def _make_dirs() -> Path:
    """The temp dir and its parts, each with the mode munge and Slurm accept (see above)."""
    root = Path(tempfile.mkdtemp(prefix="batchd-slurm-"))
    os.chmod(root, 0o711)
    for sub, mode in (
        ("munge", 0o711),
        ("state", 0o700),
        ("spool", 0o711),
        ("run", 0o700),
        ("log", 0o700),
    ):
        (root / sub).mkdir(mode=mode)
        os.chmod(root / sub, mode)
    return root


def _start_munged(cluster: Cluster, munge: Path) -> None:
    cluster.start_daemon(
        _which("munged"),
        "--foreground",
        f"--key-file={munge / 'key'}",
        f"--socket={munge / 'sock'}",
        f"--pid-file={munge / 'pid'}",
        f"--log-file={munge / 'log'}",
        f"--seed-file={munge / 'seed'}",
    )
    if not _wait_until(lambda: (munge / "sock").exists(), START_DEADLINE):
        raise RuntimeError(f"munged did not create its socket: {cluster.log('munged.out')}")


def start_cluster() -> Cluster:
    """Start a private cluster; the caller must ``stop()`` it. Raises if it does not come up."""
    t0 = time.monotonic()
    root = _make_dirs()
    munge = root / "munge"
    _write(munge / "key", os.urandom(1024), 0o400)
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    _write(conf, _slurm_conf(root, node, _free_ports(2), munge / "sock").encode(), 0o644)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": _search_path()}
    cluster = Cluster(dir=root, env=env, conf=conf, node=node)
    try:
        _start_munged(cluster, munge)
        cluster.start_daemon(_which("slurmctld"), "-D", "-f", str(conf))
        cluster.start_daemon(_which("slurmd"), "-D", "-f", str(conf))
        _wait_idle(cluster)
    except BaseException:
        cluster.stop()
        raise
    cluster.started_in = time.monotonic() - t0
    return cluster


def _wait_idle(cluster: Cluster) -> None:
    deadline = time.monotonic() + START_DEADLINE
    last = ""
    while time.monotonic() < deadline:
        out = cluster.run("sinfo", "-h", "-o", "%T", check=False)
        last = (out.stdout + out.stderr).strip()
        if out.returncode == 0 and last == "idle":
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"the private Slurm cluster in {cluster.dir} is not idle after {START_DEADLINE:.0f} s "
        f"(sinfo said {last!r}); slurmctld log:\n{cluster.log('slurmctld.log')[-2000:]}\n"
        f"slurmd log:\n{cluster.log('slurmd.log')[-2000:]}"
    )


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One private cluster for the whole session; tests that use it skip where it cannot run."""
    why = unavailable()
    if why:
        plugins = request.config.pluginmanager
        reporter, capture = (
            plugins.get_plugin("terminalreporter"),
            plugins.get_plugin("capturemanager"),
        )
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\nskipping the Slurm cluster tests: {why}")
        pytest.skip(why)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _main() -> None:
    why = unavailable()
    if why:
        raise SystemExit(why)
    cluster = start_cluster()
    print(f"started in {cluster.started_in:.2f} s; export SLURM_CONF={cluster.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: None)  # interrupts pause(); then we stop
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    _main()
