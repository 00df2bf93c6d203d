"""What the core says when a command does not apply: domain errors, never wire codes.

The pure core (``batch``, ``commands``) raises these; the server maps each
class to its wire code (``server.ERROR_CODES``), so the core never speaks the
protocol. The message says what is wrong and what to do, in lower case.
"""

from __future__ import annotations


class Refused(Exception):
    """A command or change that does not apply; the subclass says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownBatch(Refused):
    """No batch of that id, seq or name."""


class BadState(Refused):
    """The command does not apply to the batch (or the queue) as it is now."""


class BadArgs(Refused):
    """An argument is out of range or refused (an index, a new configuration)."""


class NotDurable(Refused):
    """The change is made in memory but could not be written yet (the disk is failing)."""
