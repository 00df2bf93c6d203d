"""batchctl's command table: every command, its arguments, its handler, what it sends.

Every command is one row of ``TABLE``: its name, its help, its arguments, the
function that runs it (named ``"module.function"`` inside ``batchctl``, so that
this module imports none of them and ``cli`` loads only the one that runs) and
the control commands it sends. The parser (``cli``) and the shell completion
scripts (``completion``) are both built from it, and the wire commands it sends
are checked against ``protocol.COMMANDS`` below.

A leaf: it imports only ``batchd.protocol`` (and ``argparse``'s ``SUPPRESS``, loaded
anyway); it never runs or prints anything.
"""

from __future__ import annotations

from argparse import SUPPRESS

from batchd.protocol import COMMANDS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# ``limit --clear`` without a profile: every profile's wait.
CLEAR_ALL = "\0all"

# ``help`` of an option that exists for the completion scripts only (argparse compares by
# identity: it must be this very object).
HIDDEN = SUPPRESS


class Arg:
    """One ``add_argument``: its name or flags, its keywords, and what completes its value
    in a shell (``batch``: batch ids from the daemon, ``runner``: the profiles of the
    config, ``file``, ``dir``, or nothing)."""

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

    @property
    def hidden(self) -> bool:
        return self.kw.get("help") is HIDDEN


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
        handler: str,
        args: Sequence[Arg | OneOf] = (),
        sends: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.help = help
        self.handler = handler  # "module.function" in batchctl
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

# What a batch may choose besides its features (SPEC 13-15): add and submit take them.
BATCH_CHOICES = (
    Arg(
        "--runner",
        metavar="NAME",
        complete="runner",
        help="the runner profile ([runners.NAME] of the config; default: [runner])",
    ),
    Arg(
        "--verify",
        metavar="ARGV",
        help="the batch's own check, run after each completed feature (e.g. 'make test')",
    ),
    flag("--worktree", "run the batch in a git worktree of its own, on a batchd/ branch"),
    flag("--parallel", "with --worktree: run its features side by side, each in a worktree"),
)

TABLE: tuple[Command, ...] = (
    Command(
        "status",
        "the daemon, the queue, what runs, and the batches (the default command)",
        "control.status",
        sends=["status"],
    ),
    Command(
        "list",
        "every batch",
        "control.list_",
        [flag("--ids", "one SEQ<tab>BATCH_ID<tab>STATUS<tab>NAME line per batch")],
        ["list"],
    ),
    Command("show", "one batch, feature by feature", "control.show", [batch_arg()], ["show"]),
    Command("ping", "check that the daemon answers", "control.ping", sends=["ping"]),
    Command(
        "submit",
        "queue a feature file (- reads stdin) or GitHub issues; no daemon needed",
        "submit.submit",
        [
            Arg("file", nargs="?", metavar="FILE", complete="file", help="a feature file, or -"),
            Arg("--issues", nargs="+", type=int, metavar="N", help="GitHub issue numbers"),
            Arg("--repo", metavar="OWNER/NAME", help="with --issues: passed to gh"),
            CWD,
            *BATCH_CHOICES,
        ],
        ["status", "ping"],
    ),
    Command(
        "add",
        "queue one batch from the command line, one feature per argument",
        "submit.add",
        [
            Arg("features", nargs="+", metavar="FEATURE", help="a feature (quote it)"),
            CWD,
            Arg("--name", metavar="TEXT", help="the batch's name (default: its first feature)"),
            *BATCH_CHOICES,
        ],
        ["status", "ping"],
    ),
    Command(
        "pause",
        "pause a batch, or with no BATCH_ID the whole queue",
        "control.pause",
        [batch_arg("?"), flag("--now", "also stop what runs (it runs again on resume)")],
        ["pause"],
    ),
    Command(
        "resume",
        "resume a batch, or --all (also lifts a queue pause)",
        "control.resume",
        [batch_arg("?"), flag("--all", "every paused batch and the queue")],
        ["resume"],
    ),
    Command("cancel", "cancel a batch", "control.cancel", [batch_arg()], ["cancel"]),
    Command(
        "retry", "run a batch's failed features again", "control.retry", [batch_arg()], ["retry"]
    ),
    Command(
        "skip",
        "never run one feature (a running one is stopped); recorded as skipped",
        "control.skip",
        [batch_arg(), Arg("index", type=int, metavar="INDEX", help="feature index, from 0")],
        ["skip"],
    ),
    Command(
        "reset-breaker",
        "close a batch's circuit breaker",
        "control.reset_breaker",
        [batch_arg()],
        ["reset-breaker"],
    ),
    Command(
        "logs",
        "a feature's runner output",
        "logs.logs",
        [
            batch_arg(),
            Arg("index", nargs="?", type=int, metavar="INDEX", help="default: the latest"),
            flag("--follow", "stream until the feature ends (waits for it to start)", "-f"),
            Arg("-n", "--lines", dest="lines", type=int, metavar="LINES", help="the last LINES"),
            flag("--all", "every attempt, each under a header"),
        ],
        ["logs"],
    ),
    Command("watch", "live progress until Ctrl-C", "watch.watch", sends=["watch"]),
    Command(
        "wait",
        "until batches finish (none given: every unfinished one); exit 0, 1 or 4",
        "wait.wait",
        [
            batch_arg("*"),
            Arg("--timeout", type=float, metavar="S", help="give up after S seconds (exit 4)"),
        ],
        ["watch", "status", "show"],
    ),
    Command(
        "consent",
        "turn automatic retry on or off (asks on a terminal)",
        "consent.consent",
        [OneOf(flag("--enable", "turn it on"), flag("--disable", "turn it off"))],
        ["consent"],
    ),
    Command(
        "prune",
        "delete finished batches",
        "control.prune",
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
        "control.reload",
        sends=["reload"],
    ),
    Command(
        "restart",
        "restart the daemon; running features keep running and are followed again",
        "control.restart",
        sends=["restart", "status"],
    ),
    Command(
        "limit",
        "list the usage-limit waits; --clear ends them now (the next feature probes)",
        "control.limit",
        [
            Arg(
                "--clear",
                nargs="?",
                const=CLEAR_ALL,
                default=None,
                metavar="RUNNER",
                complete="runner",
                help="end the wait of RUNNER (every profile's, without one)",
            ),
        ],
        ["limit"],
    ),
    Command(
        "report",
        "the morning report: what needs you first, then every feature, then totals",
        "report.report",
        [
            batch_arg("*"),
            Arg(
                "--since",
                metavar="DURATION",
                help="batches active or finished within it: 12h, 2d, 90m, 3600 (default 24h)",
            ),
            Arg(
                "--format",
                choices=("text", "markdown", "json"),
                default="text",
                metavar="FORMAT",
                help="text (default), markdown (GitHub tables) or json",
            ),
        ],
        ["report"],
    ),
    Command(
        "completion",
        "print a shell completion script",
        "completion.completion",
        [
            Arg(
                "shell",
                nargs="?",
                choices=("bash", "zsh", "fish"),
                metavar="SHELL",
                help="bash, zsh or fish",
            ),
            # The scripts complete --runner with what this prints: the config's profiles.
            Arg("--runner-names", dest="runner_names", action="store_true", help=HIDDEN),
        ],
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
