"""batchctl: the thin client of batchd (SPEC section 8). The command table and ``main``.

Every command is one row of ``TABLE``: its name, its help, its arguments, the
function that runs it (``commands``) and the control commands it sends. The
argument parser and the shell completion scripts are both built from it, and
the wire commands it sends are checked against ``protocol.COMMANDS`` below.

batchctl must start about as fast as Python itself: this module and those it
loads at start-up (``commands``, ``transport``, ``render``, ``batchd.protocol``,
``batchd.paths``) import only ``argparse``, ``json``, ``socket`` and what those
import. Only ``submit``, ``add`` and ``consent`` load the daemon's config,
parser and store, lazily. Types of replies come from ``batchd.shapes``, imported
for type checking only.

Exit codes: 0 success, 1 refused or failed, 2 usage, 3 daemon not reachable,
4 ``wait --timeout`` passed, 130 interrupted (``watch`` and ``logs --follow``
exit 0 on Ctrl-C). With ``--json`` every error is ``{"error": {"code",
"message"}}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from batchctl import commands
from batchctl.transport import E_USAGE, EXIT_INTERRUPTED, EXIT_USAGE, Failure
from batchd import __version__
from batchd.protocol import COMMANDS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

# argparse passes every help string through gettext, which probes the disk for message
# catalogs on each call: ~6 ms of every start. batchctl speaks English only.
argparse._ = lambda text: text  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    Handler = Callable[[argparse.Namespace], int]


class Arg:
    """One ``add_argument``: its name or flags, its keywords, and what completes its value
    in a shell (``batch``: batch ids from the daemon, ``file``, ``dir``, or nothing)."""

    __slots__ = ("complete", "kw", "names")

    def __init__(self, *names: str, complete: str = "", **kw: Any) -> None:
        self.names = names
        self.complete = complete
        self.kw = kw

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")

    @property
    def takes_value(self) -> bool:
        return self.kw.get("action") not in ("store_true", "store_false", "version", "help")


class OneOf:
    """Arguments of which at most one may be given (a mutually exclusive group)."""

    __slots__ = ("args",)

    def __init__(self, *args: Arg) -> None:
        self.args = args


class Command:
    """A row of the command table."""

    __slots__ = ("args", "handler", "help", "name", "sends")

    def __init__(
        self,
        name: str,
        help: str,
        handler: Handler,
        args: Sequence[Arg | OneOf] = (),
        sends: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.help = help
        self.handler = handler
        self.args = tuple(args)
        self.sends = tuple(sends)  # the control commands it may send (protocol.COMMANDS)

    def flat_args(self) -> list[Arg]:
        return [
            a for item in self.args for a in (item.args if isinstance(item, OneOf) else (item,))
        ]


def batch_arg(nargs: str | None = None) -> Arg:
    kw: dict[str, Any] = {"metavar": "BATCH_ID", "help": "a batch id, its seq (7) or 'last'"}
    if nargs is not None:
        kw["nargs"] = nargs
    return Arg("batch_ids" if nargs == "*" else "batch_id", complete="batch", **kw)


def flag(name: str, help: str, *more: str) -> Arg:
    return Arg(name, *more, action="store_true", help=help)


CWD = Arg("--cwd", metavar="DIR", complete="dir", help="run the features there (default: here)")

TABLE: tuple[Command, ...] = (
    Command(
        "status",
        "the daemon, the queue, what runs, and the batches (the default command)",
        commands.status,
        sends=["status"],
    ),
    Command(
        "list",
        "every batch",
        commands.list_,
        [flag("--ids", "one SEQ<tab>BATCH_ID<tab>STATUS<tab>NAME line per batch")],
        ["list"],
    ),
    Command("show", "one batch, feature by feature", commands.show, [batch_arg()], ["show"]),
    Command("ping", "check that the daemon answers", commands.ping, sends=["ping"]),
    Command(
        "submit",
        "queue a feature file (- reads stdin) or GitHub issues; no daemon needed",
        commands.submit,
        [
            Arg("file", nargs="?", metavar="FILE", complete="file", help="a feature file, or -"),
            Arg("--issues", nargs="+", type=int, metavar="N", help="GitHub issue numbers"),
            Arg("--repo", metavar="OWNER/NAME", help="with --issues: passed to gh"),
            CWD,
        ],
        ["ping"],
    ),
    Command(
        "add",
        "queue one batch from the command line, one feature per argument",
        commands.add,
        [
            Arg("features", nargs="+", metavar="FEATURE", help="a feature (quote it)"),
            CWD,
            Arg("--name", metavar="TEXT", help="the batch's name (default: its first feature)"),
        ],
        ["ping"],
    ),
    Command(
        "pause",
        "pause a batch, or with no BATCH_ID the whole queue",
        commands.pause,
        [batch_arg("?"), flag("--now", "also stop what runs (it runs again on resume)")],
        ["pause"],
    ),
    Command(
        "resume",
        "resume a batch, or --all (also lifts a queue pause)",
        commands.resume,
        [batch_arg("?"), flag("--all", "every paused batch and the queue")],
        ["resume"],
    ),
    Command("cancel", "cancel a batch", commands.cancel, [batch_arg()], ["cancel"]),
    Command(
        "retry", "run a batch's failed features again", commands.retry, [batch_arg()], ["retry"]
    ),
    Command(
        "skip",
        "never run one feature (a running one is stopped); recorded as skipped",
        commands.skip,
        [batch_arg(), Arg("index", type=int, metavar="INDEX", help="feature index, from 0")],
        ["skip"],
    ),
    Command(
        "reset-breaker",
        "close a batch's circuit breaker",
        commands.reset_breaker,
        [batch_arg()],
        ["reset-breaker"],
    ),
    Command(
        "logs",
        "a feature's runner output",
        commands.logs,
        [
            batch_arg(),
            Arg("index", nargs="?", type=int, metavar="INDEX", help="default: the latest"),
            flag("--follow", "stream until the feature ends (waits for it to start)", "-f"),
            Arg("-n", "--lines", dest="lines", type=int, metavar="LINES", help="the last LINES"),
            flag("--all", "every attempt, each under a header"),
        ],
        ["logs"],
    ),
    Command("watch", "live progress until Ctrl-C", commands.watch, sends=["watch"]),
    Command(
        "wait",
        "until batches finish (none given: every unfinished one); exit 0, 1 or 4",
        commands.wait,
        [
            batch_arg("*"),
            Arg("--timeout", type=float, metavar="S", help="give up after S seconds (exit 4)"),
        ],
        ["watch", "status", "show"],
    ),
    Command(
        "consent",
        "turn automatic retry on or off (asks on a terminal)",
        commands.consent,
        [OneOf(flag("--enable", "turn it on"), flag("--disable", "turn it off"))],
        ["consent"],
    ),
    Command(
        "prune",
        "delete finished batches",
        commands.prune,
        [
            Arg(
                "--older-than",
                dest="older_than",
                type=int,
                default=30,
                metavar="DAYS",
                help="age in days (default 30)",
            ),
            Arg("--dry-run", dest="dry_run", action="store_true", help="only list them"),
        ],
        ["prune"],
    ),
    Command(
        "reload",
        "make the daemon re-read its config (exit 1 with the error if it is bad)",
        commands.reload,
        sends=["reload"],
    ),
    Command(
        "restart",
        "restart the daemon; running features keep running and are followed again",
        commands.restart,
        sends=["restart", "status"],
    ),
    Command(
        "completion",
        "print a shell completion script",
        commands.completion,
        [Arg("shell", choices=("bash", "zsh", "fish"), metavar="SHELL", help="bash, zsh or fish")],
    ),
)

# Options every command takes, before or after its name.
GLOBAL_OPTIONS = (
    flag("--json", "print the daemon's result (and any error) as JSON"),
    Arg("--socket", metavar="PATH", complete="file", help="control socket"),
    Arg("--config", metavar="PATH", complete="file", help="config file"),
    Arg("--spool", metavar="DIR", complete="dir", help="spool dir (submit, add, wait)"),
    Arg(
        "--state-dir",
        dest="state_dir",
        metavar="DIR",
        complete="dir",
        help="state dir (consent without a daemon)",
    ),
)
GLOBAL_DEFAULTS = {"json": False, "socket": None, "config": None, "spool": None, "state_dir": None}

BY_NAME = {c.name: c for c in TABLE}
_sent = {cmd for c in TABLE for cmd in c.sends}
assert _sent == set(COMMANDS), f"batchctl and protocol.COMMANDS disagree: {_sent ^ set(COMMANDS)}"


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


def report(e: Failure, as_json: bool) -> None:
    """An error: ``{"error": {...}}`` on stdout with --json, else ``batchctl: ...`` on stderr."""
    if as_json:
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
        args = build_parser(argv).parse_args(argv)
        for name, default in GLOBAL_DEFAULTS.items():
            if not hasattr(args, name):
                setattr(args, name, default)
        as_json = args.json
        code = BY_NAME[args.command or "status"].handler(args)
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
