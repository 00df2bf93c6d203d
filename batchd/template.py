"""Placeholders in the runner's and the hooks' argv (SPEC sections 2 and 5). Pure.

* ``check``: refuse what cannot be right — a ``{name}`` that is not one of
  ``PLACEHOLDERS``, a lone ``{`` or ``}`` — before the daemon starts (or on a
  reload), with a message naming the element and the valid placeholders.
* ``render``: replace the placeholders inside each element in one pass, so text
  that a replacement inserts (a feature saying ``{batch_id}``) is never replaced
  again; ``{{`` and ``}}`` write literal braces.

Never a shell: each element stays one argv element, whatever is inserted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PLACEHOLDERS = ("feature", "index", "batch_id", "attempt", "issue", "last_error")

# Left to right, one token at a time: an escaped brace, a {field}, or a lone brace.
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def valid_list() -> str:
    """``{feature}, {index}, ...`` for messages."""
    return ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)


def problems(element: str) -> list[str]:
    """What is wrong with one argv element's braces; empty when it is fine."""
    found: list[str] = []
    for m in _TOKEN_RE.finditer(element):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        if m.group(1) is None:
            escaped = token * 2
            found.append(f"a lone {token!r} at character {m.start() + 1} (write {escaped})")
        elif m.group(1) not in PLACEHOLDERS:
            found.append(f"unknown placeholder {token}")
    return found


def check(argv: Iterable[str], where: str) -> None:
    """Raise ValueError naming each bad element (``where[i]``) and the valid placeholders."""
    bad = [f"{where}[{i}]: {p}" for i, element in enumerate(argv) for p in problems(element)]
    if bad:
        raise ValueError(
            "; ".join(bad) + f"; the placeholders are {valid_list()}, "
            "and {{ and }} write literal braces"
        )


def render(argv: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """Each element with its placeholders replaced in one pass and ``{{``/``}}`` unescaped.

    ``values`` has a string for every name of ``PLACEHOLDERS``. ``argv`` should have
    passed ``check``; what it would refuse is left as written.
    """

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = m.group(1)
        return values[name] if name in PLACEHOLDERS else token

    return [_TOKEN_RE.sub(one, element) for element in argv]
