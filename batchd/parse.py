"""Spool input validation: plain feature files and ``.json`` batch requests. Pure.

``parse_spool_file`` is the one function the daemon and ``batchctl submit``
both use, so a file that batchctl accepts is a file the daemon accepts. It
takes bytes and returns a ``ParsedBatch`` or raises ``ParseError``, whose
message names the line (or the JSON path) and what to do. No IO here.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace

import msgspec

from batchd.model import DEFAULT_RUNNER, BatchRequest, Isolation, SourceType

_BOM = "\ufeff"
# C0 controls except tab, DEL, and C1 controls.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_DIRECTIVE_RE = re.compile(r"#\s*batchd:\s*([A-Za-z_]+)\s*=\s*(.*)\Z")
MAX_NAME_CHARS = 200

_request_decoder = msgspec.json.Decoder(BatchRequest)


class ParseError(ValueError):
    """A spool file we refuse; the message says what, where and what to do."""


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1024 * 1024
    max_features: int = 1000
    max_line_chars: int = 2000
    # The runner profiles there are (SPEC 13); None: a batch's profile is not checked here.
    runners: frozenset[str] | None = None


@dataclass(frozen=True)
class Options:
    """What a batch may choose besides its features (directives, request fields)."""

    runner: str = DEFAULT_RUNNER
    verify: list[str] | None = None
    isolation: Isolation | None = None
    parallel: bool = False


@dataclass(frozen=True)
class ParsedBatch:
    features: list[str]
    name: str
    cwd: str | None = None
    source_type: SourceType = "file"
    issue_numbers: list[int] | None = None
    options: Options = field(default_factory=Options)


def is_request_name(name: str) -> bool:
    return name.endswith(".json")


def parse_spool_file(name: str, data: bytes, limits: Limits) -> ParsedBatch:
    """Validate one spool entry by its name: ``*.json`` is a batch request, else a feature file."""
    if len(data) > limits.max_file_bytes:
        raise ParseError(
            f"{name}: file is {len(data)} bytes, over spool.max_file_bytes "
            f"({limits.max_file_bytes}); split it into smaller files or raise the limit"
        )
    if is_request_name(name):
        return parse_request(name, data, limits)
    return parse_feature_file(name, data, limits)


def _check_feature(where: str, text: str, limits: Limits) -> None:
    m = _CONTROL_RE.search(text)
    if m:
        raise ParseError(
            f"{where}: control character U+{ord(m.group()):04X} at column {m.start() + 1}; "
            "feature text must be printable (tab is allowed)"
        )
    if len(text) > limits.max_line_chars:
        raise ParseError(
            f"{where}: {len(text)} characters, over spool.max_line_chars "
            f"({limits.max_line_chars}); shorten the feature"
        )


def _check_cwd(where: str, cwd: str) -> None:
    if not cwd.startswith("/"):
        raise ParseError(f"{where}: cwd {cwd!r} is not an absolute path; write it as /full/path")
    if _CONTROL_RE.search(cwd) or "\t" in cwd:
        raise ParseError(f"{where}: cwd contains a control character")


def _clean_name(where: str, name: str) -> str:
    name = name.strip()
    if _CONTROL_RE.search(name):
        raise ParseError(f"{where}: name contains a control character")
    return name[:MAX_NAME_CHARS]


def _dedupe(features: list[str]) -> list[str]:
    return list(dict.fromkeys(features))


_DIRECTIVES = ", ".join(
    f"'# batchd: {example}'"
    for example in (
        "cwd = /abs/path",
        "name = text",
        "runner = PROFILE",
        "verify = make test",
        "isolation = worktree",
        "parallel = true",
    )
)


def parse_feature_file(name: str, data: bytes, limits: Limits) -> ParsedBatch:
    """A plain file: UTF-8 (BOM dropped), LF or CRLF, one feature a line."""
    text = _decode(name, data)
    features: list[str] = []
    settings: dict[str, str] = {}
    seen: set[str] = set()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{name}: line {lineno}"
        _check_feature(where, line, limits)
        line = line.strip()
        if not line or line in seen:
            continue
        if line.startswith("#"):
            m = _DIRECTIVE_RE.match(line)
            if m and not features:
                _directive(where, m.group(1), m.group(2).strip(), settings)
            continue
        seen.add(line)
        features.append(line)
        if len(features) > limits.max_features:
            raise ParseError(
                f"{where}: more than spool.max_features ({limits.max_features}) features; "
                "split the file or raise the limit"
            )
    if not features:
        raise ParseError(f"{name}: no features (every line is blank or a comment)")
    options = _options(name, settings, limits)
    return ParsedBatch(
        features=features,
        name=settings.get("name") or name,
        cwd=settings.get("cwd"),
        options=options,
    )


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = data.count(b"\n", 0, e.start) + 1
        raise ParseError(
            f"{name}: line {bad_line}: invalid UTF-8 at byte {e.start}; save the file as UTF-8"
        ) from None
    return text[1:] if text.startswith(_BOM) else text


def _directive(where: str, key: str, value: str, settings: dict[str, str]) -> None:
    """One ``# batchd: key = value`` line before the first feature, checked and kept."""
    if key == "cwd":
        _check_cwd(where, value)
    elif key == "name":
        value = _clean_name(where, value)
    elif key == "verify":
        _split_verify(where, value)
    elif key == "parallel":
        if value.lower() not in ("true", "false"):
            raise ParseError(f"{where}: parallel = {value!r}; write 'true' or 'false'")
    elif key not in ("runner", "isolation"):
        raise ParseError(f"{where}: unknown directive '# batchd: {key}'; known: {_DIRECTIVES}")
    settings[key] = value
    settings[f"{key}@"] = where


