"""The control socket answers while a burst of files is taken in (issue 24 §5): the spool
yields to the event loop after every file. Real daemon, both backends."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]

BURST = 800


def test_status_answers_while_a_burst_of_files_is_taken_in(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """800 requests dropped at once: status replies within 2 s while they are still being
    taken in (seen: a reply that counts some of them but not all), and all become batches."""
    d = make_daemon()
    d.start()
    d.ok("pause")  # nothing runs: the daemon only takes files in
    staging = d.root / "staging"
    staging.mkdir()
    for i in range(BURST):
        (staging / f"r{i:04}.json").write_text(json.dumps({"features": [f"f{i}"]}))
    for i in range(BURST):
        os.rename(staging / f"r{i:04}.json", d.spool / f"r{i:04}.json")
    samples: list[tuple[float, int]] = []

    def taken() -> bool:
        t0 = time.monotonic()
        st: dict[str, Any] = d.status()
        samples.append((time.monotonic() - t0, len(st["batches"])))
        return len(st["batches"]) == BURST

    d.wait_for(taken, timeout=300, what=f"{BURST} batches")
    during = [(rtt, n) for rtt, n in samples if n < BURST]
    assert any(n > 0 for _, n in during), samples  # a reply while files were taken in
    slow = [(round(rtt, 3), n) for rtt, n in during if rtt >= 2.0]
    assert not slow, slow
    assert d.batch_states()[-1]["seq"] == BURST
