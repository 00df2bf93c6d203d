"""The ``batchd`` command: run the daemon, print its paths, install the user units.

Exit codes: 0 clean stop, 1 fatal runtime error (another instance, unusable
state dir), 2 usage, 78 bad configuration (EX_CONFIG: systemd does not restart).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from batchd import __version__

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
    inst = sub.add_parser("install-service", help="write the systemd user units")
    inst.add_argument("--socket-activation", action="store_true")
    inst.add_argument("--force", action="store_true", help="overwrite changed units")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if command == "install-service":
        from batchd.systemd import install_service

        sys.exit(install_service(socket_activation=args.socket_activation, force=args.force))

    from batchd.config import Config, load_config
    from batchd.paths import ConfigError

    def load() -> Config:
        return load_config(
            os.environ,
            config=args.config,
            spool=args.spool,
            state_dir=args.state_dir,
            socket=args.socket,
            runner=args.runner,
        )

    try:
        cfg = load()
    except ConfigError as e:
        print(f"batchd: bad configuration: {e}", file=sys.stderr)
        sys.exit(EX_CONFIG)

    if command == "paths":
        p = cfg.paths
        print(f"config     {p.config}{'' if p.config.exists() else '  (absent: defaults)'}")
        print(f"spool_dir  {p.spool_dir}")
        print(f"rejected   {p.spool_dir / 'rejected'}")
        print(f"state_dir  {p.state_dir}")
        print(f"batches    {p.state_dir / 'batches'}")
        print(f"socket     {p.socket}")
        print(f"runner     {cfg.runner.command}")
        sys.exit(0)

    from batchd import daemon, systemd

    systemd.setup_logging(getattr(logging, args.log_level.upper()))
    sys.exit(daemon.run(cfg, args.backend, load))


if __name__ == "__main__":
    main()
