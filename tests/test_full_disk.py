"""A full disk under a chatty agent stops nothing (issue 12 §7), on a real tiny tmpfs."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]
MIB = 1024 * 1024


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (root only), unmounted afterwards."""
    if os.getuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_while_the_agent_writes_its_log_stops_nothing(
    make_daemon: MakeDaemon, tiny_fs: Path
) -> None:
    """With the state dir on a 4 MiB tmpfs and an agent printing 1 MB a feature, the log
    that no longer fits is cut, the run goes on, the daemon never exits, the problem is
    reported, and everything continues once space returns: each feature completes once."""
    d = make_daemon()
    d.state = tiny_fs / "state"
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * (2 * MIB + MIB // 2))
    d.start()
    d.drop("loud.txt", [f"loud{i} big={MIB}" for i in range(3)])
    seen = d.wait_for(
        lambda: next((p for p in d.status()["problems"] if p["kind"] == "log_write"), None),
        timeout=60,
        what="the cut log reported",
    )
    assert "incomplete" in seen["message"] and "No space left" in seen["message"]
    assert seen["batch_id"] is not None
    assert d.proc is not None and d.proc.poll() is None  # the daemon lives on
    filler.unlink()  # space returns
    [state] = d.wait_finished(1, timeout=60)
    assert d.proc.poll() is None
    assert state["status"] == "completed"
    done = Counter(
        h["feature_index"] for h in state["processing_history"] if h["outcome"] == "completed"
    )
    assert done == {0: 1, 1: 1, 2: 1}
    runs = Counter(r["feature"] for r in d.agent_runs() if r["event"] == "start")
    assert all(n == 1 for n in runs.values()), runs
    sizes = sorted(
        p.stat().st_size for p in (d.state / "batches" / state["batch_id"] / "logs").iterdir()
    )
    assert sizes[0] < MIB <= sizes[-1]  # one log was cut, a later one is whole
    d.wait_for(lambda: d.status()["problems"] == [], what="the problems cleared")
