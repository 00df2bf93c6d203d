"""What several commands read from the command line: paths, the config, batch references.

The socket, spool and state dir are resolved exactly as ``batchd`` resolves
them (``batchd.paths``: flag, environment, config file, default). Read
commands resolve only the socket, without the full config; ``submit``,
``add``, ``consent`` and the completion of ``--runner`` load the whole config
(``batchd.config``, which imports msgspec), lazily, here. A bad config or path
ends the run with exit 1 (``bad_config``). Imports only ``errors``, ``render``
and leaves of ``batchd``; it never talks to the daemon.
"""

from __future__ import annotations

import os

from batchctl import render
from batchctl.errors import E_CONFIG, EXIT_FAIL, die
from batchd.protocol import E_UNKNOWN_BATCH, is_batch_id

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path

    from batchd.config import Config
    from batchd.paths import Paths


def path_options(args: Namespace) -> dict[str, str | None]:
    """The path options given (for ``batchd.paths.load_paths`` and ``load_config``)."""
    return {
        "config": args.config,
        "spool": args.spool,
        "state_dir": args.state_dir,
        "socket": args.socket,
    }


def socket_path(args: Namespace) -> Path:
    """The control socket, resolved as batchd resolves it (without loading the full config)."""
    from batchd.paths import ConfigError, resolve_socket

    try:
        return resolve_socket(os.environ, config=args.config, socket=args.socket)
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)


def load_paths(args: Namespace) -> Paths:
    """Every path (socket, spool, state dir), without checking the rest of the config."""
    from batchd.paths import ConfigError
    from batchd.paths import load_paths as load

    try:
        return load(os.environ, **path_options(args))[0]
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)


def load_config(args: Namespace) -> Config:
    """The whole config, checked as the daemon checks it."""
    from batchd.config import load_config as load
    from batchd.paths import ConfigError

    try:
        return load(os.environ, **path_options(args))
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)


def batch_ref(text: str) -> str | int:
    """A BATCH_ID from the command line: a full id, a ``seq`` (sent as an int) or ``last``.
    Anything else is an unknown batch, refused before it reaches the socket."""
    if text.isdigit() and text.isascii():
        return int(text)
    if text == "last" or is_batch_id(text):
        return text
    die(
        f"unknown batch {render.printable(text)!r}: give a batch id "
        "(batch-20261124-050653-123456), its seq (7) or 'last'; `batchctl list` shows them",
        EXIT_FAIL,
        E_UNKNOWN_BATCH,
    )
