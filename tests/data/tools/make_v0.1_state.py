"""Made tests/data/v0.1-state with batchd 0.1.0 (commit 4ec6aef), before the engine redesign.

Kept as the record of how the fixture was made; running it with a later batchd makes
a state dir of that later version, not this fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.harness import Daemon

CONFIG = """
[retry]
backoff_initial = 3600
jitter = "none"
[breaker]
threshold = 2
on_open = "pause"
"""


def main() -> None:
    root = Path("/tmp/fx/run")
    shutil.rmtree(root, ignore_errors=True)
    d = Daemon(root, "asyncio", config=CONFIG)
    d.start()
    assert d.ctl("consent", "--enable").returncode == 0

    def seq(n: int) -> dict[str, Any]:
        found = d.wait_for(
            lambda: next((s for s in d.batch_states() if s["seq"] == n), None), what=f"seq {n}"
        )
        return dict(found)

    d.drop("a-completed.txt", ["ok a0", "ok a1"])
    d.wait_for(lambda: d.finished(1))
    d.drop("b-failed.txt", ["ok b0", "exit=1 stderr=SyntaxError:_bad_b1", "ok b2"])
    d.wait_for(lambda: d.finished(2))
    d.drop("c-breaker.txt", ["exit=1 stderr=TypeError:_c0", "exit=1 stderr=TypeError:_c1", "ok c2"])
    d.wait_for(lambda: seq(3)["status"] == "paused", what="C paused by the breaker")
    d.drop("d-retry.txt", ["fail_until=2 d0", "ok d1"])
    waiting = seq(4)["batch_id"]
    d.wait_for(lambda: d.retry_state(waiting)["next_attempt_at"], what="D waiting to retry")
    d.ok("pause", batch_id=waiting)  # 0.1.0 let a waiting batch hold back the whole queue
    d.drop("e-running.txt", ["sleep=3 e0", "ok e1"])
    running = seq(5)["batch_id"]
    d.wait_for(lambda: (d.status()["current"] or {}).get("batch_id") == running, what="E runs")
    d.wait_for(lambda: seq(5)["processing_history"][-1]["pid"], what="E's pid recorded")
    d.ok("resume", batch_id=waiting)
    d.drop("f-pending.txt", ["ok f0"])
    seq(6)
    d.kill9()
    for rec in d.agent_runs():
        if rec["event"] == "start":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(rec["pid"]), signal.SIGKILL)
    dest = Path(__file__).resolve().parents[1] / "v0.1-state"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(d.state, dest, symlinks=True)


if __name__ == "__main__":
    main()
