"""``watch``: one live progress line from the daemon's ``status`` events, until Ctrl-C.

``status_events`` is the stream that survives a daemon restart (it reconnects);
``wait`` reads it too. On a terminal the line is redrawn in place each second
(the elapsed time moves); elsewhere a line is printed when it changes. Loaded
by ``cli`` only when ``watch`` or ``wait`` runs; standard library only.
"""

from __future__ import annotations

import contextlib  # loaded by argparse already
import sys
import time

from batchctl.errors import EXIT_DOWN, EXIT_OK, Failure
from batchctl.options import socket_path
from batchctl.render import emit_json
from batchctl.render_status import progress_line
from batchctl.transport import Connection, Lost, result_of

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from batchd import shapes

TICK_S = 1.0  # watch on a terminal redraws its line this often (elapsed time moves)
RECONNECT_S = 0.2  # watch and wait try to reach a restarting daemon this often
TICK, DOWN = "tick", "down"  # status_events: no event within the timeout; daemon unreachable


def status_events(path: Path, timeout: Callable[[], float | None]) -> Iterator[shapes.Status | str]:
    """``status`` from the ``watch`` stream, reconnecting whenever the daemon restarts.
    Yields TICK when ``timeout()`` passes without an event and DOWN (every RECONNECT_S)
    while the daemon cannot be reached. Not reachable at the start: exit 3."""
    conn: Connection | None = Connection(path, timeout())
    while True:
        if conn is None:
            try:
                conn = Connection(path, timeout())
            except Failure as e:
                if e.exit != EXIT_DOWN:
                    raise
                yield DOWN
                time.sleep(RECONNECT_S)
                continue
        with conn, contextlib.suppress(Lost):
            yield from events_of(conn, timeout)
        conn = None
        yield DOWN


def events_of(
    conn: Connection, timeout: Callable[[], float | None]
) -> Iterator[shapes.Status | str]:
    """The statuses of one ``watch`` connection (TICK on each timeout) until it ends."""
    conn.send("watch", {})
    while True:
        conn.settimeout(timeout())
        try:
            msg = conn.message()
        except TimeoutError:
            yield TICK
            continue
        if "event" not in msg:
            result_of(msg)  # an error reply ends the run
            return
        event: shapes.StatusEvent = msg["event"]
        yield event["status"]


class Line:
    """The progress line on stdout: redrawn in place on a terminal, else printed on change."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.drawn = 0  # characters of the line drawn in place
        self.last = ""

    def show(self, line: str) -> None:
        if self.tty:
            sys.stdout.write("\r" + line.ljust(self.drawn))
            sys.stdout.flush()
            self.drawn = len(line)
        elif line != self.last:
            print(line, flush=True)
        self.last = line

    def note(self, text: str) -> None:
        """A line on stderr, below the progress line if one is drawn; nothing is drawn after."""
        self.end()
        print(text, file=sys.stderr, flush=True)
        self.last = ""

    def end(self) -> None:
        if self.drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()
        self.drawn = 0


def watch(args: Namespace) -> int:
    """One live progress line from the ``status`` events; Ctrl-C ends it with exit 0."""
    tty = sys.stdout.isatty() and not args.json
    line = Line(tty)
    st: shapes.Status | None = None
    down = False
    try:
        for update in status_events(socket_path(args), lambda: TICK_S if tty else None):
            if update == DOWN:
                if not down:
                    line.note("batchctl: batchd went away; reconnecting")
                down = True
            elif isinstance(update, str):  # a tick: the elapsed time moves
                if st is not None:
                    line.show(progress_line(st, time.time()))
            else:
                if down:
                    line.note("batchctl: batchd is back")
                down, st = False, update
                if args.json:
                    emit_json(st, indent=None)
                else:
                    line.show(progress_line(st, time.time()))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        line.end()
    return EXIT_OK
