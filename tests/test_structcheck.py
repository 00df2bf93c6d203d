"""Every problem of a config table at once, each naming its key (issue 23, item 6). Pure."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.config import ConfigProblems, FileConfig, check_file_config, decode_file_config
from batchd.structcheck import UNKNOWN, check


def test_each_bad_key_is_named_and_left_out() -> None:
    """Bad keys in several tables: one problem each; the good keys are kept."""
    raw = {
        "queue": {"slots": 0},
        "retry": {"max_global": 5, "jitter": "x", "what": 1},
        "runner": {"command": ["a", 3], "timeout": 9},
        "nope": {},
    }
    problems, kept, dropped = check(raw, FileConfig)
    assert problems == [
        "queue.slots: Expected int >= 1",
        "retry.jitter: 'x' is not one of full, none",
        f"retry.what: {UNKNOWN}",
        "runner.command[1]: Expected str, got int",
        f"nope: {UNKNOWN}",
    ]
    assert kept == {"queue": {}, "retry": {"max_global": 5}, "runner": {"timeout": 9}}
    assert dropped == {"queue.slots", "retry.jitter", "runner.command"}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"runners": 5}, "runners: Expected object, got int"),
        ({"runners": {"bad name!": {}}}, "runners.bad name!: Expected str matching regex"),
        ({"runners": {"codex": {"comand": ["x"]}}}, f"runners.codex.comand: {UNKNOWN}"),
        ({"runners": {"codex": {"timeout": -1}}}, "runners.codex.timeout: Expected float >= 0.0"),
        ({"runners": {"codex": "x"}}, "runners.codex: Expected object, got str"),
        ({"runner": []}, "runner: Expected object, got array"),
        ({"hooks": {"on_limit": "notify"}}, "hooks.on_limit: Expected array, got str"),
    ],
)
def test_profiles_and_whole_tables(raw: dict[str, Any], problem: str) -> None:
    """A profile's key is named under its profile; a table of the wrong type as a whole."""
    problems, _, _ = check(raw, FileConfig)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_decoding_raises_with_every_problem_and_checking_keeps_going() -> None:
    """decode_file_config raises ConfigProblems listing all; check_file_config returns
    the settings with each bad key at its default, and the semantic problems too."""
    raw = {"retry": {"max_global": -1}, "classify": {"permanent_patterns": ["ok", "("]}}
    with pytest.raises(ConfigProblems) as e:
        decode_file_config(raw, "c.toml")
    assert e.value.problems == [
        "c.toml: retry.max_global: Expected int >= 0",
        "c.toml: classify.permanent_patterns[1]: invalid regular expression: "
        "missing ), unterminated subpattern at position 0",
    ]
    assert str(e.value) == "; ".join(e.value.problems)
    cfg, problems, dropped = check_file_config(raw, "c.toml")
    assert cfg.retry.max_global == FileConfig().retry.max_global
    assert cfg.classify.permanent_patterns == ["ok", "("]
    assert (len(problems), dropped) == (2, frozenset({"retry.max_global"}))
