"""Everything batchd says to, or takes from, systemd, with the standard library only.

Owns: sd_notify (``READY=1``, ``STATUS=``, ``WATCHDOG=1``, ``STOPPING=1``,
``RELOADING=1``), the watchdog interval, inherited sockets (socket
activation), the environment that children must not inherit, logging to
stderr with journald priority prefixes, and installing the user units
(templates in ``batchd/units/``, rendered copies in the repo's ``systemd/``).

Every function is safe outside systemd: ``notify`` then returns False, there
are no inherited sockets, and logs are plain timestamped lines.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TextIO

from batchd.paths import ConfigError

__all__ = [
    "child_env",
    "install_service",
    "journal_stream_matches",
    "listen_sockets",
    "notify",
    "notify_reloading",
    "render_unit",
    "setup_logging",
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


# --- logging -------------------------------------------------------------------------------


def journal_stream_matches(env: Mapping[str, str], fd: int = 2) -> bool:
    """Is ``fd`` the stream ``JOURNAL_STREAM`` (``<dev>:<ino>``) names?

    The variable is inherited by children whose stderr may be elsewhere, so
    only the same device and inode count.
    """
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def _priority(levelno: int) -> int:
    """syslog priority of a logging level: 3 err, 4 warning, 6 info (and notice), 7 debug."""
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


# Control characters in a message (say, from a file name) would start a fake
# log line or drive the terminal: they are shown escaped. Tab is kept.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r"}


class _Formatter(logging.Formatter):
    """One line per event; a traceback follows on lines of its own, each marked."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().translate(_ESCAPES)
        if self.journal:
            # journald reads <N> as the priority and adds its own timestamp.
            mark = f"<{_priority(record.levelno)}>"
            head = mark + message
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            head = (
                f"{stamp}.{int(record.msecs):03d}Z batchd[{record.process}]: "
                f"{record.levelname} {message}"
            )
            mark = "    "
        extra: list[str] = []
        if record.exc_info:
            extra += self.formatException(record.exc_info).splitlines()
        if record.stack_info:
            extra += self.formatStack(record.stack_info).splitlines()
        return "\n".join([head, *(mark + line for line in extra)])


class _Handler(logging.StreamHandler[TextIO]):
    """The handler setup_logging installs (recognised, and replaced, on a second call)."""


def setup_logging(level: int = logging.INFO, env: Mapping[str, str] | None = None) -> None:
    """Log the ``batchd`` logger (and its children) to stderr, one line per event.

    With ``JOURNAL_STREAM`` naming stderr: ``<N>message`` (journald priority,
    no timestamp). Otherwise ``2026-11-24T05:06:53.123Z batchd[pid]: LEVEL
    message`` in UTC. Calling it again replaces the handler, never adds one.
    """
    env = os.environ if env is None else env
    logger = logging.getLogger("batchd")
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter(journal=journal_stream_matches(env)))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # No caller lookup per record (a walk of the stack): no line of ours shows the file or
    # line of the call (the "Optimization" section of the logging documentation).
    logging._srcfile = None


# --- unit installation ---------------------------------------------------------------------

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


def _exec_word(path: str) -> str:
    """``path`` as the executable word of an ``ExecStart=`` line (ValueError if impossible)."""
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is not an absolute path")
    _check_word(path)
    word = path.replace("%", "%%")  # % starts a specifier; $ is literal in the executable
    return f'"{word}"' if any(c.isspace() or c == "'" for c in word) else word


def _exec_arg(text: str) -> str:
    """``text`` as one argument of an ``Exec*=`` line: specifiers and variables escaped."""
    _check_word(text)
    word = text.replace("%", "%%").replace("$", "$$")
    return f'"{word}"' if any(c.isspace() or c == "'" for c in word) else word


def _listen_path(path: str) -> str:
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
        return _exec_word(str(Path(argv0).resolve()))
    found = shutil.which("batchd")
    if found:
        return _exec_word(str(Path(found).resolve()))
    return f"{_exec_word(os.path.abspath(sys.executable))} -m batchd"


