"""The daemon's log lines: journald priorities when stderr is the journal, one line per event."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd.logformat import journal_stream_matches, setup_logging

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z batchd\[\d+\]: [A-Z]+ ")


@pytest.fixture
def batchd_logger() -> Iterator[logging.Logger]:
    """The ``batchd`` logger, restored to its previous handlers and level afterwards."""
    logger = logging.getLogger("batchd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


LOG_EVERY_LEVEL = """
import logging, sys
from batchd.logformat import setup_logging
setup_logging(logging.DEBUG)
setup_logging(logging.DEBUG)
log = logging.getLogger("batchd.engine")
log.critical("c"); log.error("e"); log.warning("w"); log.info("i"); log.debug("d")
"""


def log_every_level(tmp_path: Path, journal_stream: str | None, *, name_self: bool) -> list[str]:
    """Run LOG_EVERY_LEVEL with stderr in a file; return the lines it wrote."""
    stderr_path = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(stderr_path, "wb") as f:
        if name_self:
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run(
            [sys.executable, "-c", LOG_EVERY_LEVEL], env=env, stderr=f, check=True, timeout=60
        )
    return stderr_path.read_text().splitlines()


def test_journald_prefixes_when_journal_stream_names_stderr(tmp_path: Path) -> None:
    """JOURNAL_STREAM = stderr's dev:ino: <3>/<4>/<6>/<7> prefixes, no timestamp, one line each."""
    lines = log_every_level(tmp_path, None, name_self=True)
    assert lines == ["<3>c", "<3>e", "<4>w", "<6>i", "<7>d"]


def test_plain_timestamped_lines_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    """JOURNAL_STREAM unset, naming another file, or garbage: timestamped lines, no prefix."""
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    for stream in (None, f"{st.st_dev}:{st.st_ino}", "garbage", "1:x"):
        lines = log_every_level(tmp_path, stream, name_self=False)
        assert [line.rsplit(" ", 2)[1:] for line in lines] == [
            ["CRITICAL", "c"],
            ["ERROR", "e"],
            ["WARNING", "w"],
            ["INFO", "i"],
            ["DEBUG", "d"],
        ], stream
        assert all(TIMESTAMPED.match(line) for line in lines), lines
        assert not any(line.startswith("<") for line in lines)


def test_journal_stream_matches_only_the_same_device_and_inode(tmp_path: Path) -> None:
    """journal_stream_matches compares JOURNAL_STREAM with fstat(fd), tolerating garbage."""
    with open(tmp_path / "a", "wb") as a, open(tmp_path / "b", "wb") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_stream_matches(env, a.fileno())
        assert not journal_stream_matches(env, b.fileno())
        for bad in ({}, {"JOURNAL_STREAM": ""}, {"JOURNAL_STREAM": "x:y"}):
            assert not journal_stream_matches(bad, a.fileno())
    assert not journal_stream_matches(env, 987654)  # a closed fd


def test_setup_logging_twice_logs_each_event_once(
    batchd_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Calling setup_logging again replaces its handler instead of adding a second one."""
    setup_logging(logging.INFO, env={})
    setup_logging(logging.INFO, env={})
    assert len(batchd_logger.handlers) == 1 and not batchd_logger.propagate
    logging.getLogger("batchd.test").info("once")
    logging.getLogger("batchd.test").debug("below the level")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(" INFO once") and TIMESTAMPED.match(lines[0])


def test_a_message_cannot_forge_a_log_line(
    batchd_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Newlines and escape sequences in a message (say, a file name) are shown escaped."""
    setup_logging(logging.INFO, env={})
    logging.getLogger("batchd").warning("rejected %s", "a.txt\n<3>fake\r\x1b[31mred\tok")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING rejected a.txt\\n<3>fake\\r\\x1b[31mred\tok")


def test_traceback_lines_keep_the_journal_priority(
    batchd_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under journald every line of a logged traceback carries the event's priority."""
    st = os.fstat(2)
    setup_logging(logging.INFO, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("batchd").exception("control: a connection failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "<3>control: a connection failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in lines)
