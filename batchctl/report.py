"""``report``: the morning report (SPEC 14) as text, Markdown or JSON.

Checks the command line (``--since`` is a duration such as ``12h``, ``2d``,
``90m`` or ``3600`` seconds; batch references are checked as everywhere),
sends one ``report`` request through ``transport`` and prints the reply with
``batchd.reportrender`` (text) or ``batchd.reportmd`` (Markdown), which import
nothing of the daemon. Loaded by ``cli`` only when ``report`` runs; standard
library only.
"""

from __future__ import annotations

import sys

from batchctl.errors import EXIT_OK, usage
from batchctl.options import batch_ref, socket_path
from batchctl.render import emit_json, printable
from batchctl.transport import call

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from datetime import tzinfo
    from typing import Any

    from batchd import reportshapes

FORMATS = ("text", "markdown", "json")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TEXT_WIDTH = 100  # when stdout is no terminal (a file, a pipe, a hook)


def parse_duration(text: str) -> float:
    """``--since``: ``3600`` (seconds), ``90m``, ``12h``, ``2d``, ``1w`` (a decimal number
    too: ``1.5h``), more than zero. Anything else is a usage error (exit 2) that says
    what was given and what works."""
    t = text.strip().lower()
    number, unit = (t[:-1], t[-1]) if t[-1:] in UNITS else (t, "s")
    try:
        value = float(number) if number.replace(".", "", 1).isdigit() else -1.0
    except ValueError:
        value = -1.0
    if value <= 0:
        raise usage(
            f"report: --since {printable(text)!r} is not a duration; give a number of "
            "seconds (3600) or one with a unit: 90m, 12h, 2d, 1w"
        )
    return value * UNITS[unit]


def report(args: Namespace) -> int:
    """Ask for the report of the named batches, or of the window ``--since`` (24 h), and
    print it as ``--format`` says (``--json`` is ``--format json``)."""
    if args.batch_ids and args.since is not None:
        raise usage(
            "report takes BATCH_IDs or --since, not both (named batches are reported "
            "whenever they ran)"
        )
    req: dict[str, Any] = {}
    if args.batch_ids:
        req["batch_ids"] = [batch_ref(ref) for ref in args.batch_ids]
    if args.since is not None:
        req["since_s"] = parse_duration(args.since)
    r: reportshapes.Report = call(socket_path(args), "report", req)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        emit_json(r)
        return EXIT_OK
    tz = local_zone()
    if fmt == "markdown":
        from batchd import reportmd

        sys.stdout.write(reportmd.render_markdown(r, tz=tz))
    else:
        from batchd import reportrender

        sys.stdout.write(reportrender.render_text(r, width=width(), tz=tz))
    return EXIT_OK


def width() -> int:
    """The terminal's columns (``COLUMNS`` wins), else ``TEXT_WIDTH``; at least 60."""
    import shutil  # already loaded by argparse: free

    return max(60, shutil.get_terminal_size((TEXT_WIDTH, 24)).columns)


def local_zone() -> tzinfo:
    """This machine's time zone (``TZ`` honoured), for the times the report shows."""
    from datetime import UTC, datetime

    return datetime.now().astimezone().tzinfo or UTC
