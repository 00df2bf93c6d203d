"""How a batchctl run ends: its exit codes, its error codes, and ``Failure``.

A leaf: every other batchctl module may import it, it imports nothing. It never
prints: ``cli.report`` prints a ``Failure`` (on stderr, or as JSON on stdout).

Exit codes (SPEC 8): 0 success; 1 refused or failed; 2 usage; 3 daemon not
reachable; 4 ``wait --timeout`` passed; 130 interrupted (``watch`` and ``logs
--follow`` exit 0 on Ctrl-C).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from typing import NoReturn

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

# batchctl's own error codes (``--json`` errors); a daemon's error reply keeps its own code.
E_USAGE = "usage"  # exit 2
E_NOT_RUNNING = "not_running"  # exit 3
E_NO_REPLY = "no_reply"  # the daemon did not answer in time, or the connection broke
E_INVALID = "invalid"  # a feature file, a directory or a request that batchctl refuses
E_WRONG_SPOOL = "wrong_spool"  # submit/add into a spool that the running daemon does not watch
E_CONFIG = "bad_config"
E_GH = "gh_error"
E_TIMEOUT = "timeout"  # wait --timeout passed (exit 4)
E_FAILED = "failed"  # anything else that ends the run

HOW_TO_START = "start it with `batchd` in a terminal, or `systemctl --user start batchd`"


class Failure(Exception):
    """Ends the run: ``message`` goes to stderr as ``batchctl: message`` (or, with
    ``--json``, to stdout as ``{"error": {"code", "message"}}``); ``exit`` is the exit code."""

    def __init__(self, message: str, exit: int = EXIT_FAIL, code: str = E_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit = exit
        self.code = code


def die(message: str, exit: int = EXIT_FAIL, code: str = E_FAILED) -> NoReturn:
    raise Failure(message, exit, code)


def usage(message: str) -> Failure:
    """A bad command line found after parsing (exit 2), e.g. two options that exclude each other."""
    return Failure(message, EXIT_USAGE, E_USAGE)
