"""The ``batchd`` command: run the daemon, print its paths, check the config, install units.

Exit codes: 0 clean stop, 1 fatal runtime error (another instance, unusable
state dir), 2 usage, 78 bad configuration (EX_CONFIG: systemd does not restart;
``check-config`` exits 78 too).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from batchd import __version__

if TYPE_CHECKING:
    from batchd.config import Config

EX_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batchd",
        description="Run a spool of features through an agent command, one at a time.",
    )
    p.add_argument("--version", action="version", version=f"batchd {__version__}")
    p.add_argument("--config", help="config file (default: user_config_dir/config.toml)")
    p.add_argument("--spool", help="spool directory")
    p.add_argument("--state-dir", dest="state_dir", help="state directory")
    p.add_argument("--socket", help="control socket path")
    p.add_argument("--runner", help="runner command, split like a shell would (never run by one)")
    p.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the daemon in the foreground (the default)")
    sub.add_parser("paths", help="print every resolved path")
    # --config after these commands too (`batchd check-config --config PATH`).
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, help="config file")
    sub.add_parser(
        "check-config",
        parents=[config],
        help="validate the config (paths, runner, hooks, placeholders): exit 0, or 78",
    )
    inst = sub.add_parser("install-service", parents=[config], help="write the systemd user units")
    inst.add_argument("--socket-activation", action="store_true")
    inst.add_argument("--force", action="store_true", help="overwrite changed units")
    return p


def config_problems(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """What would stop this configuration from working, beyond what loading it checks
    (keys, types, placeholders): programs that are not there, directories that cannot be."""
    from batchd.config import HOOKS

    found: list[str] = []
    where = cfg.paths.config
    runner_path = cfg.runner.env.get("PATH") or env.get("PATH", os.defpath)
    if cfg.runner.engine == "local":
        found += _program(where, "runner.command", cfg.runner.command, runner_path)
    else:
        found += _program(
            where, f"runner.engine = {cfg.runner.engine!r}", ["sbatch"], env.get("PATH", os.defpath)
        )
    for name in HOOKS:
        argv = getattr(cfg.hooks, name)
        if argv:
            found += _program(where, f"hooks.{name}", argv, runner_path)
    if cfg.runner.cwd and not os.path.isdir(os.path.expanduser(cfg.runner.cwd)):
        found.append(f"{where}: runner.cwd: {cfg.runner.cwd!r} is not a directory; create it")
    p = cfg.paths
    for key, path in (("spool_dir", p.spool_dir), ("state_dir", p.state_dir)):
        found += _directory(key, path)
    found += _directory("socket", p.socket.parent)
    if len(os.fsencode(p.socket)) > 107:
        found.append(f"socket: {p.socket} is longer than the 107 bytes a Unix socket allows")
    return found


def _program(where: object, key: str, argv: list[str], path: str) -> list[str]:
    program = argv[0]
    if "/" in program:
        full = os.path.expanduser(program)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return []
        return [f"{where}: {key}: {program!r} is not an executable file"]
    if shutil.which(program, path=path):
        return []
    return [
        f"{where}: {key}: {program!r} is not found on PATH ({path}); install it, give its "
        "absolute path, or set PATH in the daemon's environment "
        "(under systemd: ~/.config/batchd/environment)"
    ]


def _directory(key: str, path: Path) -> list[str]:
    """A directory batchd can use or create: it, or its nearest existing parent, is a
    directory this user may write in."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"{key}: {path}: {probe} is not a directory; choose another {key}"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            f"{key}: {path}: {probe} is not writable by this user; "
            f"fix its permissions or choose another {key}"
        ]
    return []


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = args.command or "run"
    if command == "install-service":
        sys.exit(_install_service(args))
    cfg = _load_or_exit(args)
    if command == "check-config":
        sys.exit(_check_config(cfg))
    if command == "paths":
        sys.exit(_print_paths(cfg))

    from batchd import daemon, systemd

    systemd.setup_logging(getattr(logging, args.log_level.upper()))
    sys.exit(daemon.run(cfg, args.backend, lambda: _load(args)))


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line; a mistyped option or command is named (exit 2)."""
    from batchd.mistyped import mistyped

    parser = _parser()
    wrong = mistyped(parser, argv)
    if wrong is not None:
        wrong[0].error(wrong[1])
    return parser.parse_args(argv)


def _install_service(args: argparse.Namespace) -> int:
    from batchd.systemd import install_service

    return install_service(
        socket_activation=args.socket_activation, force=args.force, config=args.config
    )


def _load(args: argparse.Namespace) -> Config:
    """The config, from the file, the environment and the flags (``ConfigError`` if bad)."""
    from batchd.config import load_config

    return load_config(
        os.environ,
        config=args.config,
        spool=args.spool,
        state_dir=args.state_dir,
        socket=args.socket,
        runner=args.runner,
    )


def _load_or_exit(args: argparse.Namespace) -> Config:
    from batchd.paths import ConfigError

    try:
        return _load(args)
    except ConfigError as e:
        print(f"batchd: bad configuration: {e}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def _check_config(cfg: Config) -> int:
    found = config_problems(cfg, os.environ)
    for problem in found:
        print(f"batchd: bad configuration: {problem}", file=sys.stderr)
    if found:
        return EX_CONFIG
    where = cfg.paths.config if cfg.paths.config.exists() else "defaults (no config file)"
    print(f"configuration OK: {where}")
    return 0


def _print_paths(cfg: Config) -> int:
    p = cfg.paths
    print(f"config     {p.config}{'' if p.config.exists() else '  (absent: defaults)'}")
    print(f"spool_dir  {p.spool_dir}")
    print(f"rejected   {p.spool_dir / 'rejected'}")
    print(f"state_dir  {p.state_dir}")
    print(f"batches    {p.state_dir / 'batches'}")
    print(f"socket     {p.socket}")
    print(f"runner     {cfg.runner.command}")
    return 0


if __name__ == "__main__":
    main()
