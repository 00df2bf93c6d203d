"""One spool, one owner; a file is claimed before it is accepted (SPEC 3, issue 12 §5)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]


def test_a_second_daemon_on_the_same_spool_is_refused(make_daemon: MakeDaemon) -> None:
    """A second daemon with its own state dir but the first one's spool exits 1, naming the
    spool and the state dir of the daemon that owns it; the first one keeps working."""
    first = make_daemon("first")
    first.start()
    second = make_daemon("second")
    second.spool = first.spool
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    err = second.stderr()
    assert str(first.spool) in err and str(first.state) in err, err
    assert "own --spool" in err
    first.drop("a.txt", ["one", "two"])
    [state] = first.wait_finished(1)
    assert state["status"] == "completed"
    assert not (second.state / "batches").exists() or not list((second.state / "batches").iterdir())


def test_the_spool_lock_of_a_killed_daemon_does_not_block_the_next(make_daemon: MakeDaemon) -> None:
    """A kill -9 leaves the lock file behind; the next daemon takes the spool at once."""
    d = make_daemon()
    d.start()
    d.kill9()
    holder = json.loads((d.spool / ".batchd.lock").read_text())
    assert holder["state_dir"] == str(d.state)
    d.start()
    d.drop("a.txt", ["one"])
    assert d.wait_finished(1)[0]["status"] == "completed"


def test_a_file_taken_before_the_claim_is_not_accepted(make_daemon: MakeDaemon) -> None:
    """When someone else takes a file between our read and our claim, nothing is accepted."""
    d = make_daemon()
    gate = d.root / "gate"
    gate.mkdir()
    d.start(env={"BATCHD_FAILPOINTS": "before_claim:pause", "BATCHD_FAILPOINT_DIR": str(gate)})
    d.drop("race.txt", ["never run"])
    d.wait_for(lambda: (gate / "before_claim.hit").exists(), what="the daemon at before_claim")
    os.rename(d.spool / "race.txt", d.root / "taken.txt")  # the competitor wins
    (gate / "before_claim.go").touch()
    d.wait_for(lambda: "taken by someone else" in d.stderr(), what="the lost claim logged")
    assert d.status()["batches"] == []
    assert d.batch_states() == [] and d.agent_runs() == []
    assert "accepted" not in d.stderr()
    d.drop("next.txt", ["runs"])
    [state] = d.wait_finished(1)
    assert state["features_file"] == "next.txt"


def test_a_kill_between_claim_and_batch_accepts_the_file_once(make_daemon: MakeDaemon) -> None:
    """A kill right after the claim leaves the file in .claimed/; the next start makes exactly
    one batch of it, and the file ends as the batch's source."""
    d = make_daemon()
    d.start(env={"BATCHD_FAILPOINTS": "after_claim"})
    d.drop("c.txt", ["alpha", "beta"])
    assert d.proc is not None
    assert d.proc.wait(30) == -9
    assert (d.spool / ".claimed" / "c.txt").exists() and not (d.spool / "c.txt").exists()
    assert d.batch_states() == []
    d.start()
    [state] = d.wait_finished(1)
    assert state["status"] == "completed" and state["features"] == ["alpha", "beta"]
    assert (d.state / "batches" / state["batch_id"] / "source").read_text() == "alpha\nbeta\n"
    assert not list((d.spool / ".claimed").iterdir())
    assert sorted(r["feature"] for r in d.agent_runs() if r["event"] == "start") == [
        "alpha",
        "beta",
    ]


def test_a_claimed_file_that_fails_validation_is_rejected(make_daemon: MakeDaemon) -> None:
    """A refused file goes from .claimed/ to rejected/ with its reason; nothing is left claimed."""
    d = make_daemon()
    d.start()
    d.drop("bad.txt", ["ok", "has\x01control"])
    d.wait_for(lambda: (d.spool / "rejected" / "bad.txt.error").exists(), what="the rejection")
    assert "line 2" in (d.spool / "rejected" / "bad.txt.error").read_text()
    assert not list((d.spool / ".claimed").iterdir())
    assert d.batch_states() == []
