"""Spool input (SPEC section 3): plain feature files and ``.json`` batch requests. Pure.

Every rejection names the file, and for feature files the line; nothing but
``ParseError`` ever escapes ``parse_spool_file``, whatever the bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchd.parse import Limits, Options, ParsedBatch, ParseError, parse_spool_file

L = Limits()


def parse(data: bytes | str, name: str = "todo.txt", limits: Limits = L) -> ParsedBatch:
    raw = data.encode() if isinstance(data, str) else data
    return parse_spool_file(name, raw, limits)


def refused(data: bytes | str, name: str = "todo.txt", limits: Limits = L) -> str:
    with pytest.raises(ParseError) as e:
        parse(data, name, limits)
    return str(e.value)


def request(**fields: Any) -> str:
    return json.dumps(fields)


# --- plain feature files: accepted ------------------------------------------------


def test_one_feature_a_line_name_defaults_to_file_name() -> None:
    """Each line is a feature; the batch is named after the spool file; no cwd by default."""
    got = parse("add login\nadd logout\n")
    assert got == ParsedBatch(features=["add login", "add logout"], name="todo.txt", cwd=None)
    assert (got.source_type, got.issue_numbers) == ("file", None)


def test_bom_is_dropped() -> None:
    """A UTF-8 byte order mark is not part of the first feature."""
    assert parse(b"\xef\xbb\xbffirst\nsecond\n").features == ["first", "second"]


def test_crlf_and_lf_mixed() -> None:
    """CRLF and LF line ends both work; no CR is left in a feature."""
    assert parse(b"a\r\nb\nc\r\n").features == ["a", "b", "c"]


def test_last_line_without_newline() -> None:
    """A final line without a newline is still a feature."""
    assert parse(b"a\nb").features == ["a", "b"]


def test_lines_are_stripped_blank_and_comment_lines_skipped() -> None:
    """Surrounding whitespace is dropped; blank lines and # comments are skipped."""
    got = parse("# a comment\n\n   \n  spaced out  \n\t# indented comment\nlast\n")
    assert got.features == ["spaced out", "last"]


def test_duplicates_dropped_first_kept_order_kept() -> None:
    """A repeated feature is dropped; the first occurrence keeps its place."""
    assert parse("b\na\nb\nc\na\n  c  \n").features == ["b", "a", "c"]


def test_tab_inside_a_feature_is_allowed() -> None:
    """Tab is the one control character a feature may contain."""
    assert parse("a\tb\n").features == ["a\tb"]


def test_unicode_is_kept() -> None:
    """Non-ASCII text is a feature like any other."""
    assert parse("Füge Ümlaute hinzu — 日本語\n").features == ["Füge Ümlaute hinzu — 日本語"]


def test_cwd_and_name_directives() -> None:
    """'# batchd: cwd = /x' and '# batchd: name = y' before the first feature set cwd and name."""
    got = parse("# batchd: cwd = /srv/app\n# batchd: name = Auth backlog\none\n")
    assert (got.cwd, got.name, got.features) == ("/srv/app", "Auth backlog", ["one"])


def test_directive_spacing_is_flexible() -> None:
    """Directives are recognised with or without spaces around ':' and '='."""
    got = parse("#batchd:cwd=/x\n#   batchd:   name=  y  \na\n")
    assert (got.cwd, got.name) == ("/x", "y")


def test_directives_after_first_feature_are_plain_comments() -> None:
    """A directive after the first feature is an ordinary comment: no effect, no error."""
    got = parse("one\n# batchd: cwd = /late\n# batchd: name = late\n# batchd: shell = sh\ntwo\n")
    assert (got.cwd, got.name, got.features) == (None, "todo.txt", ["one", "two"])


def test_directive_after_comments_and_blanks_still_counts() -> None:
    """Comments and blank lines before a directive do not end the directive section."""
    got = parse("# my list\n\n# batchd: cwd = /w\na\n")
    assert got.cwd == "/w"


