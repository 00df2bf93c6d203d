"""Every problem of a decoded TOML table against a msgspec Struct, not only the first. Pure.

msgspec stops at the first error it meets. ``check(raw, root)`` converts each
key on its own (each table key by key, each ``[runners.NAME]`` entry on its
own), so a file with five bad keys gets five messages, each naming its key
(``retry.max_global: Expected int >= 0``; a wrong choice lists the valid ones).
It also returns the table with the bad keys left out, and which keys those
were: the rest of the checks go on from it, each bad key at its default (and
know not to blame the default). Knows nothing of batchd's keys.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import msgspec

UNKNOWN = "unknown key (see the configuration reference in the README)"
_BAD = object()  # a value that did not convert: left out
_PATH_RE = re.compile(r"`\$\.?([^`]*)`")


class Checked(NamedTuple):
    problems: list[str]  # ``KEY: what is wrong``
    kept: dict[str, Any]  # the table without the bad keys
    dropped: frozenset[str]  # the keys left out for a bad value (dotted, no index)


def check(raw: Mapping[str, Any], root: type[msgspec.Struct]) -> Checked:
    """Every problem of ``raw`` as ``root``, and the table without the bad keys."""
    found: list[str] = []
    kept = _table(raw, root, "", found)
    dropped = frozenset(p.split(": ", 1)[0].split("[", 1)[0] for p in found if UNKNOWN not in p)
    return Checked(found, kept if isinstance(kept, dict) else {}, dropped)


def _table(value: Any, kind: type[msgspec.Struct], prefix: str, found: list[str]) -> Any:
    if not isinstance(value, dict):
        return _convert(value, kind, prefix.rstrip("."), found)
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(kind)}
    kept: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if key not in fields:
            found.append(f"{path}: {UNKNOWN}")
            continue
        out = _value(item, fields[key], path, found)
        if out is not _BAD:
            kept[key] = out
    return kept


def _value(value: Any, kind: Any, path: str, found: list[str]) -> Any:
    if _is_struct(kind):
        return _table(value, kind, path + ".", found)
    args = typing.get_args(kind)
    if typing.get_origin(kind) is dict and _is_struct(args[1]) and isinstance(value, dict):
        kept: dict[str, Any] = {}
        for name, table in value.items():
            if _convert(name, args[0], f"{path}.{name}", found) is _BAD:
                continue
            out = _table(table, args[1], f"{path}.{name}.", found)
            if out is not _BAD:
                kept[name] = out
        return kept
    return _convert(value, kind, path, found)


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _convert(value: Any, kind: Any, path: str, found: list[str]) -> Any:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        found.append(describe(e, path, kind))
        return _BAD
    return value


def describe(e: msgspec.ValidationError, path: str, kind: Any = None) -> str:
    """``Expected `int` >= 0 - at `$[2]``` at ``runner.command`` ->
    ``runner.command[2]: Expected int >= 0``; a wrong choice lists the valid ones."""
    text = str(e)
    head, sep, tail = text.rpartition(" - at ")
    if not sep:
        head, sub = text, ""
    else:
        m = _PATH_RE.match(tail)
        sub = m.group(1) if m else tail
        sub = sub if not sub or sub.startswith("[") else "." + sub
    key = f"{path}{sub}"
    if "Object contains unknown field" in head:
        name = re.search(r"`([^`]*)`", head)
        return f"{key}.{name.group(1) if name else '?'}: {UNKNOWN}".lstrip(".")
    enum = re.match(r"Invalid enum value (.*)", head)
    if enum and not sub:
        choices = ", ".join(choices_of(kind)) or "?"
        return f"{key}: {enum.group(1)} is not one of {choices}"
    detail = head.replace("`", "")
    return f"{key}: {detail}" if key else detail


def choices_of(kind: Any) -> list[str]:
    """The values a ``Literal`` type (inside ``Annotated`` or a union) allows."""
    if typing.get_origin(kind) is Literal:
        return [str(v) for v in typing.get_args(kind)]
    return [c for arg in typing.get_args(kind) for c in choices_of(arg)]
