"""batchctl's ``main``: the parser made from the command table, and the end of every run.

The commands, their arguments and their handlers are rows of ``table.TABLE``;
this module builds the argparse parser from them, names a mistyped option or
command (``batchd.mistyped``), loads the one module whose handler runs, and
turns its result or ``Failure`` into the exit code (``errors``). With
``--json`` every error is ``{"error": {"code", "message"}}`` on stdout.

batchctl must start about as fast as Python itself: this module and those it
loads at start-up (``table``, ``errors``, ``batchd.protocol``) import only
``argparse``; a read command then adds ``json``, ``socket`` and its own
module. Only ``submit``, ``add``, ``consent`` and the completion of
``--runner`` load the daemon's config, parser and store, lazily.
"""

from __future__ import annotations

import argparse
import os
import sys

from batchctl.errors import E_USAGE, EXIT_INTERRUPTED, EXIT_USAGE, Failure
from batchctl.table import BY_NAME, GLOBAL_DEFAULTS, GLOBAL_OPTIONS, TABLE, Arg, OneOf
from batchd import __version__
from batchd.mistyped import mistyped

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

# argparse passes every help string through gettext, which probes the disk for message
# catalogs on each call: ~6 ms of every start. batchctl speaks English only.
argparse._ = lambda text: text  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn


class UsageError(Failure):
    """A bad command line (exit 2); ``parser`` prints the usage that goes with it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message, EXIT_USAGE, E_USAGE)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


class Formatter(argparse.HelpFormatter):
    """argparse's, without asking the terminal for its width on every ``add_argument``
    (``shutil`` and the ``ioctl``): only help text is formatted, at 80 columns."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int = 80
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width)


class Version(argparse.Action):
    """``--version`` without argparse's help formatting (``textwrap``)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"batchctl {__version__}")
        parser.exit()


def add_args(parser: argparse.ArgumentParser, args: Sequence[Arg | OneOf]) -> None:
    for item in args:
        group: Any = parser
        if isinstance(item, OneOf):
            group = parser.add_mutually_exclusive_group()
        for a in item.args if isinstance(item, OneOf) else (item,):
            group.add_argument(*a.names, **a.kw)


def command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line: the first word that is neither an option nor
    a global option's value; None when there is none, or it is no command."""
    takes_value = {n for a in GLOBAL_OPTIONS if a.takes_value for n in a.names}
    words = iter(argv)
    for word in words:
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in BY_NAME else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The parser of the table. Given ``argv``, only the command it names (if any) gets
    its arguments, the others only their name and help: a third of the start-up cost."""
    named = command_in(argv) if argv is not None else None
    everything = argv is None
    # Global options work before and after the command: each subparser has them too, with
    # SUPPRESS defaults so that a value given before the command is not overwritten.
    common = Parser(add_help=False, formatter_class=Formatter)
    for a in GLOBAL_OPTIONS:
        common.add_argument(*a.names, default=argparse.SUPPRESS, **a.kw)
    p = Parser(
        prog="batchctl",
        parents=[common],
        formatter_class=Formatter,
        description="Control batchd, the feature batch daemon. No COMMAND: status.",
    )
    p.add_argument("--version", action=Version, help="print batchctl's version")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", prog="batchctl")
    for c in TABLE:
        if not everything and c.name != named:
            sub.add_parser(c.name, help=c.help, add_help=False)
            continue
        sp = sub.add_parser(
            c.name, parents=[common], help=c.help, description=c.help, formatter_class=Formatter
        )
        add_args(sp, c.args)
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line, with every global option set; ``UsageError`` (exit 2)
    for a bad one, naming a mistyped option or command and what was probably meant."""
    parser = build_parser(argv)
    wrong = mistyped(parser, argv)
    if wrong is not None:
        wrong[0].error(wrong[1])
    args = parser.parse_args(argv)
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``command``, its module loaded now (``module.function``)."""
    module, _, function = BY_NAME[command].handler.rpartition(".")
    loaded = __import__(f"batchctl.{module}", fromlist=[function])
    run: Callable[[argparse.Namespace], int] = getattr(loaded, function)
    return run


def report(e: Failure, as_json: bool) -> None:
    """An error: ``{"error": {...}}`` on stdout with --json, else ``batchctl: ...`` on stderr."""
    if as_json:
        import json

        print(json.dumps({"error": {"code": e.code, "message": e.message}}, ensure_ascii=False))
        return
    if isinstance(e, UsageError):
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e.message}", file=sys.stderr)
        return
    print(f"batchctl: {e.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        args = parse(argv)
        as_json = args.json
        code = handler(args.command or "status")(args)
        sys.stdout.flush()
    except Failure as e:
        sys.stdout.flush()
        report(e, as_json)
        code = e.exit
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `batchctl status | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
