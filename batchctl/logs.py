"""``logs``: a feature's runner output, every attempt of it, or a stream until it ends.

Sends ``logs`` through ``transport``; with ``--follow`` it prints the ``log``
events of one connection as they come, until the feature settles (the reply)
or Ctrl-C (exit 0). Loaded by ``cli`` only when ``logs`` runs; standard library
only.
"""

from __future__ import annotations

import os
import sys

from batchctl import render
from batchctl.errors import EXIT_OK, Failure, usage
from batchctl.options import batch_ref, socket_path
from batchctl.render import emit_json, reply
from batchctl.transport import Connection, call, result_of
from batchd.protocol import E_BAD_STATE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path
    from typing import Any

    from batchd import shapes


def last_lines(text: str, n: int | None) -> str:
    """The last ``n`` lines of ``text`` (all of it when ``n`` is None), ending in a newline."""
    if n is not None:
        text = "".join(text.splitlines(keepends=True)[-n:]) if n > 0 else ""
    return text if not text or text.endswith("\n") else text + "\n"


def logs(args: Namespace) -> int:
    if args.index is not None and args.index < 0:
        raise usage("logs: INDEX counts from 0 (see `batchctl show BATCH_ID`)")
    if args.lines is not None and args.lines < 0:
        raise usage("logs: -n LINES must be 0 or more")
    if args.follow and args.all:
        raise usage("logs: --all prints every finished attempt; it does not go with --follow")
    req: dict[str, Any] = {"batch_id": batch_ref(args.batch_id)}
    if args.index is not None:
        req["index"] = args.index
    path = socket_path(args)
    if args.follow:
        return follow_logs(path, req, args)
    if args.all:
        req["all"] = True
    r: shapes.Logs = call(path, "logs", req)
    if args.json:
        return reply(args, r, "")
    latest: shapes.AttemptLog = {
        "index": r["index"],
        "attempt": r["attempt"],
        "path": r["path"],
        "text": r["text"],
        "truncated": r["truncated"],
        "session_id": r.get("session_id"),
    }
    session = r.get("session_id")
    if session and not args.all:
        print(f"batchctl: {render.session_hint(session)}", file=sys.stderr)
    for a in r.get("attempts", [latest]):
        if args.all:
            print(render.log_header(a))
        if a["truncated"]:
            print(f"batchctl: showing the end of {a['path']}", file=sys.stderr)
        sys.stdout.write(last_lines(a["text"], args.lines))
    return EXIT_OK


def follow_logs(path: Path, req: dict[str, Any], args: Namespace) -> int:
    """Stream ``log`` events until the feature settles (the reply) or Ctrl-C. With ``-n``,
    the last lines so far first, then only what is new."""
    skip_attempt, skip_bytes = -1, 0
    if args.lines is not None:
        skip_attempt, skip_bytes = show_last_lines(path, req, args)
    req["follow"] = True
    try:
        with Connection(path, None) as conn:
            conn.send("logs", req)
            while True:
                msg = conn.message()
                if "event" not in msg:
                    end: shapes.FollowEnd = result_of(msg)
                    if args.json:
                        emit_json(end, indent=None)
                    return EXIT_OK
                event = msg["event"]
                if event["type"] == "log" and event["attempt"] == skip_attempt and skip_bytes:
                    data = event["text"].encode()
                    event["text"] = data[skip_bytes:].decode("utf-8", "ignore")
                    skip_bytes = max(0, skip_bytes - len(data))
                show_follow_event(event, args.json)
    except KeyboardInterrupt:
        return EXIT_OK


def show_last_lines(path: Path, req: dict[str, Any], args: Namespace) -> tuple[int, int]:
    """``logs -f -n LINES``: the last lines so far; then the attempt and the bytes of it that
    the stream repeats and must skip. A feature not started yet has nothing to show."""
    try:
        first: shapes.Logs = call(path, "logs", req)
    except Failure as e:
        if e.code != E_BAD_STATE:
            raise
        return -1, 0
    shown: shapes.LogEvent = {
        "type": "log",
        "index": first["index"],
        "attempt": first["attempt"],
        "text": last_lines(first["text"], args.lines),
    }
    show_follow_event(dict(shown), args.json)
    req["index"] = first["index"]
    if first["truncated"]:
        return first["attempt"], os.path.getsize(first["path"])
    return first["attempt"], len(first["text"].encode())


def show_follow_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(event, indent=None)
        return
    where = f"feature {event['index'] + 1} (index {event['index']})"
    if event["type"] == "log":
        sys.stdout.write(event["text"])
        sys.stdout.flush()
    elif event["type"] == "attempt":
        sys.stdout.flush()
        print(f"batchctl: {where}, attempt {event['attempt']}", file=sys.stderr)
    elif event["type"] == "waiting":
        print(f"batchctl: {where} has not started yet; waiting for it", file=sys.stderr)
