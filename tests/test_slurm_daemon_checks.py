"""The daemon with runner.engine = "slurm" on a real private cluster: the check inside the
job (SPEC 14), an agent's usage limit (SPEC 13) and a stall (SPEC 13).

Real daemons on both backends, real jobs, real git repositories made by the tests. The
agents are fixed sh scripts or the fake agent (the feature text is only ever an
argument); the check reports the job it ran in, so the tests see it ran where the work
is. Skipped, with the reason printed, where the cluster cannot run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.harness import Daemon, toml_list
from tests.slurm_cluster import Cluster
from tests.test_checking import AGENT, FAST_RETRY, ON, check_script, make_repo, notes

MakeDaemon = Callable[..., Daemon]
POLL = "[slurm]\npoll_interval = 0.5\n"
# Claude Code's JSON result when the subscription's limit is reached (exit 1), verbatim.
LIMITED = {
    "type": "result",
    "subtype": "success",
    "is_error": True,
    "result": "You've hit your limit · resets 10pm (America/New_York)",
}


def on_slurm(
    make_daemon: MakeDaemon,
    cluster: Cluster,
    runner: list[str] | None,
    config: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Daemon:
    """A daemon whose attempts run as jobs on ``cluster`` (in ``cwd``, when given); its
    runner is ``runner``, else the fake agent."""
    d = make_daemon(runner=runner, config=POLL + config, env={**cluster.env, **(env or {})})
    text = d.config_path.read_text().replace("[runner]\n", '[runner]\nengine = "slurm"\n', 1)
    if cwd is not None:
        text = text.replace(f"cwd = {json.dumps(str(d.workdir))}", f"cwd = {json.dumps(str(cwd))}")
        d.workdir = cwd
    d.config_path.write_text(text)
    return d


def checking_on_slurm(
    make_daemon: MakeDaemon, cluster: Cluster, tmp_path: Path, extra: str
) -> Daemon:
    """The agent of tests/test_checking.py (it commits, and notes what it was fed back),
    run as jobs in a fresh repository, retries on."""
    (tmp_path / "notes").mkdir()
    repo = make_repo(tmp_path)
    runner = ["sh", "-c", AGENT, "agent", "{last_error}", "{feature}"]
    env = {**ON, "NOTES": str(tmp_path / "notes")}
    return on_slurm(make_daemon, cluster, runner, FAST_RETRY + extra, env, repo)


def started_with_check(
    make_daemon: MakeDaemon, cluster: Cluster, tmp_path: Path, body: str, feature: str
) -> Daemon:
    """``checking_on_slurm`` with the check ``sh -c BODY``, started, ``feature`` dropped."""
    check = toml_list(check_script(body))
    d = checking_on_slurm(make_daemon, cluster, tmp_path, f"[verify]\ncommand = {check}\n")
    d.start()
    d.drop("f.txt", [feature])
    return d


def test_a_check_that_fails_in_the_job_fails_the_attempt_and_one_that_passes_verifies(
    make_daemon: MakeDaemon, slurm_cluster: Cluster, tmp_path: Path
) -> None:
    """The check runs inside each attempt's job (it reports that job's id): failing, the
    attempt fails with its output in the message and the feedback file; the retry's check
    passes: completed, verified; the agent ran once per attempt, the check never in the
    daemon."""
    body = (
        'if [ -f ../passed ]; then echo "all good in $SLURM_JOB_ID"; '
        'else echo "FAIL: test_login in job $SLURM_JOB_ID"; touch ../passed; exit 1; fi'
    )
    d = started_with_check(make_daemon, slurm_cluster, tmp_path, body, "add login")
    [state] = d.wait_finished(1, timeout=90)
    first, second = state["processing_history"]
    assert (first["outcome"], first["failure_type"], first["verified"]) == (
        "failed",
        "transient",
        False,
    )
    said = f"FAIL: test_login in job {first['job_id']}"
    assert first["error_message"] == f"verify failed (exit 1): {said}"
    assert first["verify"]["exit_code"] == 1 and first["git"]["commits"] == 1
    assert (second["outcome"], second["verified"], second["verify"]["output_tail"]) == (
        "completed",
        True,
        f"all good in {second['job_id']}",
    )
    assert state["status"] == "completed"
    assert notes(tmp_path, "agent-runs") == "agent 0/1\nagent 0/2\n"
    assert notes(tmp_path, "arg-0-2") == first["error_message"]
    assert said in notes(tmp_path, "file-0-2")
    assert "checking:" not in d.stderr()  # the daemon ran no check itself


def test_require_change_is_decided_in_the_daemon_before_the_jobs_check(
    make_daemon: MakeDaemon, slurm_cluster: Cluster, tmp_path: Path
) -> None:
    """verify.require_change on Slurm: git evidence read from the shared cwd says the agent
    changed nothing: failed, permanent, whatever the check in the job said."""
    d = checking_on_slurm(
        make_daemon,
        slurm_cluster,
        tmp_path,
        '[verify]\ncommand = ["true"]\nrequire_change = true\n',
    )
    d.start()
    d.drop("f.txt", ["idle nochange"])
    [state] = d.wait_finished(1, timeout=90)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"], attempt["error_message"]) == (
        "failed",
        "permanent",
        "the agent changed nothing",
    )
    assert attempt["verified"] is False and attempt["git"]["commits"] == 0


def test_a_limited_job_starts_the_profiles_wait(
    make_daemon: MakeDaemon, slurm_cluster: Cluster, tmp_path: Path
) -> None:
    """A job whose log holds Claude's limit result (exit 1): the attempt is limited, the
    profile waits until 22:00 New York time plus the margin (status says so), nothing is
    charged; with retries off, `limit --clear` lets the same attempt run again and complete."""
    result = tmp_path / "limited.json"
    result.write_text(json.dumps(LIMITED, ensure_ascii=False) + "\n")
    once = tmp_path / "limited-once"
    script = 'if [ -f "$1" ]; then echo done; exit 0; fi; touch "$1"; cat "$0"; exit 1'
    d = on_slurm(make_daemon, slurm_cluster, ["sh", "-c", script, str(result), str(once)])
    d.start()
    d.drop("l.txt", ["feature"])
    st = d.wait_for(lambda: (s := d.status())["limit_waits"] and s, timeout=60, what="a wait")
    [wait] = st["limit_waits"]
    assert wait["runner"] == "default" and "hit your limit" in wait["message"]
    until = datetime.fromisoformat(wait["until"]).astimezone(ZoneInfo("America/New_York"))
    assert (until.hour, until.minute) == (22, 2)  # the reset plus limits.reset_margin (120 s)
    [item] = st["batches"]
    assert (item["limit_until"], item["consecutive_failures"], item["status"]) == (
        wait["until"],
        0,
        "in_progress",
    )
    [state] = d.batch_states()
    [attempt] = state["processing_history"]
    assert (attempt["attempt"], attempt["outcome"], attempt["exit_code"]) == (1, "limited", 1)
    assert attempt["job_id"] and d.retry_state(state["batch_id"])["retry_counts"] == {}
    assert d.ok("limit", clear=True)["cleared"] == ["default"]
    [state] = d.wait_finished(1, timeout=60)
    assert [(h["attempt"], h["outcome"]) for h in state["processing_history"]] == [
        (1, "limited"),
        (1, "completed"),
    ]


def test_a_silent_job_stalls(make_daemon: MakeDaemon, slurm_cluster: Cluster) -> None:
    """runner.stall_timeout = 2 on Slurm: a job whose log stops growing is cancelled and the
    attempt is timed_out, transient, naming the setting; the job is gone."""
    d = on_slurm(make_daemon, slurm_cluster, None)
    d.config_path.write_text(
        d.config_path.read_text().replace("timeout = 60\n", "timeout = 60\nstall_timeout = 2\n")
    )
    d.start()
    d.drop("s.txt", ["stdout=working sleep=600"])
    [state] = d.wait_finished(1, timeout=60)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"]) == ("timed_out", "transient")
    assert attempt["error_message"].startswith("stalled: no output for 2 s (runner.stall_timeout)")
    queued = slurm_cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
    assert attempt["job_id"] not in queued


def test_a_daemon_killed_during_the_jobs_check_judges_it_after_the_restart(
    make_daemon: MakeDaemon, slurm_cluster: Cluster, tmp_path: Path
) -> None:
    """kill -9 while the check runs in the job: the job goes on; the restart follows it and
    records what the job recorded: completed, verified; the agent and the check ran once."""
    body = (
        "echo run >> ../checks; touch ../check-started; "
        "while [ ! -f ../go ]; do sleep 0.1; done; echo all good"
    )
    d = started_with_check(make_daemon, slurm_cluster, tmp_path, body, "feature")
    d.wait_for((tmp_path / "check-started").exists, timeout=60, what="the check in the job")
    d.kill9()
    (tmp_path / "go").touch()
    d.start()
    [state] = d.wait_finished(1, timeout=90)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["verified"]) == ("completed", True)
    assert attempt["verify"]["output_tail"] == "all good"
    assert notes(tmp_path, "agent-runs") == "agent 0/1\n"
    assert (tmp_path / "checks").read_text() == "run\n"
