"""The spool's and intake's decisions, by table: pure, no file, no sleep (SPEC 3)."""

from __future__ import annotations

import stat

import pytest

from batchd.model import BatchState, DaemonState
from batchd.spoolrules import (
    IDLE_LOOK_S,
    TROUBLE_RETRY_S,
    FirstLook,
    Role,
    claimed_batch,
    entry_kind,
    folder_trouble,
    give_back_seq,
    needs_relist,
    newest,
    next_look,
    rejected_names,
    request_look,
    settle_due,
    take_seq,
    too_big,
    trouble_message,
)

T = 1_900_000_000.0


@pytest.mark.parametrize(
    ("changed", "now", "settle", "due"),
    [
        (T, T, 0.5, T + 0.5),  # just written: wait the whole settle time
        (T, T + 0.499, 0.5, T + 0.5),  # not quite settled
        (T, T + 0.5, 0.5, None),  # exactly settled: read
        (T, T + 9, 0.5, None),  # long settled
        (T, T, 0.0, None),  # no settle time: read at once
        (T + 5, T, 0.5, T + 5.5),  # changed "in the future" (clock skew): wait from then
    ],
)
def test_a_plain_file_is_ready_once_unchanged_for_the_settle_time(
    changed: float, now: float, settle: float, due: float | None
) -> None:
    """settle_due: None when ready, else the moment it will be."""
    assert settle_due(changed, now, settle) == due


SIG = (10, 1_000, 7)
GREW = (11, 2_000, 7)  # written to since
SWAPPED = (10, 1_000, 8)  # another file of the same size and time


@pytest.mark.parametrize(
    ("parses", "sig", "now", "first", "due", "remembered"),
    [
        (True, SIG, T, None, None, None),  # parses: claim at once
        (True, SIG, T, FirstLook(SIG, T + 2), None, None),  # parses now: forget the first look
        (False, SIG, T, None, T + 2, FirstLook(SIG, T + 2)),  # first failure: a second look
        (False, SIG, T + 1, FirstLook(SIG, T + 2), T + 2, FirstLook(SIG, T + 2)),  # still waiting
        (False, SIG, T + 2, FirstLook(SIG, T + 2), None, None),  # second look fails: reject it
        # changed since the first look (a slow writer at work): its wait starts again
        (False, GREW, T + 2, FirstLook(SIG, T + 2), T + 4, FirstLook(GREW, T + 4)),
        (False, SWAPPED, T + 3, FirstLook(SIG, T + 2), T + 5, FirstLook(SWAPPED, T + 5)),
    ],
)
def test_a_json_request_that_does_not_parse_gets_one_second_look(
    parses: bool,
    sig: tuple[int, int, int],
    now: float,
    first: FirstLook | None,
    due: float | None,
    remembered: FirstLook | None,
) -> None:
    """request_look: (when to look again or None to claim now, what to remember)."""
    assert request_look(parses, sig, now, 2.0, first) == (due, remembered)


@pytest.mark.parametrize(
    ("size", "limit", "refused"),
    [(0, 10, False), (9, 10, False), (10, 10, False), (11, 10, True), (1 << 30, 10, True)],
)
def test_a_file_of_exactly_max_file_bytes_is_accepted(size: int, limit: int, refused: bool) -> None:
    """too_big: only a file over the limit is refused, the exact size passes."""
    assert too_big(size, limit) is refused


@pytest.mark.parametrize(
    ("mode", "part"),
    [
        (stat.S_IFREG | 0o600, None),
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFDIR | 0o700, "directory"),
        (stat.S_IFIFO | 0o600, "FIFO"),
        (stat.S_IFSOCK | 0o600, "socket"),
        (stat.S_IFCHR | 0o600, "device"),
        (stat.S_IFBLK | 0o600, "device"),
    ],
)
def test_only_regular_files_are_read(mode: int, part: str | None) -> None:
    """entry_kind: None for a regular file, else a reason naming what it is."""
    why = entry_kind(mode)
    assert (why is None) if part is None else (why is not None and part in why)


ME = 1000
DIR = stat.S_IFDIR | 0o700


@pytest.mark.parametrize(
    ("role", "mode", "uid", "parts"),
    [
        ("claimed", None, ME, None),  # missing: created, no trouble
        ("claimed", DIR, ME, None),
        ("claimed", stat.S_IFDIR | 0o500, ME, None),  # unwritable mode: made 0700 again
        (
            "claimed",
            stat.S_IFLNK | 0o777,
            ME,
            ["symbolic link", "new files wait in the spool", "rm "],
        ),
        ("claimed", stat.S_IFREG | 0o600, ME, ["not a folder", "new files wait", "mv "]),
        ("rejected", stat.S_IFLNK | 0o777, ME, ["symbolic link", "refused files wait", "rm "]),
        ("rejected", stat.S_IFREG | 0o600, ME, ["not a folder", "refused files wait", "mv "]),
        ("rejected", DIR, 0, ["owned by uid 0", "chown 1000"]),
        ("spool", DIR | stat.S_ISVTX, ME, ["shared folder", "reads nothing"]),
        ("spool", stat.S_IFLNK | 0o777, ME, ["symbolic link", "reads nothing", "mkdir -m 700"]),
        ("spool", stat.S_IFREG | 0o600, ME, ["not a folder", "reads nothing"]),
    ],
)
def test_what_is_wrong_with_a_spool_folder_says_what_stops_and_the_fix(
    role: Role, mode: int | None, uid: int, parts: list[str] | None
) -> None:
    """folder_trouble: None for a usable (or missing) folder, else what, what stops, the fix."""
    trouble = folder_trouble(role, "/s/x", mode, uid, ME)
    if parts is None:
        assert trouble is None
    else:
        assert trouble is not None and trouble.startswith("/s/x ")
        for part in parts:
            assert part in trouble, (part, trouble)