def test_empty_name_directive_falls_back_to_file_name() -> None:
    """'# batchd: name =' with nothing after it leaves the file name as the batch name."""
    assert parse("# batchd: name =\na\n").name == "todo.txt"


def test_ordinary_comment_mentioning_batchd_is_not_a_directive() -> None:
    """A comment without 'key = value' is just a comment."""
    assert parse("# batchd: processes this file\na\n").features == ["a"]


# --- plain feature files: every rejection reason -----------------------------------


@pytest.mark.parametrize(
    ("data", "limits", "needle"),
    [
        pytest.param(b"ok\n\xff\xfe\n", L, "line 2: invalid UTF-8", id="invalid-utf8"),
        pytest.param(b"ok\nfine\n\xc3(\n", L, "line 3: invalid UTF-8", id="invalid-utf8-line3"),
        pytest.param(b"ok\nbad\x00x\n", L, "line 2: control character U+0000", id="nul"),
        pytest.param(b"a\x1b[31mred\n", L, "line 1: control character U+001B", id="esc"),
        pytest.param(b"a\nb\x07\n", L, "line 2: control character U+0007", id="bel"),
        pytest.param(b"a\rb\n", L, "line 1: control character U+000D", id="bare-cr"),
        pytest.param(b"x\x0bz\n", L, "line 1: control character U+000B", id="vtab"),
        pytest.param(b"ok\n\x7f\n", L, "line 2: control character U+007F", id="del"),
        pytest.param("ok\nc1\x85\n".encode(), L, "line 2: control character U+0085", id="c1"),
        pytest.param(b"# c\n\x00\n", L, "line 2: control character", id="nul-on-own-line"),
        pytest.param(
            b"x" * 11 + b"\n",
            Limits(max_line_chars=10),
            "line 1: 11 characters, over spool.max_line_chars (10)",
            id="line-too-long",
        ),
        pytest.param(
            b"a\nb\nc\n",
            Limits(max_features=2),
            "line 3: more than spool.max_features (2)",
            id="too-many-features",
        ),
        pytest.param(b"# only\n\n  \n", L, "no features", id="only-comments"),
        pytest.param(b"", L, "no features", id="empty"),
        pytest.param(b"\xef\xbb\xbf", L, "no features", id="only-bom"),
        pytest.param(
            b"# batchd: cwd = relative/x\na\n",
            L,
            "line 1: cwd 'relative/x' is not an absolute path",
            id="relative-cwd",
        ),
        pytest.param(b"# batchd: cwd =\na\n", L, "line 1: cwd '' is not an absolute", id="no-cwd"),
        pytest.param(b"\n# batchd: shell = sh\na\n", L, "line 2: unknown directive", id="unknown"),
    ],
)
def test_every_rejection_names_file_and_line(data: bytes, limits: Limits, needle: str) -> None:
    """Each rejection reason of SPEC section 3 is refused with the file (and line) named."""
    message = refused(data, "todo.txt", limits)
    assert message.startswith("todo.txt: ")
    assert needle in message


def test_file_over_max_file_bytes_names_the_file_and_limit() -> None:
    """A file larger than spool.max_file_bytes is refused before it is decoded."""
    message = refused(b"a\n" * 10, "big.txt", Limits(max_file_bytes=5))
    assert message.startswith("big.txt: file is 20 bytes, over spool.max_file_bytes (5)")


def test_limits_are_inclusive() -> None:
    """Exactly max_line_chars, max_features and max_file_bytes are still accepted."""
    limits = Limits(max_file_bytes=8, max_features=2, max_line_chars=3)
    assert parse(b"abc\nde\n", limits=limits).features == ["abc", "de"]


def test_duplicates_do_not_count_towards_max_features() -> None:
    """Dropped duplicates do not count against spool.max_features."""
    assert parse("a\nb\na\nb\n", limits=Limits(max_features=2)).features == ["a", "b"]


def test_tab_is_allowed_but_counts_towards_line_length() -> None:
    """A tab is allowed and counted in the line length."""
    assert refused("a\t\tb\n", limits=Limits(max_line_chars=3)).startswith("todo.txt: line 1: ")


