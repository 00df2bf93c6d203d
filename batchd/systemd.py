"""What the running daemon says to, and takes from, systemd, with the standard library only.

Owns: sd_notify (``READY=1``, ``STATUS=``, ``WATCHDOG=1``, ``STOPPING=1``,
``RELOADING=1``), the watchdog interval, inherited sockets (socket
activation), and the environment that children must not inherit. Log lines
are ``batchd.logformat``'s, the unit files ``batchd.unitfile`` and
``batchd.service_install``'s, the exit statuses ``batchd.exitcodes``'.

Every function is safe outside systemd: ``notify`` then returns False and
there are no inherited sockets. Nothing here raises to the caller.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = [
    "child_env",
    "listen_sockets",
    "notify",
    "notify_reloading",
    "watchdog_interval_s",
]

# --- sd_notify -----------------------------------------------------------------------------

_notify_lock = threading.Lock()
_notify_sock: socket.socket | None = None


def notify(*lines: str) -> bool:
    """Send one datagram ``"\\n".join(lines)`` to ``$NOTIFY_SOCKET``.

    Returns True when it was sent; False when ``NOTIFY_SOCKET`` is unset, there
    is nothing to send, or sending failed. Never raises. A newline inside one
    line is sent as a space, so a value cannot smuggle in another assignment.
    """
    global _notify_sock
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or not lines:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    data = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
    try:
        with _notify_lock:
            if _notify_sock is None:
                _notify_sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            sock = _notify_sock
        sock.sendto(data, addr)
    except (OSError, ValueError, UnicodeError):
        return False
    return True


def notify_reloading() -> None:
    """Tell systemd a reload started: ``RELOADING=1`` with ``MONOTONIC_USEC``."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval_s() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or
    ``WATCHDOG_PID`` names another process.
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000 if usec > 0 else None


# --- socket activation ---------------------------------------------------------------------

_SD_LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_sockets() -> list[socket.socket]:
    """The sockets systemd passed to this process (fds 3.., ``LISTEN_FDS`` of them).

    Only when ``LISTEN_PID`` is this process; then the sockets are made
    close-on-exec and ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` are
    removed from ``os.environ`` so no child takes them for its own. An fd that
    is not an open socket is skipped. Otherwise: ``[]`` and the environment is
    left alone.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
    except ValueError:
        return []
    if pid != os.getpid():
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        count = 0
    for key in _LISTEN_VARS:
        os.environ.pop(key, None)
    found: list[socket.socket] = []
    for fd in range(_SD_LISTEN_FDS_START, _SD_LISTEN_FDS_START + max(count, 0)):
        try:
            os.set_inheritable(fd, False)
            found.append(socket.socket(fileno=fd))
        except OSError:
            continue
    return found


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` for children: no ``NOTIFY_SOCKET``, ``LISTEN_*``, ``WATCHDOG_*``."""
    return {
        k: v
        for k, v in env.items()
        if k != "NOTIFY_SOCKET" and not k.startswith(("LISTEN_", "WATCHDOG_"))
    }
