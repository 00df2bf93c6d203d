"""Hostile spool entries, a failing disk, and kill -9 storms over retries (issue 8).

The short versions run in CI; ``-m slow`` runs the long ones (50+ kills).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.harness import Daemon
from tests.test_crash import assert_no_overlap

MakeDaemon = Callable[..., Daemon]


def test_hostile_spool_corpus(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """Each hostile entry is rejected with a reason (or ignored); every good file runs."""
    d = make_daemon()
    spool = d.spool
    spool.mkdir(mode=0o700, parents=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("never read me\n")
    hostile: dict[str, str] = {}

    def bad(name: str, reason_part: str) -> None:
        hostile[name] = reason_part

    os.mkfifo(spool / "fifo.txt")
    bad("fifo.txt", "FIFO")
    os.symlink(outside, spool / "link.txt")
    bad("link.txt", "symbolic link")
    os.symlink("/nonexistent/dangling", spool / "dangling.txt")
    bad("dangling.txt", "symbolic link")
    (spool / "subdir").mkdir()
    bad("subdir", "directory")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(spool / "sock.txt"))
    bad("sock.txt", "socket")
    (spool / "huge.txt").write_bytes(b"feature\n" * 200_000)
    bad("huge.txt", "max_file_bytes")
    (spool / "latin1.txt").write_bytes(b"caf\xe9\n")
    bad("latin1.txt", "UTF-8")
    (spool / "nul.txt").write_bytes(b"ok\nbad\x00line\n")
    bad("nul.txt", "line 2")
    (spool / "escape.txt").write_bytes(b"\x1b[2J\x1b[31mclear screen\n")
    bad("escape.txt", "control character")
    (spool / "empty.txt").write_bytes(b"# only a comment\n\n")
    bad("empty.txt", "no features")
    (spool / "longline.txt").write_text("x" * 3000 + "\n")
    bad("longline.txt", "max_line_chars")
    (spool / "relcwd.txt").write_text("# batchd: cwd = relative/dir\nfeature\n")
    bad("relcwd.txt", "absolute")
    (spool / "malformed.json").write_text('{"features": ["a", ')
    bad("malformed.json", "JSON")
    (spool / "nested.json").write_text('{"features": ' + "[" * 20000 + "]" * 20000 + "}")
    bad("nested.json", "features")
    (spool / "unknown.json").write_text('{"features": ["a"], "shell": "rm -rf /"}')
    bad("unknown.json", "shell")
    (spool / "binary.bin").write_bytes(bytes(range(256)) * 10)
    bad("binary.bin", "")
    ignored = [".hidden", "draft.tmp", "upload.part", "backup~"]
    for name in ignored:
        (spool / name).write_text("should stay\n")
    good = {
        "name with spaces.txt": ["spaced"],
        "ünïcödé.txt": ["ünïcödé feature ✓"],
        "-rf": ["dash name"],
        "$(touch pwned).txt": ["$(touch pwned2)"],
        "new\nline.txt": ["newline name"],
        "crlf.txt": None,
        "good.json": ["from json"],
    }
    for name, lines in good.items():
        if name == "crlf.txt":
            (spool / name).write_bytes(b"\xef\xbb\xbfcrlf one\r\ncrlf two\r\n")
        elif name.endswith(".json"):
            (spool / name).write_text(json.dumps({"features": lines}))
        else:
            (spool / name).write_text("\n".join(lines or []) + "\n")
    old = time.time() - 10
    for entry in os.scandir(spool):
        if entry.is_file(follow_symlinks=False):
            os.utime(entry.path, (old, old))
    d.start()
    states = d.wait_finished(len(good), timeout=60)
    sock.close()
    assert len(states) == len(good)
    assert all(s["status"] == "completed" for s in states)
    ran = sorted(f for s in states for f in s["features"])
    assert "ünïcödé feature ✓" in ran and "$(touch pwned2)" in ran and "crlf two" in ran
    assert not (d.workdir / "pwned").exists() and not (d.workdir / "pwned2").exists()
    rejected = spool / "rejected"
    d.wait_for(lambda: all((rejected / f"{n}.error").exists() for n in hostile), what="rejections")
    for name, part in hostile.items():
        reason = (rejected / f"{name}.error").read_text()
        assert part in reason, (name, reason)
        assert os.path.lexists(rejected / name)
    assert (rejected / "fifo.txt").is_fifo()
    assert os.path.islink(rejected / "link.txt") and outside.read_text() == "never read me\n"
    for name in ignored:
        assert (spool / name).exists()
    names = [s["name"] for s in states]
    assert all("\n" not in n for n in names)
    assert "\n" not in "".join(line for line in d.stderr().splitlines() if "newline" in line)
    assert d.request("ping")["ok"]


def test_failing_disk_pauses_reports_and_recovers(make_daemon: MakeDaemon) -> None:
    """ENOSPC on state writes: old state intact, problem reported, queue paused (nothing
    starts until the disk has space again), then recovery."""
    d = make_daemon()
    flag = d.root / "disk-full"
    gate = d.root / "gate"
    gate.mkdir()
    points = f"enospc={flag},before_outcome_write:pause"
    d.start(env={"BATCHD_FAILPOINTS": points, "BATCHD_FAILPOINT_DIR": str(gate)})
    d.drop("a.txt", ["one", "two", "three"])
    # The disk fills while the daemon holds the first outcome: its write is the first to fail.
    d.wait_for(lambda: (gate / "before_outcome_write.hit").exists(), what="the first outcome")
    flag.write_text("")
    (gate / "before_outcome_write.go").touch()
    st = d.wait_for(lambda: (s := d.status())["problems"] and s, what="a problem")
    [problem] = st["problems"]
    assert problem["kind"] == "state_write" and "No space left" in problem["message"]
    assert st["queue_paused"] and st["pause_reason"].startswith("state_write_failed")
    [state] = d.batch_states()  # the previous file is intact and readable
    assert state["completed_features"] == []
    d.drop("b.txt", ["later"])
    # The file is claimed, and waits in .claimed/ until its batch can be written.
    d.wait_for(lambda: (d.spool / ".claimed" / "b.txt").exists(), what="b.txt claimed")
    assert len(d.batch_states()) == 1
    assert d.request("status")["ok"]
    freed = time.time()
    flag.unlink()
    states = d.wait_finished(2, timeout=60)
    assert [s["status"] for s in states] == ["completed", "completed"]
    assert d.status()["problems"] == []
    starts = [r for r in d.agent_runs() if r["event"] == "start"]
    assert Counter(r["feature"] for r in starts) == {"one": 1, "two": 1, "three": 1, "later": 1}
    # Nothing started while the disk was full: every start after the first came after it was freed.
    assert starts[0]["feature"] == "one" and all(r["t"] >= freed for r in starts[1:]), starts


def kill_storm(d: Daemon, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    features = []
    for i in range(24):
        if i % 6 == 3:
            features.append(f"r{i} fail_until=2 sleep=0.02")
        elif i % 6 == 5:
            features.append(f"p{i} exit=1 stderr=TypeError")
        else:
            features.append(f"f{i} sleep=0.0{i % 4}")
    d.start()
    d.drop("storm.txt", features)
    d.drop_request("storm2.json", {"features": [f"j{i}" for i in range(6)]})
    done = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0.0, 0.3))
        d.kill9()
        done += 1
        points = [
            "after_spawn",
            "after_attempt_record",
            "after_runner_exit",
            "before_outcome_write",
            "",
        ]
        point = rng.choice(points)
        d.start(env={"BATCHD_FAILPOINTS": point} if point else None, wait=not point)
        if point:
            assert d.proc is not None
            with contextlib.suppress(Exception):
                d.proc.wait(5)
            d.kill9()
            d.start()
    assert done == kills
    states = d.wait_finished(2, timeout=120)
    for state in states:
        assert state["status"] in ("completed", "failed")
        settled = state["completed_features"] + [
            f["feature_index"] for f in state["failed_features"]
        ]
        assert sorted(settled) == list(range(state["total_features"])), state["batch_id"]
        outcomes = Counter(
            h["feature_index"] for h in state["processing_history"] if h["outcome"] == "completed"
        )
        assert all(n == 1 for n in outcomes.values())
        failed_once = Counter(f["feature_index"] for f in state["failed_features"])
        assert all(n == 1 for n in failed_once.values())
    for f in (d.state / "batches").glob("*/*.json"):
        json.loads(f.read_bytes())  # never unreadable
    assert not list((d.state / "batches").glob("*/*.corrupt-*"))
    assert not [
        p for p in d.spool.iterdir() if p.name not in ("rejected", ".claimed", ".batchd.lock")
    ]
    assert not list((d.spool / ".claimed").iterdir())
    assert_no_overlap(d)


def test_kill_storm_short(make_daemon: MakeDaemon) -> None:
    """Short kill -9 storm over mixed batches with retries and failpoints (CI)."""
    d = make_daemon(
        env={"BATCH_RETRY_ENABLED": "1"}, config='[retry]\nbackoff_initial = 0.2\njitter = "none"\n'
    )
    kill_storm(d, 12, seed=11)


@pytest.mark.slow
def test_kill_storm_long(make_daemon: MakeDaemon) -> None:
    """Long kill -9 storm: at least 50 kills over retries and backoff waits."""
    d = make_daemon(
        env={"BATCH_RETRY_ENABLED": "1"}, config='[retry]\nbackoff_initial = 0.2\njitter = "none"\n'
    )
    kill_storm(d, 60, seed=int(os.environ.get("BATCHD_TORTURE_SEED", "3")))


def _namespace_init(outer: int) -> int | None:
    """The pid (as seen from here) of PID 1 of the namespace that ``unshare --fork`` made."""
    try:
        for tid in os.listdir(f"/proc/{outer}/task"):
            with open(f"/proc/{outer}/task/{tid}/children") as f:
                children = f.read().split()
            if children:
                return int(children[0])
    except OSError:
        return None
    return None


def test_kill_storm_inside_a_pid_namespace(make_daemon: MakeDaemon) -> None:
    """Regression (issue 12 §1): the daemon as PID 1 of a fresh PID namespace, as in a
    container, killed 30 times at random while a no-op runner drains 1,000 features (the
    kills land inside state writes): every start gets pid 1 again, and the batch still
    finishes with nothing reported and nothing left behind."""
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a PID namespace (CI runs as root)")
    # --kill-child: when unshare dies (the harness kills it at the end), so does the namespace.
    prefix = ("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    d = make_daemon(runner=["/bin/true", "{feature}"], config="[spool]\nsettle_ms = 50\n")
    rng = random.Random(int(os.environ.get("BATCHD_TORTURE_SEED", "5")))
    d.start(prefix=prefix)
    d.drop("many.txt", [f"f{i}" for i in range(1000)])
    d.wait_for(lambda: d.batch_states(), what="the batch accepted")
    for _ in range(30):
        time.sleep(rng.uniform(0.0, 0.3))
        assert d.proc is not None
        init = d.wait_for(partial(_namespace_init, d.proc.pid), what="PID 1 of the namespace")
        os.kill(init, signal.SIGKILL)  # the whole namespace dies, like a container stop
        d.proc.wait(10)
        d.start(prefix=prefix)
        assert d.status()["daemon"]["pid"] == 1
    [state] = d.wait_finished(1, timeout=120)
    assert state["status"] == "completed", state["status"]
    assert sorted(state["completed_features"]) == list(range(1000))
    done = Counter(
        h["feature_index"] for h in state["processing_history"] if h["outcome"] == "completed"
    )
    assert set(done.values()) == {1}
    assert d.status()["problems"] == []
    assert not list(d.state.rglob(".*.tmp")) and not list(d.state.rglob("*.corrupt-*"))