def test_invalid_utf8_reports_byte_offset() -> None:
    """The invalid UTF-8 message says which byte and what to do."""
    message = refused(b"ab\ncd\xff\n")
    assert "line 2: invalid UTF-8 at byte 5" in message and "UTF-8" in message


def test_unknown_directive_lists_the_known_ones() -> None:
    """The unknown-directive message names the known directives (the fix)."""
    message = refused("# batchd: env = x\na\n")
    assert "'# batchd: cwd = /abs/path'" in message and "'# batchd: name = text'" in message


def test_name_directive_with_control_character_is_refused() -> None:
    """A batch name cannot smuggle control characters (they are refused at the line)."""
    message = refused(b"# batchd: name = a\x1bb\nx\n")
    assert message.startswith("todo.txt: line 1: control character")


# --- batch requests (*.json) --------------------------------------------------------


def test_request_with_every_field() -> None:
    """A batch request is decoded with every field; features stripped and deduplicated."""
    got = parse(
        request(
            features=["x", " y ", "z"],
            source_type="github_issues",
            issue_numbers=[3, 4, 5],
            cwd="/w",
            name="n",
        ),
        "r.json",
    )
    assert got == ParsedBatch(
        features=["x", "y", "z"],
        name="n",
        cwd="/w",
        source_type="github_issues",
        issue_numbers=[3, 4, 5],
    )


def test_request_minimal_defaults() -> None:
    """Only 'features' is required: file source, no cwd, named after the spool file."""
    got = parse(request(features=["a", "a", " ", "b"]), "req.json")
    assert got == ParsedBatch(features=["a", "b"], name="req.json")


def test_request_nulls_are_allowed() -> None:
    """Optional fields may be null."""
    got = parse(request(features=["a"], issue_numbers=None, cwd=None, name=None), "r.json")
    assert (got.cwd, got.name, got.issue_numbers) == (None, "r.json", None)


def test_request_tab_allowed() -> None:
    """A tab inside a requested feature is allowed, as in plain files."""
    assert parse(request(features=["a\tb"]), "r.json").features == ["a\tb"]


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        pytest.param('{"features": ["a"], "shell": "rm"}', "unknown field `shell`", id="unknown"),
        pytest.param('{"features": "a"}', "Expected `array`", id="features-not-list"),
        pytest.param('{"features": [1]}', "Expected `str`", id="feature-not-str"),
        pytest.param('{"features": null}', "Expected `array`", id="features-null"),
        pytest.param('{"name": "x"}', "missing required field `features`", id="no-features"),
        pytest.param('{"features": ["a"], "cwd": 5}', "`$.cwd`", id="cwd-not-str"),
        pytest.param('{"features": ["a"], "name": []}', "`$.name`", id="name-not-str"),
        pytest.param(
            '{"features": ["a"], "issue_numbers": ["1"]}', "`$.issue_numbers[0]`", id="issue-str"
        ),
        pytest.param(
            '{"features": ["a"], "issue_numbers": [true]}', "`$.issue_numbers[0]`", id="issue-bool"
        ),
        pytest.param('{"features": ["a"], "source_type": "ftp"}', "source_type", id="bad-source"),
        pytest.param('{"features": []}', "no features", id="empty-list"),
        pytest.param('{"features": [" ", ""]}', "no features", id="blank-features"),
        pytest.param('{"features": ["a"], "cwd": "rel"}', "is not an absolute path", id="rel-cwd"),
        pytest.param('{"features": ["a"], "cwd": "/a\\tb"}', "control character", id="cwd-tab"),
        pytest.param('{"features": ["a\\u0007"]}', "features[0]: control character U+0007", id="b"),
        pytest.param('{"features": ["ok", "x\\ny"]}', "features[1]: control character", id="nl"),
        pytest.param('{"features": ["a"], "name": "x\\u001b"}', "name: name contains", id="name"),
        pytest.param(
            '{"features": ["a"], "source_type": "github_issues"}',
            "one issue number per feature",
            id="github-no-numbers",
        ),
        pytest.param(
            '{"features": ["a", "b"], "source_type": "github_issues", "issue_numbers": [1]}',
            "one issue number per feature",
            id="github-count-mismatch",
        ),
        pytest.param(
            '{"features": ["a"], "issue_numbers": [0]}', "0 is not a positive integer", id="zero"
        ),
        pytest.param(
            '{"features": ["a"], "issue_numbers": [-3]}', "-3 is not a positive", id="negative"
        ),
        pytest.param("{not json", "not valid JSON", id="malformed"),
        pytest.param("", "not valid JSON", id="empty-file"),
        pytest.param(b"\xff\xfe{}", "not valid JSON", id="invalid-utf8"),
        pytest.param("[]", "Expected `object`", id="array"),
    ],
)
def test_request_rejections_name_the_file(req: str | bytes, needle: str) -> None:
    """Unknown fields, wrong types, bad values and malformed JSON are refused, file named."""
    message = refused(req, "r.json")
    assert message.startswith("r.json: ")
    assert needle in message


