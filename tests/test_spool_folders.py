"""The spool's own folders in trouble never take the daemon down; rejected files show in
status (SPEC 3, issue 24 §4, issue 23 item 8).

Every case runs the real daemon on both backends and ends with a file dropped
afterwards that runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]
CHATTR = shutil.which("chattr")


def spool_problem(d: Daemon) -> str | None:
    """The text of the daemon's ``spool`` problem, if it has one."""
    found = [p["message"] for p in d.status()["problems"] if p["kind"] == "spool"]
    return found[0] if found else None


def watched_inodes(pid: int) -> set[int]:
    """The inodes the process ``pid`` has inotify watches on (its /proc fdinfo)."""
    found: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("inotify "):
                        found.add(int(line.split(" ino:", 1)[1].split()[0], 16))
    return found


def ran(d: Daemon) -> list[str]:
    return [r["feature"] for r in d.agent_runs() if r["event"] == "start"]


@contextlib.contextmanager
def broken(path: Path, kind: str, outside: Path) -> Iterator[None]:
    """``path`` (one of the spool's folders) made a link to ``outside``, a plain file, or
    unwritable (immutable) for the time of the block."""
    if kind == "unwritable":
        assert CHATTR is not None
        subprocess.run([CHATTR, "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run([CHATTR, "-i", str(path)], check=True)
        return
    shutil.rmtree(path)
    if kind == "symlink":
        path.symlink_to(outside)
    else:
        path.write_text("a stray file\n")
    yield
    path.unlink()  # the fix the problem names: batchd creates the folder again


def can_make_immutable(tmp_path: Path) -> bool:
    """Root with a file system that has the immutable flag (root ignores file modes)."""
    if os.getuid() != 0 or CHATTR is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run([CHATTR, "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run([CHATTR, "-i", str(probe)], capture_output=True)
    return ok


@pytest.mark.parametrize("folder", [".claimed", "rejected"])
@pytest.mark.parametrize("kind", ["symlink", "file", "unwritable"])
def test_a_broken_spool_folder_is_a_problem_never_an_exit(
    make_daemon: MakeDaemon, tmp_path: Path, folder: str, kind: str
) -> None:
    """.claimed or rejected as a link, a plain file or unwritable: a `spool` problem in
    status and the log naming the folder and the fix; the daemon answers, writes nothing
    through a link and loses nothing; fixed, the waiting files are taken up, and a file
    dropped afterwards runs."""
    if kind == "unwritable" and not can_make_immutable(tmp_path):
        pytest.skip("needs root and chattr to make a folder unwritable for root")
    d = make_daemon()
    d.start()
    d.drop("first.txt", ["first"])
    d.wait_finished(1)
    path, outside = d.spool / folder, tmp_path / "outside"
    outside.mkdir()
    with broken(path, kind, outside):
        d.drop("good.txt", ["good"])
        d.drop("bad.txt", ["ok", "has\x01control"])
        problem = d.wait_for(lambda: spool_problem(d), what="the spool problem")
        assert str(path) in problem and ("rm " in problem or "mv " in problem or "chmod" in problem)
        if folder == ".claimed":  # nothing is claimed: both wait in the spool
            d.wait_for(lambda: (d.spool / "bad.txt").exists(), what="bad.txt waiting")
            assert (d.spool / "good.txt").exists() and ran(d) == ["first"]
        else:  # a good file still runs; the refused one waits, claimed
            d.wait_finished(2)
            assert (d.spool / ".claimed" / "bad.txt").exists()
        assert d.proc is not None and d.proc.poll() is None
        assert list(outside.iterdir()) == []
        assert f"ERROR spool: {problem}" in d.stderr() or problem in d.stderr()
    d.wait_for(lambda: spool_problem(d) is None, what="the problem gone")
    d.wait_for(lambda: (d.spool / "rejected" / "bad.txt.error").exists(), what="bad.txt rejected")
    d.drop("after.txt", ["after"])
    states = d.wait_finished(3)
    assert [s["status"] for s in states] == ["completed"] * 3
    assert sorted(ran(d)) == ["after", "first", "good"]
    st = d.status()
    assert st["rejected_total"] == 1 and st["rejected"][0]["name"] == "bad.txt"
    assert "line 2" in st["rejected"][0]["reason"]
    assert list(outside.iterdir()) == [] and list((d.spool / ".claimed").iterdir()) == []


def replace_spool(d: Daemon, how: str, elsewhere: Path) -> None:
    if how == "removed":
        shutil.rmtree(d.spool)
        return
    os.rename(d.spool, d.root / "spool.old")
    if how == "replaced":
        d.spool.mkdir(mode=0o700)
    elif how == "symlink":
        d.spool.symlink_to(elsewhere)
    else:
        d.spool.write_text("a stray file\n")


@pytest.mark.parametrize("how", ["removed", "replaced", "symlink", "file"])
def test_the_spool_folder_removed_or_replaced_while_running(
    make_daemon: MakeDaemon, tmp_path: Path, how: str
) -> None:
    """The spool folder removed, replaced by a new one, by a link or by a file: the daemon
    keeps answering, never reads through the link, owns the new folder (its lock taken again:
    a second daemon is refused), watches it, and a file dropped into it runs."""
    d = make_daemon()
    d.start()
    d.drop("first.txt", ["first"])
    d.wait_finished(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    replace_spool(d, how, elsewhere)
    if how in ("symlink", "file"):
        problem = d.wait_for(lambda: spool_problem(d), what="the spool problem")
        assert str(d.spool) in problem and "reads nothing" in problem
        if how == "symlink":
            (elsewhere / "through-link.txt").write_text("never read\n")
        assert d.proc is not None and d.proc.poll() is None
        d.spool.unlink()
        d.wait_for(lambda: spool_problem(d) is None, what="the problem gone")
    lock = d.spool / ".batchd.lock"

    def owner() -> str:  # the lock file is made, locked, then written: wait for its line
        return lock.read_text() if lock.exists() and d.spool.is_dir() else ""

    d.wait_for(lambda: owner().endswith("\n"), what="the spool owned again")
    assert json.loads(owner())["state_dir"] == str(d.state)
    assert d.proc is not None
    pid, new = d.proc.pid, os.stat(d.spool).st_ino
    d.wait_for(lambda: new in watched_inodes(pid), what="the new spool folder watched")
    d.drop("after.txt", ["after"])
    states = d.wait_finished(2)
    assert [s["features_file"] for s in states] == ["first.txt", "after.txt"]
    assert sorted(os.listdir(elsewhere)) == ([] if how != "symlink" else ["through-link.txt"])
    if how in ("removed", "replaced"):
        second = make_daemon("second")
        second.spool = d.spool
        second.start(wait=False)
        assert second.proc is not None and second.proc.wait(30) == 1
        assert "already owned by another batchd" in second.stderr()
    assert d.proc is not None and d.proc.poll() is None


def test_status_shows_rejected_files_until_they_are_removed(make_daemon: MakeDaemon) -> None:
    """`batchctl --json status` has `rejected` (newest first, with reasons) and
    `rejected_total`; removing the files from rejected/ clears them."""
    d = make_daemon()
    d.start()
    d.drop("one.txt", ["has\x01control"])
    d.wait_for(lambda: (d.spool / "rejected" / "one.txt.error").exists(), what="one rejected")
    d.drop_request("two.json", {"features": ["a"], "shell": "rm -rf /"})
    st = d.wait_for(lambda: (s := d.status())["rejected_total"] == 2 and s, what="two rejected")
    assert [r["name"] for r in st["rejected"]] == ["two.json", "one.txt"]
    assert "shell" in st["rejected"][0]["reason"] and "line 1" in st["rejected"][1]["reason"]
    out = d.ctl("--json", "status")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["rejected_total"] == 2 and shown["rejected"] == st["rejected"]
    for name in ("one.txt", "two.json"):
        (d.spool / "rejected" / name).unlink()
    st = d.wait_for(lambda: (s := d.status())["rejected_total"] == 0 and s, what="cleared")
    assert st["rejected"] == []
    d.drop("after.txt", ["after"])
    assert d.wait_finished(1)[0]["features_file"] == "after.txt"
