"""systemd without systemd packages: sd_notify, socket activation, journald, unit install.

Owns everything batchd says to or takes from the service manager, with the
standard library only. Every function is safe to call outside systemd: it
then does nothing (notify returns False, no inherited sockets, plain stderr
logging with timestamps).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TextIO

_notify_sock: socket.socket | None = None
_notify_addr: str | None = None


def notify(*lines: str) -> bool:
    """Send one datagram to ``$NOTIFY_SOCKET``; False when unset or it failed. Never raises."""
    global _notify_sock, _notify_addr
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not lines:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        if _notify_sock is None or _notify_addr != addr:
            if _notify_sock is not None:
                _notify_sock.close()
            _notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            _notify_addr = addr
        _notify_sock.sendto("\n".join(lines).encode("utf-8", "replace"), addr)
    except OSError:
        return False
    return True


def notify_reloading() -> None:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval_s() -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by systemd (``LISTEN_FDS`` from fd 3) when ``LISTEN_PID`` is us."""
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not pid or not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    found = []
    for fd in range(3, 3 + n):
        os.set_inheritable(fd, False)
        found.append(socket.socket(fileno=fd))
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return found


_DROP = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without what belongs to this daemon's service manager."""
    return {k: v for k, v in env.items() if not k.startswith(_DROP)}


def journal_stream_matches(env: Mapping[str, str], fd: int = 2) -> bool:
    """Is ``fd`` the journal stream named by ``JOURNAL_STREAM`` (same device and inode)?"""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the priority and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{super().format(record)}"


class _TerminalFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(level: int = logging.INFO, env: Mapping[str, str] | None = None) -> None:
    """One line per event on stderr; journald priority prefixes when stderr is the journal."""
    env = os.environ if env is None else env
    logger = logging.getLogger("batchd")
    for h in list(logger.handlers):
        if getattr(h, "_batchd", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._batchd = True  # type: ignore[attr-defined]
    if journal_stream_matches(env):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            _TerminalFormatter(f"%(asctime)s batchd[{os.getpid()}]: %(levelname)s %(message)s")
        )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# --- unit installation -------------------------------------------------------------------

EXEC_PLACEHOLDER = "@BATCHD@"


def unit_template(name: str) -> str:
    return resources.files("batchd").joinpath("units", name).read_text()


def render_unit(name: str, batchd_path: str) -> str:
    return unit_template(name).replace(EXEC_PLACEHOLDER, batchd_path)


def default_batchd_path() -> str:
    found = shutil.which("batchd")
    if found:
        return str(Path(found).resolve())
    argv0 = Path(sys.argv[0])
    if argv0.name == "batchd" and argv0.exists():
        return str(argv0.resolve())
    return str(Path(sys.executable).resolve().parent / "batchd")


def _unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def install_service(
    *,
    socket_activation: bool,
    force: bool,
    unit_dir: Path | None = None,
    batchd_path: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Write the user units with this installation's absolute path; refuse to clobber edits."""
    unit_dir = unit_dir or _unit_dir()
    exe = batchd_path or default_batchd_path()
    names = ["batchd.service"] + (["batchd.socket"] if socket_activation else [])
    rendered = {n: render_unit(n, exe) for n in names}
    for name, text in rendered.items():
        path = unit_dir / name
        if path.exists() and path.read_text() != text and not force:
            print(
                f"batchd: {path} exists and differs from what this installation would write; "
                "keep your edits, or run 'batchd install-service --force' to overwrite it",
                file=out,
            )
            return 1
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        path = unit_dir / name
        if path.exists() and path.read_text() == text:
            print(f"unchanged {path}", file=out)
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        print(f"wrote {path}", file=out)
    env_file = Path.home() / ".config" / "batchd" / "environment"
    unit = "batchd.socket" if socket_activation else "batchd.service"
    user = os.environ.get("USER") or "$USER"
    print(
        "\nNext:\n"
        f"  # put the runner's PATH and API keys in {env_file} (KEY=value lines)\n"
        "  systemctl --user daemon-reload\n"
        f"  systemctl --user enable --now {unit}\n"
        f"  loginctl enable-linger {user}      # keep running after you log out\n"
        "  journalctl --user -u batchd -f       # follow the log",
        file=out,
    )
    with contextlib.suppress(OSError):
        out.flush()
    return 0