def default_unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user``): where user units live."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "systemd" / "user"


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (mode 0644) via a synced temp file and rename."""
    data = text.encode("utf-8")
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o644)  # units are not secret; the umask must not matter
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_existing(path: Path) -> str | None:
    """The text of an installed unit, or None when there is none."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def install_service(
    *,
    socket_activation: bool,
    force: bool,
    unit_dir: Path | None = None,
    batchd_path: str | None = None,
    config: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Write ``batchd.service`` (and ``batchd.socket``) for this installation into ``unit_dir``.

    ``ExecStart=`` gets the absolute path of batchd (``batchd_path``, else
    ``default_exec_start()``) and ``ExecReload=`` the batchctl beside it, both
    with ``--config`` when ``config`` is given; ``ListenStream=`` gets the
    ``socket`` of that config file when it names one. A unit that exists with
    other content is left alone (return 1, with a diff and the ``--force``
    hint) unless ``force``; identical content is reported unchanged. Files are
    written atomically, mode 0644. Prints the commands to run next. Returns 0
    on success.
    """
    target = unit_dir if unit_dir is not None else default_unit_dir()
    again = "batchd install-service" + (" --socket-activation" if socket_activation else "")
    try:
        exec_start = (
            _exec_word(os.path.abspath(batchd_path)) if batchd_path else default_exec_start()
        )
        options = f" --config {_exec_arg(os.path.abspath(config))}" if config else ""
        listen = _configured_listen(config)
    except (ValueError, ConfigError) as e:
        print(f"batchd: cannot write the units for this installation: {e}", file=out)
        return 1
    if batchd_path and not os.access(batchd_path, os.X_OK):
        print(f"batchd: warning: {batchd_path} is not an executable file", file=out)
    _warn_without_batchctl(exec_start, out)
    names = [n for n in UNIT_NAMES if socket_activation or n == "batchd.service"]
    wanted = {name: render_unit(name, exec_start, options=options, listen=listen) for name in names}
    try:
        current = {name: _read_existing(target / name) for name in names}
    except OSError as e:
        print(f"batchd: cannot read the installed units: {e}", file=out)
        return 1
    changed = [n for n in names if current[n] is not None and current[n] != wanted[n]]
    if changed and not force:
        for name in changed:
            old = current[name] or ""
            diff = list(
                difflib.unified_diff(
                    old.splitlines(),
                    wanted[name].splitlines(),
                    f"{target / name} (installed)",
                    f"{name} (this installation)",
                    n=0,
                    lineterm="",
                )
            )
            print(
                f"batchd: {target / name} exists and differs from what this installation "
                "would write; it was left alone:",
                file=out,
            )
            for line in diff[:40]:
                print(f"  {line}", file=out)
            if len(diff) > 40:
                print(f"  ... ({len(diff) - 40} more diff lines)", file=out)
        print(
            "Keep your changes (better: put them in a drop-in with `systemctl --user edit "
            f"batchd`), or overwrite with `{again} --force`.",
            file=out,
        )
        return 1
    wrote = False
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = target / name
            if current[name] == wanted[name]:
                print(f"unchanged {path}", file=out)
                continue
            _write_atomic(path, wanted[name])
            wrote = True
            print(f"{'overwrote' if current[name] is not None else 'wrote'} {path}", file=out)
    except OSError as e:
        print(f"batchd: cannot write the units into {target}: {e}", file=out)
        return 1
    _print_next_steps(target, socket_activation=socket_activation, wrote=wrote, out=out)
    return 0


def _configured_listen(config: str | None) -> str:
    """``ListenStream=`` for the ``socket`` the config file names, else batchd's default.
    Only the file counts: the service does not see this shell's ``BATCHD_SOCKET``."""
    from batchd.paths import default_config_path, read_toml

    path = Path(os.path.abspath(config)) if config else default_config_path({})
    value = read_toml(path, required=config is not None).get("socket")
    if value is None:
        return DEFAULT_LISTEN
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: socket: Expected a non-empty `str`")
    return _listen_path(os.path.expanduser(value))


def _warn_without_batchctl(exec_start: str, out: TextIO) -> None:
    """ExecReload= needs the batchctl beside batchd; say so when it is not there."""
    word = batchctl_word(exec_start)
    if " -m " in word:
        return
    path = word.strip('"').replace("%%", "%")
    if not os.access(path, os.X_OK):
        print(
            f"batchd: warning: {path} is missing, so `systemctl --user reload batchd` will "
            "fail; install batchd and batchctl together (pip installs both)",
            file=out,
        )


def _print_next_steps(target: Path, *, socket_activation: bool, wrote: bool, out: TextIO) -> None:
    """The commands that turn the installed units into a running service."""
    units = "batchd.socket batchd.service" if socket_activation else "batchd.service"
    lines = [
        "",
        "Put the runner's PATH and API keys in ~/.config/batchd/environment",
        "(KEY=value lines; chmod 600). Then:",
        "",
        "  systemctl --user daemon-reload",
        f"  systemctl --user enable --now {units}",
        "  loginctl enable-linger $USER     # keep batchd running after you log out",
        "  journalctl --user -u batchd -f   # follow its log",
    ]
    if wrote:
        lines.append("  systemctl --user restart batchd.service   # if it was already running")
    if target != default_unit_dir():
        lines.append(
            f"\nNote: systemd reads user units from {default_unit_dir()}, not {target};"
            " link them there with `systemctl --user link PATH`."
        )
    if not socket_activation and (target / "batchd.socket").exists():
        lines.append(
            f"\nNote: {target / 'batchd.socket'} from an earlier install is still there; "
            "if you no longer want socket activation: "
            "`systemctl --user disable --now batchd.socket` and remove the file."
        )
    print("\n".join(lines), file=out)
    with contextlib.suppress(OSError, ValueError):
        out.flush()
