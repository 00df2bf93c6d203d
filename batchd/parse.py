"""Spool input validation: plain feature files and ``.json`` batch requests. Pure.

``parse_spool_file`` is the one function the daemon and ``batchctl submit``
both use, so a file that batchctl accepts is a file the daemon accepts. It
takes bytes and returns a ``ParsedBatch`` or raises ``ParseError``, whose
message names the line (or the JSON path) and what to do. No IO here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from batchd.model import BatchRequest, SourceType

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


@dataclass(frozen=True)
class ParsedBatch:
    features: list[str]
    name: str
    cwd: str | None = None
    source_type: SourceType = "file"
    issue_numbers: list[int] | None = None


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


def parse_feature_file(name: str, data: bytes, limits: Limits) -> ParsedBatch:
    """A plain file: UTF-8 (BOM dropped), LF or CRLF, one feature a line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = data.count(b"\n", 0, e.start) + 1
        raise ParseError(
            f"{name}: line {bad_line}: invalid UTF-8 at byte {e.start}; save the file as UTF-8"
        ) from None
    if text.startswith(_BOM):
        text = text[1:]
    features: list[str] = []
    batch_name: str | None = None
    cwd: str | None = None
    seen: set[str] = set()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{name}: line {lineno}"
        _check_feature(where, line, limits)
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _DIRECTIVE_RE.match(line)
            if m and not features:
                key, value = m.group(1), m.group(2).strip()
                if key == "cwd":
                    _check_cwd(where, value)
                    cwd = value
                elif key == "name":
                    batch_name = _clean_name(where, value)
                else:
                    raise ParseError(
                        f"{where}: unknown directive '# batchd: {key}'; "
                        "known: '# batchd: cwd = /abs/path', '# batchd: name = text'"
                    )
            continue
        if line in seen:
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
    return ParsedBatch(features=features, name=batch_name or name, cwd=cwd)


def parse_request(name: str, data: bytes, limits: Limits) -> ParsedBatch:
    """A ``.json`` batch request: ``{"features": [...], "source_type": ..., ...}``."""
    try:
        req = _request_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise ParseError(f"{name}: invalid batch request: {e}") from None
    except msgspec.DecodeError as e:
        raise ParseError(f"{name}: not valid JSON: {e}") from None
    cleaned: list[str] = []
    for i, feature in enumerate(req.features):
        where = f"{name}: features[{i}]"
        _check_feature(where, feature, limits)
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
    return ParsedBatch(
        features=cleaned,
        name=batch_name or name,
        cwd=req.cwd,
        source_type=req.source_type,
        issue_numbers=req.issue_numbers,
    )
