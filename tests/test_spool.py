"""The spool in this process: real files, real renames and fsyncs, an injected clock (SPEC 3).

No daemon: a ``Spool`` hands accepted files to a list. Each test here kills a
hand-made mutant of the spool (see its docstring): the exact-size file, the
inode re-check, the second look at a ``.json`` request, the claim that must
never overwrite an earlier claim, the fsyncs of a claim, the folders' trouble.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchd.clock import ManualClock
from batchd.parse import Limits
from batchd.spool import Accepted, Spool, SpoolError, SpoolLock
from batchd.spoolfs import Refused, read_entry
from batchd.spoolrules import IDLE_LOOK_S, TROUBLE_RETRY_S

T = 1_900_000_000.0


class Box:
    """A spool in ``root/spool`` whose accepted files and problems are recorded."""

    def __init__(
        self, root: Path, settle_ms: int = 0, limits: Limits | None = None, **kw: Any
    ) -> None:
        self.dir = root / "spool"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.accepted: list[Accepted] = []
        self.problems: list[str | None] = []
        self.keep = False  # True: an accepted file stays claimed (its batch cannot be made)
        self.spool = Spool(
            self.dir,
            limits or Limits(),
            settle_ms,
            self._ingest,
            on_change=self.problems.append,
            **kw,
        )

    def _ingest(self, acc: Accepted) -> None:
        self.accepted.append(acc)
        if not self.keep:
            os.unlink(acc.path)  # the batch took it as its source

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.accepted]

    @property
    def problem(self) -> str | None:
        return self.problems[-1] if self.problems else None

    def put(self, name: str, data: bytes | str) -> Path:
        """Write a file the right way: a temp name, then a rename."""
        raw = data.encode() if isinstance(data, str) else data
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(raw)
        os.rename(tmp, self.dir / name)
        return self.dir / name

    def rejected(self, name: str) -> str:
        return (self.dir / "rejected" / f"{name}.error").read_text()


def exactly(size: int) -> bytes:
    """A valid feature file of exactly ``size`` bytes (distinct 8-byte lines, then padding)."""
    lines = b"".join(b"f%06d\n" % i for i in range(size // 8))
    return lines + b"x" * (size - len(lines)) if size % 8 else lines


@pytest.mark.parametrize("name", ["exact.txt", "exact.json"])
def test_a_file_of_exactly_max_file_bytes_is_accepted(tmp_path: Path, name: str) -> None:
    """Mutant `len(data) >= max_file_bytes`: the exact-size file is accepted, one byte more
    is rejected naming the limit (plain files and .json requests)."""
    box = Box(tmp_path, limits=Limits(max_file_bytes=800))
    if name.endswith(".json"):
        body = json.dumps({"features": ["a"], "name": ""})
        data = body[:-1] + " " * (800 - len(body)) + "}"
        over = body[:-1] + " " * (801 - len(body)) + "}"
    else:
        data, over = exactly(800).decode(), exactly(800).decode() + "z"
    assert len(data) == 800 and len(over) == 801
    box.put(name, data)
    box.put(f"over-{name}", over)
    box.spool.scan()
    assert box.names == [name]
    assert "over spool.max_file_bytes (800)" in box.rejected(f"over-{name}")


def test_reading_refuses_a_file_replaced_since_it_was_looked_at(tmp_path: Path) -> None:
    """Mutant "no inode re-check after opening": a file replaced between the lstat and the
    open is refused, never read as if it were the one looked at (a FIFO neither blocks)."""
    path = tmp_path / "a.txt"
    path.write_text("looked at\n")
    looked = os.lstat(path)
    assert read_entry(path, looked, 1000) == b"looked at\n"
    other = tmp_path / "other"
    other.write_text("swapped in\n")
    os.rename(other, path)
    with pytest.raises(Refused, match="changed into something else"):
        read_entry(path, looked, 1000)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(Refused, match="changed into something else"):
        read_entry(path, looked, 1000)


def test_a_json_request_that_does_not_parse_yet_gets_a_second_look(tmp_path: Path) -> None:
    """Mutant "no second look at a .json request": one that does not parse is neither taken
    nor rejected until settle_ms later; completed meanwhile it runs; still broken, it is
    rejected."""
    box = Box(tmp_path, settle_ms=2000)
    box.put("slow.json", '{"features": ["a", ')
    box.put("broken.json", '{"features": ["b", ')
    assert box.spool.scan(now=T) == T + 2
    assert box.names == [] and not (box.dir / "rejected" / "slow.json").exists()
    assert not (box.dir / "rejected" / "broken.json").exists()
    box.put("slow.json", '{"features": ["a", "b"]}')  # the writer is done
    assert box.spool.scan(now=T + 1) == T + 2  # broken.json still has its second chance
    assert box.names == ["slow.json"] and box.accepted[0].parsed.features == ["a", "b"]
    assert box.spool.scan(now=T + 2) is None
    assert "not valid JSON" in box.rejected("broken.json")


def test_a_claim_never_overwrites_an_earlier_claim_of_the_same_name(tmp_path: Path) -> None:
    """Mutant "the lexists guard removed": while a claimed a.txt waits for its batch (state
    writes failing), a new a.txt stays in the spool; both become batches later, in order."""
    box = Box(tmp_path)
    box.keep = True
    box.put("a.txt", "first\n")
    box.spool.scan()
    assert (box.dir / ".claimed" / "a.txt").read_text() == "first\n"
    box.put("a.txt", "second\n")
    box.spool.scan()
    assert (box.dir / ".claimed" / "a.txt").read_text() == "first\n"
    assert (box.dir / "a.txt").read_text() == "second\n"
    box.keep = False  # the disk works again
    box.accepted.clear()
    box.spool.scan()
    assert [a.parsed.features for a in box.accepted] == [["first"], ["second"]]
    assert list((box.dir / ".claimed").iterdir()) == [] and not (box.dir / "a.txt").exists()


def test_a_claim_is_durable_before_its_batch_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant "no fsync in the claim": the file is fsynced before its rename into .claimed/,
    the spool folder and .claimed/ after it, all before the batch is made."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        where = os.path.realpath(os.path.dirname(dst))
        events.append(("rename", f"{where}/{os.path.basename(dst)}"))
        real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    box = Box(tmp_path)
    at_batch: list[list[tuple[str, str]]] = []
    box.spool.ingest = lambda acc: at_batch.append(list(events))
    box.put("a.json", json.dumps({"features": ["x"]}))
    events.clear()
    box.spool.scan()
    [seen] = at_batch
    spool, claimed = os.path.realpath(box.dir), os.path.realpath(box.dir / ".claimed")
    claim = seen.index(("rename", f"{claimed}/a.json"))
    assert ("fsync", f"{spool}/a.json") in seen[:claim], seen
    assert ("fsync", spool) in seen[claim:], seen
    assert ("fsync", claimed) in seen[claim:], seen


@pytest.mark.anyio
async def test_a_settle_deadline_passes_on_the_injected_clock(tmp_path: Path) -> None:
    """The watching spool reads time from its clock: a file with ten minutes to settle is
    looked at again and again (every IDLE_LOOK_S of that clock) and taken when the clock
    reaches its deadline; no real second passes."""
    clock = ManualClock(time.time())
    box = Box(tmp_path, settle_ms=600_000, clock=clock)
    st = os.lstat(box.put("todo.txt", "one\n"))
    due = max(st.st_mtime, st.st_ctime) + 600
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(box.spool.run, stop)
        start = clock.now()
        await until(lambda: clock.sleepers == [start + IDLE_LOOK_S], "the first look")
        clock.advance(IDLE_LOOK_S)
        await until(lambda: clock.sleepers == [start + 2 * IDLE_LOOK_S], "the second look")
        assert box.names == []
        clock.advance(due - clock.now())
        await until(lambda: box.names == ["todo.txt"], "the settled file taken", timeout=10)
        stop.set()


@pytest.mark.anyio
async def test_an_io_error_no_check_foresaw_is_a_problem_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant "no safety net around a pass": an I/O error where none was expected (EIO on
    a claimed file) is a spool problem, never the end of the watch; the spool looks again
    after TROUBLE_RETRY_S and takes the file once the disk answers."""
    clock = ManualClock(time.time())
    box = Box(tmp_path, clock=clock)
    failing = [True]
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        if failing[0] and "/.claimed/" in str(path):
            raise OSError(errno.EIO, "Input/output error")
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    box.put("a.json", json.dumps({"features": ["one"]}))  # a request is read at once
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(box.spool.run, stop)
        await until(lambda: "Input/output error" in (box.problem or ""), "the problem")
        failing[0] = False
        clock.advance(TROUBLE_RETRY_S)
        await until(lambda: box.names == ["a.json"] and box.problem is None, "taken, no problem")
        stop.set()


