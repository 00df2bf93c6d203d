"""The agents' words from a Slurm job's log (SPEC 12, 13), on a real private cluster.

The job prints a real agent output; the engine reads codex's events from the
whole log (from the attempt's offset: a re-run appends to the same file) and
the classifier judges them as for a local run. Skips where the cluster cannot
run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from batchd.classify import Classifier, RunnerTraits
from batchd.engines import LaunchSpec
from batchd.engines.output import codex_facts_of_log
from batchd.engines.slurm import SlurmEngine
from tests.slurm_cluster import Cluster

pytestmark = pytest.mark.anyio

AGENTS = Path(__file__).resolve().parent / "data" / "agents"
CODEX = AGENTS / "codex-0.169.0-offline.jsonl"


def test_log_facts_start_at_the_attempts_offset(tmp_path: Path) -> None:
    """What an earlier attempt appended before the offset is not this attempt's."""
    log = tmp_path / "0.1.log"
    earlier = json.dumps({"type": "thread.started", "thread_id": "earlier"}) + "\n"
    log.write_text(earlier + CODEX.read_text())
    facts = codex_facts_of_log(log, len(earlier))
    assert facts.thread_id == "01a24526-02bc-7300-9bf7-32a40f403d47" and facts.error_pending
    assert codex_facts_of_log(tmp_path / "missing.log", 0).seen is False


async def test_a_codex_job_offline_is_a_transient_failure(
    slurm_cluster: Cluster, tmp_path: Path
) -> None:
    """The real offline codex stream printed by a job (exit 0): failed, transient, with
    the last error event and the thread as the session."""
    state = tmp_path / "state"
    (tmp_path / "repo").mkdir()
    engine = SlurmEngine(state, [], 0.2, slurm_cluster.env)
    spec = LaunchSpec(
        run_id=f"codex-{os.getpid()}",
        argv=["cat", str(CODEX)],
        env=dict(os.environ),
        cwd=str(tmp_path / "repo"),
        log_path=state / "batches" / "b1" / "logs" / "0.1.log",
    )
    try:
        run = await engine.start(spec)
        with anyio.fail_after(60):
            raw = await run.wait()
    finally:
        await engine.aclose()
    assert (raw.exit_code, raw.cluster_state) == (0, "COMPLETED")
    v = Classifier.build().judge(raw, RunnerTraits(output_format="codex-jsonl"))
    assert (v.outcome, v.failure_type) == ("failed", "transient")
    assert v.session_id == "01a24526-02bc-7300-9bf7-32a40f403d47"
    assert v.message is not None and v.message.endswith("error sending request)")
