"""The daemon with runner.engine = "slurm" against a real private Slurm cluster (SPEC 12).

A real slurmctld, slurmd and munged (tests/slurm_cluster.py), the real batchd
daemon, the fake agent as the program the jobs run. Skipped, with the reason
printed, where the cluster cannot run (not root, no slurm-wlm); CI runs them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon
from tests.slurm_cluster import Cluster

MakeDaemon = Callable[..., Daemon]


@pytest.fixture
def slurm(slurm_cluster: Cluster, make_daemon: MakeDaemon) -> Iterator[Callable[..., Daemon]]:
    """Build daemons that run their attempts as jobs on the private cluster."""

    def make(config: str = "", slots: int = 1, **kw: Any) -> Daemon:
        text = f"[queue]\nslots = {slots}\n[slurm]\npoll_interval = 0.5\n" + config
        d = make_daemon(config=text, env={**slurm_cluster.env, **kw.pop("env", {})}, **kw)
        cfg = d.config_path.read_text().replace("[runner]\n", '[runner]\nengine = "slurm"\n', 1)
        d.config_path.write_text(cfg)
        return d

    yield make


def jobs(cluster: Cluster) -> dict[str, str]:
    """Job id -> state of every job still known to squeue."""
    out = cluster.run("squeue", "-h", "-o", "%i|%T", check=False).stdout
    return dict(line.split("|", 1) for line in out.split())


def starts(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.agent_runs() if r["event"] == "start"]


def test_features_of_several_batches_run_as_concurrent_jobs(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """Three slots, three batches in three cwds: their features run as jobs at the same time
    (they meet at a barrier), status shows each job id and Slurm state, and a feature with
    $(...) and quotes reaches the agent as one untouched argument."""
    d = slurm(slots=3)
    gate = d.root / "gate"
    gate.mkdir()
    d.start()
    marker = d.root / "pwned"
    go = d.root / "go"  # past the barrier, the three keep running until the test has looked
    nasty = f"""x barrier={gate}:3 wait={go} $(touch {marker}) `touch {marker}` "q" 'r'"""
    for i in range(3):
        repo = d.root / f"repo{i}"
        repo.mkdir()
        d.drop(f"{i}.txt", [f"# batchd: cwd = {repo}", nasty + f" #{i}", f"second{i}"])
    running = d.wait_for(
        lambda: (
            (r := d.status()["running"])
            and len(r) == 3
            and all(x["job_state"] == "RUNNING" for x in r)
            and r
        ),
        what="three jobs running",
    )
    assert all(x["job_id"] for x in running) and len({x["job_id"] for x in running}) == 3
    go.touch()
    states = d.wait_finished(3, timeout=90)
    assert [s["status"] for s in states] == ["completed"] * 3
    firsts = [r for r in starts(d) if r["feature"].startswith("x barrier")]
    assert len(firsts) == 3 and all(r["argv"] == [r["feature"]] for r in firsts)
    assert {r["cwd"] for r in firsts} == {str(d.root / f"repo{i}") for i in range(3)}
    assert not marker.exists()
    for s in states:
        assert all(h["job_id"] for h in s["processing_history"])


def test_kill_9_leaves_jobs_running_and_the_restart_reattaches(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """kill -9 of the daemon mid-job: the job keeps running; the restart waits for it again
    (no second run, no new attempt) and records its outcome."""
    d = slurm()
    go = d.root / "go"
    d.start()
    long = f"long wait={go}"  # runs until the restart has found it
    d.drop("k.txt", [long, "next"])
    [item] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_state"] == "RUNNING"],
        what="job running",
    )
    d.kill9()
    assert jobs(slurm_cluster).get(item["job_id"]) == "RUNNING"
    d.start()
    assert "outlived the daemon (now RUNNING); following it" in d.stderr()
    go.touch()
    [state] = d.wait_finished(1, timeout=60)
    assert state["status"] == "completed"
    assert [(h["attempt"], h["outcome"]) for h in state["processing_history"]] == [
        (1, "completed"),
        (1, "completed"),
    ]
    assert state["processing_history"][0]["job_id"] == item["job_id"]
    assert Counter(r["feature"] for r in starts(d)) == {long: 1, "next": 1}


def test_a_job_that_ended_while_the_daemon_was_down_is_judged(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """The daemon is killed; its job fails (exit 3) meanwhile; the restart records that
    failure from the job (permanent, exit code 3), not an interruption, and moves on."""
    d = slurm()
    go = d.root / "go"
    d.start()
    quick = f"quick wait={go} exit=3 stderr=TypeError:_boom"  # ends once the daemon is down
    d.drop("e.txt", [quick, "after"])
    [item] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_id"]], what="job submitted"
    )
    d.kill9()
    go.touch()
    d.wait_for(lambda: item["job_id"] not in jobs(slurm_cluster), timeout=60, what="job ended")
    d.start()
    [state] = d.wait_finished(1, timeout=60)
    first = state["processing_history"][0]
    assert (first["outcome"], first["exit_code"], first["failure_type"]) == (
        "failed",
        3,
        "permanent",
    )
    assert "TypeError" in first["error_message"]
    assert Counter(r["feature"] for r in starts(d))[quick] == 1


def test_a_job_slurm_has_forgotten_is_judged_from_its_recorded_exit_status(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """The job ends and Slurm forgets it (past MinJobAge) while the daemon is down: the exit
    status the wrapper recorded beside the log decides (completed, not run again)."""
    d = slurm()
    go = d.root / "go"
    d.start()
    d.drop("f.txt", [f"gone wait={go}"])  # ends once the daemon is down
    [item] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_id"]], what="job submitted"
    )
    d.kill9()
    go.touch()

    def forgotten() -> bool:
        out = slurm_cluster.run("scontrol", "show", "job", item["job_id"], check=False)
        return out.returncode != 0 or "Invalid job id" in out.stdout + out.stderr

    d.wait_for(forgotten, timeout=60, what="Slurm to forget the job")
    d.start()
    [state] = d.wait_finished(1, timeout=60)
    assert [(h["outcome"], h["exit_code"]) for h in state["processing_history"]] == [
        ("completed", 0)
    ]
    assert len(starts(d)) == 1


def test_a_transient_failure_is_classified_from_the_job_log_and_retried(
    slurm: Callable[..., Daemon],
) -> None:
    """A job whose log says ConnectionError is a transient failure, retried as a new job."""
    d = slurm(
        config='[retry]\nbackoff_initial = 0.1\njitter = "none"\n',
        env={"BATCH_RETRY_ENABLED": "true"},
    )
    d.start()
    d.drop("t.txt", ["flaky fail_until=2"])
    [state] = d.wait_finished(1, timeout=60)
    hist = state["processing_history"]
    assert [(h["attempt"], h["outcome"], h["failure_type"]) for h in hist] == [
        (1, "failed", "transient"),
        (2, "completed", None),
    ]
    assert "ConnectionError" in hist[0]["error_message"]
    assert hist[0]["job_id"] != hist[1]["job_id"]


def test_timeout_and_cancel_remove_the_job(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """Cancelling a batch removes its running job from the cluster; a job past
    runner.timeout is cancelled and recorded timed_out."""
    d = slurm()
    d.start()
    # First the cancel, under the 60 s timeout: its job cannot time out before the test acts.
    d.drop("cancel.txt", ["doomed sleep=120"])
    [doomed] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_id"]], what="the doomed job"
    )
    d.ok("cancel", batch_id=doomed["batch_id"])
    assert doomed["job_id"] not in jobs(slurm_cluster)
    assert d.stop() == 0
    text = d.config_path.read_text().replace("timeout = 60", "timeout = 3")
    d.config_path.write_text(text)
    d.start()
    d.drop("slow.txt", ["slow sleep=120"])
    cancelled, slow = d.wait_finished(2, timeout=60)
    assert (cancelled["status"], slow["features_file"]) == ("cancelled", "slow.txt")
    attempt = slow["processing_history"][0]
    assert attempt["outcome"] == "timed_out"
    d.wait_for(lambda: attempt["job_id"] not in jobs(slurm_cluster), what="timed-out job gone")


def test_a_bad_partition_pauses_the_queue_naming_sbatch(slurm: Callable[..., Daemon]) -> None:
    """sbatch refusing the job (a partition that does not exist) pauses the queue with a
    reason that names sbatch and the fix; no attempt is charged."""
    d = slurm(config='sbatch_args = ["--partition=nosuchpartition"]\n')
    d.start()
    d.drop("p.txt", ["never"])
    st = d.wait_for(lambda: (s := d.status())["queue_paused"] and s, what="queue paused")
    assert st["pause_reason"].startswith("submit_failed") and "sbatch" in st["pause_reason"]
    assert "slurm.sbatch_args" in st["pause_reason"]
    [state] = d.batch_states()
    assert state["processing_history"] == [] and starts(d) == []


def test_a_submit_failed_pause_is_lifted_at_start(slurm: Callable[..., Daemon]) -> None:
    """After sbatch refused the job and the partition is fixed, a restart alone (no reload,
    no resume) lifts the submit_failed pause, on disk too, and the batch runs."""
    d = slurm(config='sbatch_args = ["--partition=nosuchpartition"]\n')
    d.start()
    d.drop("p.txt", ["fixed later"])
    d.wait_for(lambda: d.status()["queue_paused"], what="queue paused")
    d.stop()
    fixed = d.config_path.read_text().replace('["--partition=nosuchpartition"]', "[]")
    d.config_path.write_text(fixed)
    d.start()
    st = d.status()
    assert (st["queue_paused"], st["pause_reason"]) == (False, None)
    saved = json.loads((d.state / "daemon.json").read_bytes())
    assert (saved["queue_paused"], saved["pause_reason"]) == (False, None)
    [state] = d.wait_finished(1, timeout=60)
    assert state["status"] == "completed"


def test_status_show_and_watch_carry_the_job(slurm: Callable[..., Daemon], tmp_path: Path) -> None:
    """While a job runs, status, show and watch carry its job id and Slurm state, in the
    replies and in batchctl's words."""
    d = slurm()
    go = d.root / "go"
    d.start()
    d.drop("w.txt", [f"watched wait={go}"])  # runs until the test has looked
    [item] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_state"] == "RUNNING"],
        what="running job",
    )
    shown = d.ok("show", batch_id=item["batch_id"])
    assert shown["state"]["processing_history"][-1]["job_id"] == item["job_id"]
    assert shown["feature_states"][0] == "running"
    assert shown["running"]["job_id"] == item["job_id"]
    for command in ("status", "show"):
        out = d.ctl(command, *([] if command == "status" else ["last"])).stdout
        assert f"job {item['job_id']} RUNNING" in out, out
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(d.socket))
        s.sendall(b'{"v": 1, "id": 1, "cmd": "watch"}\n')
        event = json.loads(s.makefile().readline())["event"]
    [running] = event["status"]["running"]
    assert running["job_id"] == item["job_id"] and running["job_state"] == "RUNNING"
    go.touch()
    assert d.wait_finished(1, timeout=60)[0]["status"] == "completed"


def test_a_daemon_stop_leaves_the_job_running(
    slurm: Callable[..., Daemon], slurm_cluster: Cluster
) -> None:
    """SIGTERM (systemctl stop, a reboot of the daemon's machine) does not cancel the job:
    the daemon exits 0 with the attempt still open, and the next start waits for the same
    job; the feature runs once."""
    d = slurm()
    d.start()
    go = d.root / "go"
    kept = f"kept wait={go}"  # runs until the restart has found it
    d.drop("s.txt", [kept])
    [item] = d.wait_for(
        lambda: [x for x in d.status()["running"] if x["job_state"] == "RUNNING"],
        what="running job",
    )
    assert d.stop() == 0
    assert jobs(slurm_cluster).get(item["job_id"]) == "RUNNING"
    [state] = d.batch_states()
    assert [(h["outcome"], h["job_id"]) for h in state["processing_history"]] == [
        (None, item["job_id"])
    ]
    d.start()
    go.touch()
    [state] = d.wait_finished(1, timeout=60)
    assert [(h["outcome"], h["job_id"]) for h in state["processing_history"]] == [
        ("completed", item["job_id"])
    ]
    assert len(starts(d)) == 1
