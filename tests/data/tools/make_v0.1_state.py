"""Make tests/data/v0.1-state with batchd 0.1.0 (commit 4ec6aef), before the engine redesign."""
import os, shutil, signal, sys, time, json
from pathlib import Path
sys.path.insert(0, "/work/main")
from tests.harness import Daemon, agent_command

root = Path("/tmp/fx/run"); shutil.rmtree(root, ignore_errors=True)
config = """
[retry]
backoff_initial = 3600
jitter = "none"
[breaker]
threshold = 2
on_open = "pause"
"""
d = Daemon(root, "asyncio", config=config)
d.start()
assert d.ctl("consent", "--enable").returncode == 0
def sid(n):
    return d.wait_for(lambda: next((s for s in d.batch_states() if s["seq"] == n), None), what=f"seq {n}")
d.drop("a-completed.txt", ["ok a0", "ok a1"])
a = sid(1); d.wait_for(lambda: d.finished(1))
d.drop("b-failed.txt", ["ok b0", "exit=1 stderr=SyntaxError:_bad_b1", "ok b2"])
sid(2); d.wait_for(lambda: d.finished(2))
d.drop("c-breaker.txt", ["exit=1 stderr=TypeError:_c0", "exit=1 stderr=TypeError:_c1", "ok c2"])
c = sid(3)
d.wait_for(lambda: sid(3)["status"] == "paused", what="C paused by breaker")
d.drop("d-retry.txt", ["fail_until=2 d0", "ok d1"])
dd = sid(4)
d.wait_for(lambda: d.retry_state(dd["batch_id"])["next_attempt_at"] is not None, what="D waiting")
d.ok("pause", batch_id=dd["batch_id"])
d.drop("e-running.txt", ["sleep=3 e0", "ok e1"])
e = sid(5)
d.wait_for(lambda: (d.status()["current"] or {}).get("batch_id") == e["batch_id"], what="E running")
d.wait_for(lambda: sid(5)["processing_history"] and sid(5)["processing_history"][-1]["pid"], what="E pid")
d.ok("resume", batch_id=dd["batch_id"])
d.drop("f-pending.txt", ["ok f0"])
sid(6)
assert d.status()["current"]["batch_id"] == e["batch_id"]
d.kill9()
for rec in d.agent_runs():
    if rec["event"] == "start":
        try: os.killpg(int(rec["pid"]), signal.SIGKILL)
        except ProcessLookupError: pass
for s in d.batch_states():
    print(s["seq"], s["batch_id"], s["status"], s["pause_reason"], s["current_index"], [(h["feature_index"], h["attempt"], h["outcome"]) for h in s["processing_history"]])
    print("   retry", d.retry_state(s["batch_id"]))
print(os.listdir(d.state))
dest = Path("/work/main/tests/data/v0.1-state")
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(d.state, dest, symlinks=True)
