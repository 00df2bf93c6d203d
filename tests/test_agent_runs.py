"""The agents' real output through real runner processes, on both backends.

A runner prints a file of ``tests/data/agents/`` verbatim and exits with the
status the real agent had; the local engine runs it and the classifier judges
what the engine observed, as the daemon does. A long codex run shows why the
engine reads codex's events as they stream: its facts lie far before the
256 KiB tail.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from batchd.agents import codex_facts
from batchd.classify import Classifier, RawResult, RunnerTraits
from batchd.engines import LaunchSpec
from batchd.engines.local import LocalEngine
from batchd.logsink import STDOUT_TAIL

pytestmark = pytest.mark.anyio

AGENTS = Path(__file__).resolve().parent / "data" / "agents"
NOW = 1795496400.0
TRAITS = RunnerTraits(program="agent", user="alice")  # output_format auto


async def run(tmp_path: Path, argv: list[str]) -> RawResult:
    spec = LaunchSpec(
        run_id="test-run",
        argv=argv,
        env=dict(os.environ),
        cwd=str(tmp_path),
        log_path=tmp_path / "attempt.log",
    )
    engine = LocalEngine()
    try:
        started = await engine.start(spec)
        with anyio.fail_after(60):
            return await started.wait()
    finally:
        await engine.aclose()


async def print_file(tmp_path: Path, name: str, code: int) -> RawResult:
    return await run(
        tmp_path, ["sh", "-c", 'cat "$1"; exit "$2"', "sh", str(AGENTS / name), str(code)]
    )


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("claude-2.1.328-not-logged-in.json", 1, ("interrupted", None, "agent_login")),
        ("claude-2.1.328-offline-final.json", 1, ("failed", "transient", None)),
        ("codex-0.169.0-offline.jsonl", 0, ("failed", "transient", None)),
        ("codex-0.169.0-offline.jsonl", 1, ("failed", "transient", None)),
    ],
)
async def test_the_real_outputs_printed_by_a_runner(
    tmp_path: Path, name: str, code: int, expected: tuple[str, str | None, str | None]
) -> None:
    """Logged out: login trouble; offline Claude and codex: transient failures."""
    raw = await print_file(tmp_path, name, code)
    assert (
        raw.exit_code == code
        and (tmp_path / "attempt.log").read_bytes() == (AGENTS / name).read_bytes()
    )
    v = Classifier.build().judge(raw, TRAITS, now=NOW)
    assert (v.outcome, v.failure_type, v.trouble) == expected, v
    assert v.session_id is not None


async def test_codex_reconnects_then_completes(tmp_path: Path) -> None:
    """The offline stream followed by a turn.completed, exit 0: completed, tokens counted."""
    done = tmp_path / "done.jsonl"
    done.write_text(
        json.dumps({"type": "turn.completed", "usage": {"input_tokens": 40, "output_tokens": 2}})
        + "\n"
    )
    raw = await run(tmp_path, ["cat", str(AGENTS / "codex-0.169.0-offline.jsonl"), str(done)])
    v = Classifier.build().judge(raw, TRAITS, now=NOW)
    assert (v.outcome, v.tokens, v.tokens_estimated) == ("completed", 42, False)
    assert v.session_id == "01a24526-02bc-7300-9bf7-32a40f403d47"


LONG_RUN = r"""
import json, sys
def event(**obj):
    sys.stdout.write(json.dumps(obj) + "\n")
event(type="thread.started", thread_id="long-thread")
event(type="turn.started")
event(type="turn.completed", usage={"input_tokens": 1000, "output_tokens": 200})
event(type="turn.started")
for i in range(int(sys.argv[1])):
    event(type="item.completed", item={"type": "command_execution", "aggregated_output": "x" * 1000})
event(type="error", message="stream disconnected before completion")
"""


async def test_a_long_codex_run_is_read_whole_as_it_streams(tmp_path: Path) -> None:
    """Past the 256 KiB tail (thread id and first turn long gone from it): the session,
    the tokens and the pending error are still exact."""
    items = 3 * STDOUT_TAIL // 1000
    raw = await run(tmp_path, [sys.executable, "-c", LONG_RUN, str(items)])
    assert raw.output_bytes > 3 * STDOUT_TAIL
    assert codex_facts(raw.stdout_tail).thread_id is None  # the tail alone lost it
    v = Classifier.build().judge(raw, TRAITS, now=NOW)
    assert (v.outcome, v.failure_type, v.session_id) == ("failed", "transient", "long-thread")
    assert (v.tokens, v.tokens_estimated) == (1200, False)
    assert (
        v.message
        == "codex reported an error and its turn did not complete: stream disconnected before completion"
    )
