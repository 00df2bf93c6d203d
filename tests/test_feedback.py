"""The last failure fed back (SPEC 14): ``{last_error}``, the text of BATCHD_LAST_ERROR_FILE
(cut, cleaned, secrets redacted) and the file itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchd import feedback
from batchd.model import Attempt, Outcome

KIB16 = feedback.FEEDBACK_BYTES


def attempt(index: int, n: int, outcome: Outcome | None, message: str | None = None) -> Attempt:
    return Attempt(
        feature_index=index,
        attempt=n,
        started_at="2026-11-24T05:00:00.000000Z",
        outcome=outcome,
        error_message=message,
        exit_code=1 if outcome == "failed" else None,
    )


# --- {last_error} -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], ""),
        ([attempt(0, 1, None)], ""),
        (
            [attempt(0, 1, "failed", "verify failed (exit 1): E assert")],
            "verify failed (exit 1): E assert",
        ),
        ([attempt(0, 1, "timed_out", "timed out after 60 s")], "timed out after 60 s"),
        (
            [attempt(0, 1, "failed", "first"), attempt(0, 2, "failed", "second")],
            "second",
        ),
        # a rerun after an interruption or a usage limit still gets the failure before it
        ([attempt(0, 1, "failed", "why"), attempt(0, 2, "interrupted", "stop")], "why"),
        ([attempt(0, 1, "failed", "why"), attempt(0, 2, "limited", "limit")], "why"),
        ([attempt(1, 1, "failed", "another feature's")], ""),
        ([attempt(0, 1, "failed", None)], "the attempt failed (exit code 1)"),
        (
            [attempt(0, 1, "failed", "line\nbreak \x1b[31mred token=hunter2")],
            "line break red token=[REDACTED]",
        ),
    ],
)
def test_last_error_is_the_previous_failure_of_this_feature(
    history: list[Attempt], expected: str
) -> None:
    """``{last_error}``: empty on the first attempt, else the latest failure's message of
    this feature, sanitised (one line, no escapes, no secrets)."""
    assert feedback.last_error(history, 0) == expected


# --- the file's text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "cleaned"),
    [
        (b"\x1b[31mFAILED\x1b[0m test_x\n", "FAILED test_x"),
        (b"\x1b]0;window title\x07plain\n", "plain"),
        (b"bell\x07 nul\x00 del\x7f end\n", "bell nul del end"),
        (b"crlf\r\nline two\r\n", "crlf\nline two"),
        (b"50%\r100%\n", "50% 100%"),
        (b"tab\there\n", "tab here"),
        (b"GH_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz012345\n", "GH_TOKEN=[REDACTED]"),
        (b"key sk-ant-api03-abcdefghijklmnopqrstuvwx done\n", "key [REDACTED] done"),
        (b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y\n", "Authorization: Bearer [REDACTED]"),
        (b"Bearer\n  abcdefghijklmnop\n", "Bearer [REDACTED]"),
        (b"password=hunter2 and more\n", "password=[REDACTED] and more"),
        (b"AKIAABCDEFGHIJKLMNOP\n", "[REDACTED]"),
        ("ünïcode ✓\n".encode(), "ünïcode ✓"),
        (b"\xff\xfe broken utf-8\n", "\ufffd\ufffd broken utf-8"),
    ],
)
def test_the_output_in_the_file_is_cleaned_with_newlines_kept(output: bytes, cleaned: str) -> None:
    """Escape sequences and control characters out, secrets redacted (one split by a line
    end too), newlines kept."""
    text = feedback.feedback_text("verify failed (exit 1): x", check_output=output)
    assert (
        text == f"verify failed (exit 1): x\n\n--- the end of the check's output ---\n{cleaned}\n"
    )


@pytest.mark.parametrize("char", ["a", "é", "✓", "😀"])
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_the_output_is_cut_to_16_kib_on_a_character_boundary(char: str, shift: int) -> None:
    """Output past 16 KiB keeps its last 16 KiB of UTF-8, starting on a whole character
    (never a replacement character from a cut one), ending with the last line."""
    output = ("x" * shift + char * (40_000 // len(char.encode())) + "\nLAST LINE\n").encode()
    text = feedback.feedback_text("m", check_output=output)
    tail = text.split("---\n", 1)[1]
    assert len(tail.encode()) <= KIB16 + 1 and len(tail.encode()) > KIB16 - 4
    assert tail.endswith("\nLAST LINE\n") and "\ufffd" not in tail
    assert tail[0] == char


def test_a_raw_tail_that_starts_inside_a_character_does_not_start_with_garbage() -> None:
    """The check's 16 KiB raw tail may begin inside a character: that piece is dropped."""
    raw = "✓ok\n".encode()[1:]
    assert feedback.feedback_text("m", check_output=raw).endswith("---\nok\n")


def test_the_check_output_comes_before_stderr_and_nothing_means_the_message_alone() -> None:
    """The failed check's output when there is some, else the attempt's stderr, else only
    the (sanitised) message."""
    both = feedback.feedback_text("m", check_output=b"from check\n", stderr=b"from stderr\n")
    assert both == "m\n\n--- the end of the check's output ---\nfrom check\n"
    stderr = feedback.feedback_text("m", check_output=b"", stderr=b"Traceback\n  boom\n")
    assert stderr == "m\n\n--- the end of the agent's stderr ---\nTraceback\n  boom\n"
    assert feedback.feedback_text("two\nlines") == "two lines\n"
    assert feedback.feedback_text("m", stderr=b"\x1b[0m\n\n") == "m\n"


def test_last_bytes_keeps_short_text_and_cuts_long_text_on_a_character() -> None:
    """Text within the limit is returned as is; a longer one loses whole characters only."""
    assert feedback.last_bytes("héllo", 100) == "héllo"
    assert feedback.last_bytes("ééé", 3) == "é"
    assert feedback.last_bytes("ééé", 4) == "éé"


# --- the file -----------------------------------------------------------------------------


def private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "feedback"
    d.mkdir(mode=0o700)
    return d


def test_the_file_is_written_0600_and_an_old_one_is_replaced(tmp_path: Path) -> None:
    """The file is 0600 with the text; one left by an earlier run is replaced."""
    d = private_dir(tmp_path)
    (d / "last-error").write_text("stale")
    path = feedback.write_feedback_file(d, "last-error", "verify failed ✓\n")
    assert path == d / "last-error"
    assert path.read_text() == "verify failed ✓\n"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_link_where_the_file_goes_is_replaced_never_followed(tmp_path: Path) -> None:
    """A symlink at the file's name is removed; its target is untouched."""
    d = private_dir(tmp_path)
    target = tmp_path / "target"
    target.write_text("keep me")
    (d / "last-error").symlink_to(target)
    path = feedback.write_feedback_file(d, "last-error", "new")
    assert not path.is_symlink() and path.read_text() == "new"
    assert target.read_text() == "keep me"


def test_a_directory_that_is_not_private_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    """A group- or world-accessible directory, a link to a directory, and a name with a
    slash are refused with an error that says what is wrong."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    with pytest.raises(ValueError, match="mode 0700"):
        feedback.write_feedback_file(open_dir, "f", "x")
    d = private_dir(tmp_path)
    (tmp_path / "link").symlink_to(d)
    with pytest.raises(ValueError, match="not a directory"):
        feedback.write_feedback_file(tmp_path / "link", "f", "x")
    for bad in ("../escape", "", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            feedback.write_feedback_file(d, bad, "x")
    assert list(d.iterdir()) == []