async def until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    with anyio.fail_after(timeout):
        while not (value := pred()):
            await anyio.sleep(0.01)
    return value


FOLDERS = {"claimed": ".claimed", "rejected": "rejected"}


@pytest.mark.parametrize("folder", ["claimed", "rejected"])
@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_broken_spool_folder_is_a_problem_and_nothing_is_lost(
    tmp_path: Path, folder: str, kind: str
) -> None:
    """.claimed or rejected as a link or a plain file: a problem (what, the fix), nothing
    written through the link, the files wait; fixed, they are taken up and the problem ends."""
    box = Box(tmp_path)
    path = box.dir / FOLDERS[folder]
    outside = tmp_path / "outside"
    outside.mkdir()
    if kind == "symlink":
        path.symlink_to(outside)
    else:
        path.write_text("a stray file\n")
    box.put("good.txt", "runs\n")
    box.put("bad.txt", "has\x01control\n")
    box.spool.scan()
    problem = box.problem
    assert problem is not None and str(path) in problem
    assert ("symbolic link" if kind == "symlink" else "not a folder") in problem
    assert list(outside.iterdir()) == []
    if folder == "claimed":
        assert box.names == [] and {"good.txt", "bad.txt"} <= set(os.listdir(box.dir))
    else:  # a good file runs; the bad one waits, claimed
        assert box.names == ["good.txt"]
        assert os.listdir(box.dir / ".claimed") == ["bad.txt"]
    os.unlink(path)
    box.spool.scan()
    assert box.problem is None and box.names == ["good.txt"]
    assert "line 1" in box.rejected("bad.txt")
    assert list(outside.iterdir()) == []