@pytest.mark.parametrize(
    ("req", "limits", "needle"),
    [
        pytest.param(
            request(features=["a", "b", "c"]),
            Limits(max_features=2),
            "3 features, over spool.max_features (2)",
            id="max-features",
        ),
        pytest.param(
            request(features=["ok", "x" * 20]),
            Limits(max_line_chars=10),
            "features[1]: 20 characters, over spool.max_line_chars (10)",
            id="max-line-chars",
        ),
        pytest.param(
            request(features=["a"] * 100),
            Limits(max_file_bytes=50),
            "over spool.max_file_bytes (50)",
            id="max-file-bytes",
        ),
    ],
)
def test_request_limits(req: str, limits: Limits, needle: str) -> None:
    """Batch requests obey the same limits as plain files."""
    message = refused(req, "r.json", limits)
    assert message.startswith("r.json: ") and needle in message


def test_request_duplicates_do_not_count_towards_max_features() -> None:
    """max_features applies to the deduplicated list."""
    got = parse(request(features=["a", "b", "a"]), "r.json", Limits(max_features=2))
    assert got.features == ["a", "b"]


def test_only_json_suffix_is_a_request() -> None:
    """A JSON-looking plain file is a feature file: its line is the feature."""
    got = parse('{"features": ["a"]}\n', "notes.txt")
    assert got.features == ['{"features": ["a"]}']


# --- property: nothing but ParseError, whatever the bytes ------------------------


def _check_parsed(got: ParsedBatch, limits: Limits) -> None:
    assert got.features and len(got.features) <= limits.max_features
    assert len(set(got.features)) == len(got.features)
    for feature in got.features:
        assert feature and feature == feature.strip()
        assert len(feature) <= limits.max_line_chars
        assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in feature)


SMALL = Limits(max_file_bytes=400, max_features=8, max_line_chars=40)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["todo.txt", "todo", "req.json"]))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes, name: str) -> None:
    """Any bytes, as a plain name or a .json name, either parse cleanly or raise ParseError."""
    try:
        got = parse_spool_file(name, data, SMALL)
    except ParseError as e:
        assert str(e).startswith(f"{name}: ")
        return
    _check_parsed(got, SMALL)


