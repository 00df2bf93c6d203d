"""The systemd user units of this installation, as text: templates, placeholders, quoting.

The templates are package data (``batchd/units/``); the repo's ``systemd/``
holds them rendered for ``~/.local/bin`` (a test keeps the two equal). This
module fills in ``ExecStart=``/``ExecReload=``/``ListenStream=`` with words
systemd parses back to exactly the given path (specifiers and variables
escaped, quoted when needed) and refuses what it cannot express. Pure text
and path lookups: it writes nothing (``batchd.service_install`` does).
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

UNIT_NAMES = ("batchd.service", "batchd.socket")
EXEC_PLACEHOLDER = "@BATCHD@"  # ExecStart: batchd and its global options
RELOAD_PLACEHOLDER = "@BATCHCTL@"  # ExecReload: batchctl and the same options
LISTEN_PLACEHOLDER = "@LISTEN@"  # ListenStream: the control socket
DEFAULT_LISTEN = "%t/batchd/batchd.sock"  # batchd's default socket, in unit syntax


def render_unit(
    name: str,
    exec_start: str,
    *,
    batchctl: str | None = None,
    options: str = "",
    listen: str = DEFAULT_LISTEN,
) -> str:
    """The packaged template ``name`` for this installation, in unit-file syntax:
    ``exec_start`` runs batchd, ``batchctl`` (default: the one beside it) reloads it,
    both with ``options`` (e.g. `` --config PATH``); the socket unit listens on ``listen``."""
    template = resources.files("batchd").joinpath("units", name).read_text(encoding="utf-8")
    reload_start = batchctl if batchctl is not None else batchctl_word(exec_start)
    return (
        template.replace(EXEC_PLACEHOLDER, exec_start + options)
        .replace(RELOAD_PLACEHOLDER, reload_start + options)
        .replace(LISTEN_PLACEHOLDER, listen)
    )


def batchctl_word(exec_start: str) -> str:
    """The batchctl of the installation whose batchd is ``exec_start`` (unit syntax):
    ``PYTHON -m batchd`` -> ``PYTHON -m batchctl``, ``DIR/batchd`` -> ``DIR/batchctl``."""
    if exec_start.endswith(" -m batchd"):
        return exec_start[: -len("batchd")] + "batchctl"
    quoted = exec_start.startswith('"')
    word = exec_start.strip('"').rsplit("/", 1)[0] + "/batchctl"
    return f'"{word}"' if quoted else word


def _check_word(text: str) -> None:
    if any(c in text for c in '"\\') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{text!r} contains a quote, a backslash or a control character")


def exec_word(path: str) -> str:
    """``path`` as the executable word of an ``ExecStart=`` line (ValueError if impossible)."""
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is not an absolute path")
    _check_word(path)
    word = path.replace("%", "%%")  # % starts a specifier; $ is literal in the executable
    return f'"{word}"' if any(c.isspace() or c == "'" for c in word) else word


def exec_arg(text: str) -> str:
    """``text`` as one argument of an ``Exec*=`` line: specifiers and variables escaped."""
    _check_word(text)
    word = text.replace("%", "%%").replace("$", "$$")
    return f'"{word}"' if any(c.isspace() or c == "'" for c in word) else word


def listen_path(path: str) -> str:
    """An absolute socket path as a ``ListenStream=`` value (ValueError if impossible)."""
    if not os.path.isabs(path):
        raise ValueError(f"socket {path!r} is not an absolute path; write it as /full/path")
    _check_word(path)
    if any(c.isspace() for c in path):
        raise ValueError(f"socket {path!r} contains white space; systemd cannot listen there")
    return path.replace("%", "%%")


def default_exec_start() -> str:
    """How systemd should start this installation's batchd (unit syntax, without ``run``).

    The ``batchd`` this process was started as (``sys.argv[0]``), else the
    ``batchd`` on PATH, both with symlinks resolved; else ``python -m batchd``
    with this interpreter (a venv's python is not resolved: that would leave
    the venv).
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "batchd" and os.access(argv0, os.X_OK):
        return exec_word(str(Path(argv0).resolve()))
    found = shutil.which("batchd")
    if found:
        return exec_word(str(Path(found).resolve()))
    return f"{exec_word(os.path.abspath(sys.executable))} -m batchd"


def default_unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user``): where user units live."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "systemd" / "user"
