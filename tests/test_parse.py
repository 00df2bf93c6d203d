"""Spool parsing (SPEC section 3): every rejection names the line; nothing but ParseError escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchd.parse import Limits, ParseError, parse_spool_file

L = Limits()


def parse(data: bytes | str, name: str = "f.txt", limits: Limits = L):  # type: ignore[no-untyped-def]
    raw = data.encode() if isinstance(data, str) else data
    return parse_spool_file(name, raw, limits)


def test_bom_crlf_comments_blank_and_duplicates() -> None:
    """BOM dropped, CRLF handled, comments and blanks skipped, first duplicate kept in order."""
    got = parse(b"\xef\xbb\xbf# c\r\n\r\n  b  \r\na\r\nb\r\n# x\r\nc")
    assert got.features == ["b", "a", "c"] and got.name == "f.txt" and got.cwd is None


def test_directives_before_first_feature() -> None:
    """# batchd: cwd/name before the first feature set the batch's cwd and name."""
    got = parse("# batchd: cwd = /srv/app\n#batchd:name=My batch\none\n# batchd: cwd = /late\n")
    assert (got.cwd, got.name, got.features) == ("/srv/app", "My batch", ["one"])


@pytest.mark.parametrize(
    ("data", "limits", "needle"),
    [
        (b"ok\n\xff\xfe\n", L, "line 2: invalid UTF-8"),
        (b"ok\nbad\x00x\n", L, "line 2: control character U+0000"),
        (b"a\x1b[31mred\n", L, "line 1: control character U+001B"),
        (b"\x7f\n", L, "U+007F"),
        (
            b"x" * 11 + b"\n",
            Limits(max_line_chars=10),
            "line 1: 11 characters, over spool.max_line_chars",
        ),
        (b"a\nb\nc\n", Limits(max_features=2), "line 3: more than spool.max_features"),
        (b"a\n" * 10, Limits(max_file_bytes=5), "over spool.max_file_bytes"),
        (b"# only\n\n  \n", L, "no features"),
        (b"", L, "no features"),
        (b"# batchd: cwd = relative/x\na\n", L, "line 1: cwd 'relative/x' is not an absolute path"),
        (b"# batchd: shell = sh\na\n", L, "line 1: unknown directive"),
    ],
)
def test_every_rejection_names_file_and_line(data: bytes, limits: Limits, needle: str) -> None:
    """Each reason of SPEC section 3 is refused with the file and the line (or limit) named."""
    with pytest.raises(ParseError) as e:
        parse(data, "todo.txt", limits)
    assert str(e.value).startswith("todo.txt: ") and needle in str(e.value)


def test_tab_is_allowed_and_kept_inside() -> None:
    """A tab inside a feature is allowed."""
    assert parse("a\tb\n").features == ["a\tb"]


def test_json_request_ok() -> None:
    """A batch request is decoded with every field."""
    req = {
        "features": ["x", " y ", "x"],
        "source_type": "github_issues",
        "issue_numbers": [3, 4],
        "cwd": "/w",
        "name": "n",
    }
    got = parse(json.dumps(req), "r.json")
    assert (got.features, got.issue_numbers, got.cwd, got.name, got.source_type) == (
        ["x", "y"],
        [3, 4],
        "/w",
        "n",
        "github_issues",
    )


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        ('{"features": ["a"], "shell": "rm"}', "unknown field"),
        ('{"features": "a"}', "Expected `array`"),
        ('{"features": [1]}', "Expected `str`"),
        ('{"features": []}', "no features"),
        ('{"features": ["a"], "cwd": "rel"}', "absolute"),
        ('{"features": ["a\\u0007"]}', "features[0]: control character U+0007"),
        ('{"features": ["a"], "source_type": "github_issues"}', "one issue number per feature"),
        ('{"features": ["a"], "issue_numbers": [0]}', "positive"),
        ('{"features": ["a"], "source_type": "ftp"}', "source_type"),
        ("{not json", "not valid JSON"),
        ("[]", "Expected `object`"),
    ],
)
def test_json_request_rejections(req: str, needle: str) -> None:
    """Malformed, mistyped and over-limit requests are refused with the reason."""
    with pytest.raises(ParseError) as e:
        parse(req, "r.json")
    assert needle in str(e.value) and str(e.value).startswith("r.json: ")


def test_json_request_limits() -> None:
    """Requests obey the same limits as plain files."""
    with pytest.raises(ParseError, match="max_features"):
        parse(json.dumps({"features": ["a", "b", "c"]}), "r.json", Limits(max_features=2))
    with pytest.raises(ParseError, match="max_line_chars"):
        parse(json.dumps({"features": ["x" * 20]}), "r.json", Limits(max_line_chars=10))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["f.txt", "r.json"]))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes, name: str) -> None:
    """Any bytes under any name either parse or raise ParseError, nothing else."""
    try:
        got = parse_spool_file(name, data, Limits(max_features=50, max_line_chars=200))
    except ParseError:
        return
    assert got.features and all(f == f.strip() and f for f in got.features)
    assert len(set(got.features)) == len(got.features)