def test_rejected_files_are_listed_newest_first_and_cleared_when_removed(tmp_path: Path) -> None:
    """The report status shows: how many files rejected/ holds, the 5 newest with their
    reasons; a file removed from rejected/ leaves it."""
    box = Box(tmp_path)
    for i in range(7):
        box.put(f"bad{i}.txt", f"{i}\x01\n")
    box.spool.scan()
    assert box.spool.report.rejected_total == 7 and len(box.spool.report.rejected) == 5
    rejected = box.dir / "rejected"
    for i in range(7):  # rejected in this order, a second apart
        os.utime(rejected / f"bad{i}.txt.error", (T + i, T + i))
    fresh = Box(tmp_path)  # a daemon started now lists rejected/
    fresh.spool.scan()
    report = fresh.spool.report
    assert [r["name"] for r in report.rejected] == [f"bad{i}.txt" for i in (6, 5, 4, 3, 2)]
    assert "control character" in report.rejected[0]["reason"]
    (rejected / "bad6.txt").unlink()
    (rejected / "bad5.txt").unlink()  # its .error stays: not a rejected file any more
    fresh.spool.scan()
    assert report.rejected_total == 5 and report.rejected[0]["name"] == "bad4.txt"
    shutil.rmtree(rejected)
    fresh.spool.scan()
    assert (report.rejected_total, report.rejected) == (0, [])
    assert fresh.problems[-1] is None  # told, with no problem


def test_a_removed_spool_folder_is_made_again_and_owned_again(tmp_path: Path) -> None:
    """The spool folder removed under the daemon: created again, its lock taken again (a
    second owner is refused), and files dropped into it are taken."""
    state = tmp_path / "state"
    lock = SpoolLock.acquire(tmp_path / "spool", state)
    try:
        box = Box(tmp_path, lock=lock)
        shutil.rmtree(box.dir)
        box.spool.scan()
        assert box.problem is None and box.dir.is_dir()
        assert json.loads((box.dir / ".batchd.lock").read_text())["state_dir"] == str(state)
        assert lock.folder == (os.lstat(box.dir).st_dev, os.lstat(box.dir).st_ino)
        with pytest.raises(SpoolError, match="already owned by another batchd"):
            SpoolLock.acquire(box.dir, tmp_path / "other-state")
        box.put("a.txt", "taken\n")
        box.spool.scan()
        assert box.names == ["a.txt"]
    finally:
        lock.close()


def test_a_spool_folder_replaced_by_a_link_is_never_read(tmp_path: Path) -> None:
    """The spool folder replaced by a link: a problem, nothing read or written there; a real
    folder again (here: created again once the link is gone), files are taken."""
    lock = SpoolLock.acquire(tmp_path / "spool", tmp_path / "state")
    try:
        box = Box(tmp_path, lock=lock)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "x.txt").write_text("never read\n")
        shutil.rmtree(box.dir)
        box.dir.symlink_to(elsewhere)
        box.spool.scan()
        assert box.problem is not None and "symbolic link" in box.problem
        assert sorted(os.listdir(elsewhere)) == ["x.txt"] and box.names == []
        box.dir.unlink()
        box.spool.scan()
        assert box.problem is None and box.dir.is_dir() and not box.dir.is_symlink()
        box.put("a.txt", "taken\n")
        box.spool.scan()
        assert box.names == ["a.txt"] and sorted(os.listdir(elsewhere)) == ["x.txt"]
    finally:
        lock.close()
