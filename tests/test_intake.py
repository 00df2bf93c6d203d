"""A claimed file becomes exactly one batch, with the next seq, whatever fails (SPEC 3, 4).

The engine, its store and the spool in this process (``tests.test_inprocess.world``);
the disk fills by the ``enospc`` failpoint, time moves by a ``ManualClock``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd import failpoints
from batchd.clock import ManualClock
from tests.test_inprocess import T0, until, world

pytestmark = pytest.mark.anyio


@pytest.fixture
def disk_full(tmp_path: Path) -> Iterator[Path]:
    """While the returned file exists, every durable state write fails with ENOSPC."""
    flag = tmp_path / "disk-full"
    failpoints.configure(f"enospc={flag}")
    try:
        yield flag
    finally:
        failpoints.configure(None)


async def test_a_seq_is_given_back_when_daemon_json_cannot_be_written(
    tmp_path: Path, disk_full: Path
) -> None:
    """Mutant "no next_seq rollback": a file claimed while daemon.json cannot be written waits
    in .claimed/ and its seq is not used up; once the disk works it gets seq 1, the next
    file seq 2, and daemon.json says 3."""
    clock = ManualClock(T0)
    async with world(tmp_path, clock=clock) as w:
        disk_full.touch()
        w.submit("a.json", ["one"])
        engine = w.engine
        assert engine.live.batches == {} and engine.live.queue.next_seq == 1
        assert (w.spool.claimed / "a.json").exists()
        await until(lambda: T0 + 2 in clock.sleepers, "the engine waiting to write again")
        disk_full.unlink()
        clock.advance(2)
        await until(lambda: engine.journal.failure is None, "the writes working again")
        w.spool.scan()
        w.submit("b.json", ["two"])
        seqs = sorted((b.state.seq, b.state.features_file) for b in engine.live.batches.values())
        assert seqs == [(1, "a.json"), (2, "b.json")]
        daemon = json.loads((tmp_path / "state" / "daemon.json").read_text())
        assert daemon["next_seq"] == 3
        assert list(w.spool.claimed.iterdir()) == []