def test_the_spool_problem_names_every_trouble_spool_first() -> None:
    """trouble_message: None without trouble; every trouble in one problem otherwise."""
    assert trouble_message({}) is None
    assert trouble_message({"rejected": "R", "spool": "S", "claimed": "C"}) == "S; and C; and R"
    assert trouble_message({"rejected": "R"}) == "R"


@pytest.mark.parametrize(
    ("due", "troubled", "look"),
    [
        (None, False, T + IDLE_LOOK_S),
        (None, True, T + TROUBLE_RETRY_S),
        (T + 0.1, False, T + 0.1),
        (T + 0.1, True, T + 0.1),
        (T + 60, False, T + IDLE_LOOK_S),
        (T + 60, True, T + TROUBLE_RETRY_S),
    ],
)
def test_the_spool_looks_again_at_a_deadline_a_retry_or_an_idle_look(
    due: float | None, troubled: bool, look: float
) -> None:
    """next_look: the earliest of a file's deadline and the trouble retry (or idle look)."""
    assert next_look(due, T, troubled) == look


@pytest.mark.parametrize(
    ("names", "files"),
    [
        ([], []),
        (["a.txt", "a.txt.error"], ["a.txt"]),
        (["a.txt.error"], []),  # its file was removed: the sidecar alone is not a rejected file
        (["notes.error", "notes.error.error"], ["notes.error"]),  # a file named *.error
        (["b", "b.error", "b.1", "b.1.error", ".b.error.123.tmp"], ["b", "b.1"]),
        (["c.txt"], ["c.txt"]),  # its sidecar could not be written
    ],
)
def test_which_entries_of_rejected_are_rejected_files(names: list[str], files: list[str]) -> None:
    """rejected_names: files, not their .error sidecars nor temp files."""
    assert rejected_names(names) == files


def test_status_names_the_five_newest_rejected_files_newest_first() -> None:
    """newest: by time, newest first, at most the limit; a tie goes by name."""
    entries = [(f"f{i}", i) for i in range(8)] + [("a", 7)]
    assert newest(entries) == ["a", "f7", "f6", "f5", "f4"]
    assert newest(entries, 2) == ["a", "f7"]
    assert newest([]) == []


MTIME = int((T - 10) * 1e9)


@pytest.mark.parametrize(
    ("listed", "now_sig", "listed_at", "relist"),
    [
        (None, None, T, False),  # no rejected/ then, none now
        (None, (1, 2, MTIME), T, True),  # it appeared
        ((1, 2, MTIME), None, T, True),  # it went
        ((1, 2, MTIME), (1, 2, MTIME), T, False),  # unchanged, listed well after its change
        ((1, 2, MTIME), (1, 2, MTIME + 1), T, True),  # a file was removed or added
        ((1, 2, MTIME), (1, 3, MTIME), T, True),  # a new folder
        ((1, 2, MTIME), (1, 2, MTIME), T - 9.5, True),  # listed within a tick of its change
    ],
)
def test_rejected_is_listed_again_only_when_it_changed(
    listed: tuple[int, int, int] | None,
    now_sig: tuple[int, int, int] | None,
    listed_at: float,
    relist: bool,
) -> None:
    """needs_relist: a changed folder, or a listing too close to a change to trust."""
    assert needs_relist(listed, now_sig, listed_at) is relist


def state(batch_id: str, seq: int, name: str = "a.txt", sha: str = "s1") -> BatchState:
    return BatchState(
        batch_id=batch_id,
        seq=seq,
        name=name,
        features_file=name,
        source_sha256=sha,
        total_features=1,
        features=["x"],
        created_at="2026-01-01T00:00:00.000000Z",
        updated_at="2026-01-01T00:00:00.000000Z",
    )


@pytest.mark.parametrize(
    ("batches", "sourced", "found"),
    [
        ([], set(), None),
        ([state("b1", 1)], {"b1"}, None),  # the same file dropped again later: a new batch
        ([state("b1", 1)], set(), "b1"),  # killed before its source moved in: that batch
        ([state("b1", 1, sha="other")], set(), None),  # same name, other content: new
        ([state("b1", 1, name="b.txt")], set(), None),  # same content, other name: new
        ([state("b1", 1), state("b2", 2)], {"b1"}, "b2"),  # dropped twice, 2nd cut short
        ([state("b2", 2), state("b1", 1)], set(), "b1"),  # the oldest first
    ],
)
def test_a_claimed_file_after_a_crash_is_the_batch_that_lacks_its_source(
    batches: list[BatchState], sourced: set[str], found: str | None
) -> None:
    """claimed_batch: same name, same SHA-256, no source yet; else None (a new batch)."""
    assert claimed_batch("a.txt", "s1", batches, sourced.__contains__) == found


def test_a_seq_is_given_back_when_daemon_json_cannot_be_written() -> None:
    """take_seq / give_back_seq: a failed queue write gives the seq to the next batch; once
    written, a seq stays used (a batch write that fails after it leaves a gap, never a repeat)."""
    q = DaemonState(next_seq=7)
    assert take_seq(q, T) == 7 and q.next_seq == 8
    assert q.updated_at == "2030-03-17T17:46:40.000000Z"
    give_back_seq(q, 7)  # daemon.json not written
    assert q.next_seq == 7
    assert take_seq(q, T) == 7  # the same seq again, nothing used it
    assert take_seq(q, T) == 8  # written, then the batch write failed: 7 stays used
    give_back_seq(q, 7)  # too late: 8 was taken after it
    assert q.next_seq == 9