def _split_verify(where: str, text: str) -> list[str]:
    """``verify = make test``: split as a shell would (never run through one)."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ParseError(f"{where}: verify: {e}; quote the command as a shell would") from None
    if not argv:
        raise ParseError(f"{where}: verify is empty; give the check command, e.g. 'make test'")
    return argv


def _options(name: str, settings: dict[str, str], limits: Limits) -> Options:
    verify = settings.get("verify")
    isolation = settings.get("isolation")
    return _check_options(
        runner=(settings.get("runner@", name), settings.get("runner")),
        verify=_split_verify(settings["verify@"], verify) if verify is not None else None,
        isolation=(settings.get("isolation@", name), isolation),
        parallel=(settings.get("parallel@", name), settings.get("parallel", "").lower() == "true"),
        limits=limits,
    )


def _check_options(
    *,
    runner: tuple[str, str | None],
    verify: list[str] | None,
    isolation: tuple[str, str | None],
    parallel: tuple[str, bool],
    limits: Limits,
) -> Options:
    """The batch's options, or a ``ParseError`` naming where each bad one was given."""
    where, name = runner
    if name is not None:
        if not name or _CONTROL_RE.search(name):
            raise ParseError(f"{where}: runner {name!r} is not a profile name")
        known = limits.runners
        if known is not None and name not in known:
            raise ParseError(
                f"{where}: unknown runner profile {name!r}; the profiles are "
                f"{', '.join(sorted(known))} ([runner] is 'default', [runners.NAME] the others)"
            )
    where, iso = isolation
    if iso is not None and iso != "worktree":
        raise ParseError(f"{where}: isolation = {iso!r}; the only isolation is 'worktree'")
    where, par = parallel
    if par and iso is None:
        raise ParseError(f"{where}: parallel = true needs isolation = worktree")
    return Options(
        runner=name or DEFAULT_RUNNER,
        verify=verify,
        isolation="worktree" if iso else None,
        parallel=par,
    )


def parse_request(name: str, data: bytes, limits: Limits) -> ParsedBatch:
    """A ``.json`` batch request: ``{"features": [...], "source_type": ..., ...}``."""
    try:
        req = _request_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise ParseError(f"{name}: invalid batch request: {e}") from None
    except msgspec.DecodeError as e:
        raise ParseError(f"{name}: not valid JSON: {e}") from None
    cleaned = _request_features(name, req.features, limits)
    if req.cwd is not None:
        _check_cwd(f"{name}: cwd", req.cwd)
    if req.issue_numbers is not None:
        bad = [n for n in req.issue_numbers if n <= 0]
        if bad:
            raise ParseError(f"{name}: issue_numbers: {bad[0]} is not a positive integer")
    if req.source_type == "github_issues" and (
        not req.issue_numbers or len(req.issue_numbers) != len(cleaned)
    ):
        raise ParseError(
            f"{name}: source_type github_issues needs one issue number per feature in issue_numbers"
        )
    batch_name = _clean_name(f"{name}: name", req.name) if req.name else ""
    if req.verify is not None and (not req.verify or not all(req.verify)):
        raise ParseError(
            f'{name}: verify: give the check as a non-empty argv, e.g. ["make", "test"]'
        )
    options = _check_options(
        runner=(f"{name}: runner", req.runner),
        verify=req.verify,
        isolation=(f"{name}: isolation", req.isolation),
        parallel=(f"{name}: parallel", req.parallel),
        limits=limits,
    )
    return ParsedBatch(
        features=cleaned,
        name=batch_name or name,
        cwd=req.cwd,
        source_type=req.source_type,
        issue_numbers=req.issue_numbers,
        options=options,
    )


def _request_features(name: str, features: list[str], limits: Limits) -> list[str]:
    """A request's features, each checked, stripped, blank ones and duplicates dropped."""
    cleaned: list[str] = []
    for i, feature in enumerate(features):
        _check_feature(f"{name}: features[{i}]", feature, limits)
        feature = feature.strip()
        if feature:
            cleaned.append(feature)
    cleaned = _dedupe(cleaned)
    if not cleaned:
        raise ParseError(f"{name}: no features (the list is empty or blank)")
    if len(cleaned) > limits.max_features:
        raise ParseError(
            f"{name}: {len(cleaned)} features, over spool.max_features ({limits.max_features})"
        )
    return cleaned


def with_runners(limits: Limits, runners: frozenset[str]) -> Limits:
    """``limits`` that also check a batch's runner profile against ``runners``."""
    return replace(limits, runners=runners)


def check_feature(where: str, text: str, limits: Limits) -> None:
    """One feature's text by the spool's rules (``batchctl add`` checks each argument, so
    that an error names it: ``feature 2: control character ...``)."""
    _check_feature(where, text, limits)
