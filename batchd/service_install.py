"""``batchd install-service``: write this installation's systemd user units (SPEC section 9).

Renders ``batchd.service`` (and ``batchd.socket``) for this installation
(``batchd.unitfile``), compares them with what is installed, refuses to
overwrite a changed unit without ``--force`` (showing the difference), writes
them with ``batchd.durable.write_durable`` (mode 0644) and prints the
``systemctl --user`` commands to run next. It never starts, stops or reloads
anything itself, and never follows a symlink where a unit should be.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from pathlib import Path
from typing import TextIO

from batchd.durable import StoreError, write_durable
from batchd.paths import ConfigError, default_config_path, read_toml
from batchd.unitfile import (
    DEFAULT_LISTEN,
    UNIT_NAMES,
    batchctl_word,
    default_exec_start,
    default_unit_dir,
    exec_arg,
    exec_word,
    listen_path,
    render_unit,
)

_DIFF_LINES = 40  # at most this many diff lines per changed unit


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
    try:
        wanted = _wanted_units(socket_activation, batchd_path, config, out)
    except (ValueError, ConfigError) as e:
        print(f"batchd: cannot write the units for this installation: {e}", file=out)
        return 1
    try:
        current = {name: _read_existing(target / name) for name in wanted}
    except OSError as e:
        print(f"batchd: cannot read the installed units: {e}", file=out)
        return 1
    changed = [n for n in wanted if current[n] is not None and current[n] != wanted[n]]
    if changed and not force:
        for name in changed:
            _show_difference(target / name, current[name] or "", wanted[name], out)
        _print_force_hint(socket_activation, out)
        return 1
    try:
        wrote = _write_units(target, wanted, current, out)
    except (OSError, StoreError) as e:
        print(f"batchd: cannot write the units into {target}: {e}", file=out)
        return 1
    _print_next_steps(target, socket_activation=socket_activation, wrote=wrote, out=out)
    return 0


def _wanted_units(
    socket_activation: bool, batchd_path: str | None, config: str | None, out: TextIO
) -> dict[str, str]:
    """Unit name -> the text this installation would write (ValueError, ConfigError if none)."""
    exec_start = exec_word(os.path.abspath(batchd_path)) if batchd_path else default_exec_start()
    options = f" --config {exec_arg(os.path.abspath(config))}" if config else ""
    listen = _configured_listen(config)
    if batchd_path and not os.access(batchd_path, os.X_OK):
        print(f"batchd: warning: {batchd_path} is not an executable file", file=out)
    _warn_without_batchctl(exec_start, out)
    names = [n for n in UNIT_NAMES if socket_activation or n == "batchd.service"]
    return {name: render_unit(name, exec_start, options=options, listen=listen) for name in names}


def _read_existing(path: Path) -> str | None:
    """The text of an installed unit, or None when there is none."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _show_difference(path: Path, installed: str, wanted: str, out: TextIO) -> None:
    """Say that ``path`` was left alone, with the diff from it to what would be written."""
    diff = list(
        difflib.unified_diff(
            installed.splitlines(),
            wanted.splitlines(),
            f"{path} (installed)",
            f"{path.name} (this installation)",
            n=0,
            lineterm="",
        )
    )
    print(
        f"batchd: {path} exists and differs from what this installation would write; "
        "it was left alone:",
        file=out,
    )
    for line in diff[:_DIFF_LINES]:
        print(f"  {line}", file=out)
    if len(diff) > _DIFF_LINES:
        print(f"  ... ({len(diff) - _DIFF_LINES} more diff lines)", file=out)


def _print_force_hint(socket_activation: bool, out: TextIO) -> None:
    again = "batchd install-service" + (" --socket-activation" if socket_activation else "")
    print(
        "Keep your changes (better: put them in a drop-in with `systemctl --user edit "
        f"batchd`), or overwrite with `{again} --force`.",
        file=out,
    )


def _write_units(
    target: Path, wanted: dict[str, str], current: dict[str, str | None], out: TextIO
) -> bool:
    """Write every unit whose content changes (0644, durably); True when one was written."""
    wrote = False
    target.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        path = target / name
        if current[name] == text:
            print(f"unchanged {path}", file=out)
            continue
        write_durable(target, name, text.encode("utf-8"), mode=0o644)  # units are not secret
        wrote = True
        print(f"{'overwrote' if current[name] is not None else 'wrote'} {path}", file=out)
    return wrote


def _configured_listen(config: str | None) -> str:
    """``ListenStream=`` for the ``socket`` the config file names, else batchd's default.
    Only the file counts: the service does not see this shell's ``BATCHD_SOCKET``."""
    path = Path(os.path.abspath(config)) if config else default_config_path({})
    value = read_toml(path, required=config is not None).get("socket")
    if value is None:
        return DEFAULT_LISTEN
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: socket: Expected a non-empty `str`")
    return listen_path(os.path.expanduser(value))


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
