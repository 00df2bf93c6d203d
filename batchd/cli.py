"""The ``batchd`` command: run the daemon, print its paths, check the config, install units.

Exit codes: 0 clean stop, 1 fatal runtime error (another instance, unusable
state dir), 2 usage, 78 bad configuration (EX_CONFIG: systemd does not restart;
``check-config`` exits 78 too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = args.command or "run"
    if command == "install-service":
        sys.exit(_install_service(args))
    where = _where(args)
    if command == "check-config":
        from batchd.checkconfig import check_config

        sys.exit(check_config(os.environ, **where))
    cfg = _load_or_exit(where)
    if command == "paths":
        sys.exit(_print_paths(cfg))

    from batchd import daemon
    from batchd.logformat import setup_logging

    setup_logging(getattr(logging, args.log_level.upper()))
    sys.exit(daemon.run(cfg, args.backend, lambda: _load(where)))


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line; a mistyped option or command is named (exit 2)."""
    from batchd.mistyped import mistyped

    parser = _parser()
    wrong = mistyped(parser, argv)
    if wrong is not None:
        wrong[0].error(wrong[1])
    return parser.parse_args(argv)


def _install_service(args: argparse.Namespace) -> int:
    from batchd.service_install import install_service

    return install_service(
        socket_activation=args.socket_activation, force=args.force, config=args.config
    )


def _where(args: argparse.Namespace) -> dict[str, str | None]:
    """What the command line says of the config file and the paths."""
    return dict(
        config=args.config,
        spool=args.spool,
        state_dir=args.state_dir,
        socket=args.socket,
        runner=args.runner,
    )


def _load(where: dict[str, str | None]) -> Config:
    """The config, from the file, the environment and the flags (``ConfigError`` if bad)."""
    from batchd.config import load_config

    return load_config(os.environ, **where)


def _load_or_exit(where: dict[str, str | None]) -> Config:
    from batchd.paths import ConfigError

    try:
        return _load(where)
    except ConfigError as e:
        print(f"batchd: bad configuration: {e}", file=sys.stderr)
        sys.exit(EX_CONFIG)


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