LINE_TEXT = st.text(
    alphabet=st.sampled_from([*"ab #:=/batchdcwdnme\t\r\x00\x1b\x85é\ufeff"]), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(st.lists(LINE_TEXT, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_line_shaped_input_only_raises_parse_error(lines: list[str], end: str) -> None:
    """Line-structured text near the directive and control-character rules never escapes."""
    data = end.join(lines).encode()
    try:
        got = parse_spool_file("todo.txt", data, SMALL)
    except ParseError as e:
        assert str(e).startswith("todo.txt: ")
        return
    _check_parsed(got, SMALL)
    assert got.cwd is None or got.cwd.startswith("/")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "features": JSONISH | st.lists(st.text(max_size=30), max_size=10),
            "source_type": st.sampled_from(["file", "github_issues", "x"]) | JSONISH,
            "issue_numbers": st.none() | st.lists(st.integers(-2, 5), max_size=10) | JSONISH,
            "cwd": st.none() | st.text(max_size=10) | st.just("/ok"),
            "name": st.none() | st.text(max_size=10),
            "extra": JSONISH,
        },
    )
)
def test_request_shaped_json_only_raises_parse_error(obj: dict[str, Any]) -> None:
    """Objects shaped like batch requests either parse cleanly or raise ParseError."""
    try:
        got = parse_spool_file("r.json", json.dumps(obj).encode(), SMALL)
    except ParseError as e:
        assert str(e).startswith("r.json: ")
        return
    _check_parsed(got, SMALL)
    if got.source_type == "github_issues":
        assert got.issue_numbers is not None and len(got.issue_numbers) == len(got.features)


# --- batch options: runner profile, check, worktree isolation (SPEC 13-15) -------------


def test_directives_choose_runner_check_and_worktree() -> None:
    """runner, verify (split as a shell would), isolation and parallel reach the batch."""
    data = (
        b"# batchd: runner = codex\n# batchd: verify = make 'test all'\n"
        b"# batchd: isolation = worktree\n# batchd: parallel = true\nf1\n"
    )
    parsed = parse_spool_file("todo.txt", data, Limits(runners=frozenset({"default", "codex"})))
    assert parsed.options == Options(
        runner="codex", verify=["make", "test all"], isolation="worktree", parallel=True
    )


def test_no_directives_mean_the_default_profile_and_no_options() -> None:
    """A plain file runs on [runner] (profile 'default') with no check of its own."""
    assert parse_spool_file("todo.txt", b"f1\n", Limits()).options == Options()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            b"# batchd: runner = nope\nf\n",
            "todo.txt: line 1: unknown runner profile 'nope'; the profiles are codex, default",
        ),
        (b"# batchd: verify =   \nf\n", "todo.txt: line 1: verify is empty"),
        (b"# batchd: verify = make 'x\nf\n", "todo.txt: line 1: verify: No closing quotation"),
        (b"# batchd: isolation = docker\nf\n", "todo.txt: line 1: isolation = 'docker'"),
        (b"# batchd: parallel = yes\nf\n", "todo.txt: line 1: parallel = 'yes'"),
        (b"# batchd: parallel = true\nf\n", "todo.txt: line 1: parallel = true needs isolation"),
    ],
)
def test_bad_batch_options_are_refused_naming_the_line(text: bytes, expected: str) -> None:
    """Each bad directive is refused with its line and what to write instead."""
    with pytest.raises(ParseError) as e:
        parse_spool_file("todo.txt", text, Limits(runners=frozenset({"default", "codex"})))
    assert str(e.value).startswith(expected)


def test_request_options_are_checked_like_directives() -> None:
    """A .json request's runner/verify/isolation/parallel follow the same rules."""
    limits = Limits(runners=frozenset({"default"}))
    ok = parse_spool_file(
        "r.json",
        b'{"features": ["a"], "verify": ["make", "test"], "isolation": "worktree", '
        b'"parallel": true}',
        limits,
    )
    assert ok.options == Options(verify=["make", "test"], isolation="worktree", parallel=True)
    for body, expected in (
        (b'{"features": ["a"], "runner": "codex"}', "r.json: runner: unknown runner profile"),
        (b'{"features": ["a"], "verify": []}', "r.json: verify: give the check"),
        (b'{"features": ["a"], "parallel": true}', "r.json: parallel: parallel = true needs"),
        (b'{"features": ["a"], "isolation": "vm"}', "r.json: invalid batch request"),
    ):
        with pytest.raises(ParseError) as e:
            parse_spool_file("r.json", body, limits)
        assert str(e.value).startswith(expected), str(e.value)
