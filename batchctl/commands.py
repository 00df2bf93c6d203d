"""One function per batchctl command: parsed arguments in, an exit code out.

Each function checks what it can locally (a batch reference's shape, an index),
sends one request through ``transport``, and prints the reply with ``render``
(or as JSON). ``watch`` and ``wait`` ride out a daemon restart by reconnecting.
``submit``, ``add`` and ``consent`` live in their own modules, imported only when
they run: they load the daemon's config and parser, which a read command must
never pay for.
"""

from __future__ import annotations

import json
import os
import sys
import time

from batchctl import render
from batchctl.transport import (
    E_CONFIG,
    E_NO_REPLY,
    E_TIMEOUT,
    E_USAGE,
    EXIT_DOWN,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Connection,
    Failure,
    Lost,
    call,
    die,
    result_of,
)
from batchd.protocol import E_BAD_STATE, E_UNKNOWN_BATCH, is_batch_id

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any

    from batchd import shapes

TICK_S = 1.0  # watch on a terminal redraws its line this often (elapsed time moves)
RECONNECT_S = 0.2  # watch and wait try to reach a restarting daemon this often


# --- shared ----------------------------------------------------------------------------


def socket_path(args: Namespace) -> Path:
    """The control socket, resolved as batchd resolves it (without loading the full config)."""
    from batchd.paths import ConfigError, resolve_socket

    try:
        return resolve_socket(os.environ, config=args.config, socket=args.socket)
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)


def path_options(args: Namespace) -> dict[str, str | None]:
    """The path options given (for ``batchd.paths.load_paths`` and ``load_config``)."""
    return {
        "config": args.config,
        "spool": args.spool,
        "state_dir": args.state_dir,
        "socket": args.socket,
    }


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


def usage(message: str) -> Failure:
    return Failure(message, EXIT_USAGE, E_USAGE)


def emit_json(obj: object, *, indent: int | None = 2) -> None:
    print(json.dumps(obj, indent=indent, ensure_ascii=False), flush=indent is None)


def reply(args: Namespace, result: object, text: str) -> int:
    """Print a command's reply: JSON with ``--json``, else the text for people."""
    if args.json:
        emit_json(result)
    else:
        print(text)
    return EXIT_OK


# --- reading ---------------------------------------------------------------------------


def status(args: Namespace) -> int:
    st: shapes.Status = call(socket_path(args), "status")
    return reply(args, st, "" if args.json else render.format_status(st, time.time()))


def list_(args: Namespace) -> int:
    result: shapes.BatchList = call(socket_path(args), "list")
    if args.ids and not args.json:
        text = render.format_ids(result["batches"])
        if text:
            print(text)
        return EXIT_OK
    width = render.terminal_width()
    return reply(args, result, "" if args.json else render.format_list(result["batches"], width))


def show(args: Namespace) -> int:
    ref = batch_ref(args.batch_id)
    result: shapes.Show = call(socket_path(args), "show", {"batch_id": ref})
    if args.json:
        return reply(args, result, "")
    return reply(args, result, render.format_show(result, time.time(), render.terminal_width()))


def ping(args: Namespace) -> int:
    r: shapes.Ping = call(socket_path(args), "ping")
    return reply(args, r, f"batchd {r['version']} is running (pid {r['pid']})")


# --- changing ----------------------------------------------------------------------------


def pause(args: Namespace) -> int:
    req: dict[str, Any] = {"now": bool(args.now)}
    if args.batch_id is not None:
        req["batch_id"] = batch_ref(args.batch_id)
    r: shapes.Paused = call(socket_path(args), "pause", req)
    return reply(args, r, render.paused(r))


def resume(args: Namespace) -> int:
    """``resume BATCH_ID`` or ``resume --all``; with neither the daemon says what it needs."""
    if args.all and args.batch_id is not None:
        raise usage("resume takes BATCH_ID or --all, not both")
    req: dict[str, Any] = {}
    if args.all:
        req["all"] = True
    elif args.batch_id is not None:
        req["batch_id"] = batch_ref(args.batch_id)
    r: shapes.Resumed = call(socket_path(args), "resume", req)
    return reply(args, r, render.resumed(r))


def cancel(args: Namespace) -> int:
    ref = batch_ref(args.batch_id)
    r: shapes.Cancelled = call(socket_path(args), "cancel", {"batch_id": ref})
    return reply(args, r, render.cancelled(r))


def retry(args: Namespace) -> int:
    ref = batch_ref(args.batch_id)
    r: shapes.Requeued = call(socket_path(args), "retry", {"batch_id": ref})
    return reply(args, r, render.requeued(r))


def skip(args: Namespace) -> int:
    if args.index < 0:
        raise usage("skip: INDEX counts from 0 (see `batchctl show BATCH_ID`)")
    ref = batch_ref(args.batch_id)
    r: shapes.Skipped = call(socket_path(args), "skip", {"batch_id": ref, "index": args.index})
    return reply(args, r, render.skipped(r))


def reset_breaker(args: Namespace) -> int:
    ref = batch_ref(args.batch_id)
    r: shapes.BreakerReset = call(socket_path(args), "reset-breaker", {"batch_id": ref})
    return reply(args, r, render.breaker_reset(r))


def prune(args: Namespace) -> int:
    if args.older_than < 0:
        raise usage("prune: --older-than DAYS must be 0 or more")
    req = {"older_than_days": args.older_than, "dry_run": bool(args.dry_run)}
    r: shapes.Pruned = call(socket_path(args), "prune", req)
    return reply(args, r, render.pruned(r))


def reload(args: Namespace) -> int:
    """Make the daemon re-read its config; a bad one is exit 1 with the daemon's error."""
    r: shapes.Reloaded = call(socket_path(args), "reload")
    return reply(args, r, render.reloaded(r))


RESTART_WAIT_S = 60.0  # systemd waits RestartSec= (5 s) before it starts batchd again


def restart(args: Namespace) -> int:
    """Restart the daemon, leaving what runs running (SPEC 16); wait until it answers again."""
    path = socket_path(args)
    asked = time.monotonic()
    r: shapes.Restarting = call(path, "restart")
    while time.monotonic() - asked < RESTART_WAIT_S:
        time.sleep(RECONNECT_S)
        try:
            st: shapes.Status = call(path, "status")
        except Failure:
            continue  # between the two daemons
        if st["daemon"]["uptime_s"] < time.monotonic() - asked:  # a new start
            return reply(args, {**r, "pid": st["daemon"]["pid"]}, render.restarted(r, st))
    die(
        f"batchd did not come back within {RESTART_WAIT_S:g}s of the restart; see its log "
        "(`journalctl --user -u batchd`, or the terminal it ran in)",
        EXIT_DOWN,
        E_NO_REPLY,
    )


# --- logs ----------------------------------------------------------------------------------


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
    }
    attempts = r.get("attempts", [latest])
    for a in attempts:
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
        try:
            first: shapes.Logs = call(path, "logs", req)
        except Failure as e:
            if e.code != E_BAD_STATE:  # not started yet: nothing to show before following
                raise
        else:
            start = last_lines(first["text"], args.lines)
            shown: shapes.LogEvent = {
                "type": "log",
                "index": first["index"],
                "attempt": first["attempt"],
                "text": start,
            }
            show_follow_event(dict(shown), args.json)
            req["index"] = first["index"]
            skip_attempt = first["attempt"]
            skip_bytes = len(first["text"].encode())
            if first["truncated"]:
                skip_bytes = os.path.getsize(first["path"])
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


# --- watch and wait: status events that survive a daemon restart ----------------------------

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
        with conn:
            try:
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
                        break
                    event: shapes.StatusEvent = msg["event"]
                    yield event["status"]
            except Lost:
                pass
        conn = None
        yield DOWN


def watch(args: Namespace) -> int:
    """One live progress line from the ``status`` events; Ctrl-C ends it with exit 0."""
    tty = sys.stdout.isatty() and not args.json
    drawn, last = 0, ""
    st: shapes.Status | None = None
    down = False
    try:
        for update in status_events(socket_path(args), lambda: TICK_S if tty else None):
            if update == DOWN:
                if not down:
                    drawn = note("batchctl: batchd went away; reconnecting", drawn)
                down = True
                continue
            if isinstance(update, str):  # a tick: the elapsed time moves
                if st is not None:
                    drawn = redraw(render.progress_line(st, time.time()), drawn)
                continue
            if down:
                drawn = note("batchctl: batchd is back", drawn)
                down, last = False, ""
            st = update
            if args.json:
                emit_json(st, indent=None)
                continue
            line = render.progress_line(st, time.time())
            if tty:
                drawn = redraw(line, drawn)
            elif line != last:
                print(line, flush=True)
            last = line
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()
    return EXIT_OK


def note(text: str, drawn: int) -> int:
    """A line on stderr, below the progress line if one is drawn; nothing is drawn after."""
    if drawn:
        sys.stdout.write("\n")
        sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)
    return 0


def redraw(line: str, drawn: int) -> int:
    sys.stdout.write("\r" + line.ljust(drawn))
    sys.stdout.flush()
    return len(line)


class Waiter:
    """``wait``'s view of the daemon: the next status, a deadline, and a note on restarts."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.events = status_events(path, self.tick)
        self.down = False

    def tick(self) -> float:
        if self.deadline is None:
            return TICK_S
        return max(0.001, min(TICK_S, self.deadline - time.monotonic()))

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def next(self) -> shapes.Status | None:
        """The next status; None when the deadline has passed."""
        while not self.expired():
            update = next(self.events)
            if update == DOWN and not self.down:
                print("batchctl: lost batchd; waiting for it to come back", file=sys.stderr)
            self.down = update == DOWN
            if not isinstance(update, str):
                return update
        return None


def spool_pending(args: Namespace) -> bool:
    """Is a submitted batch still in the spool (not yet a batch the daemon knows)?
    The names the daemon reads (batchd.spool.is_ignored), and its ``.claimed/``."""
    from batchd.paths import ConfigError, load_paths

    try:
        paths, _ = load_paths(os.environ, **path_options(args))
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)
    for where in (paths.spool_dir, paths.spool_dir / ".claimed"):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            if where != paths.spool_dir or not (
                name.startswith(".") or name.endswith((".tmp", ".part", "~")) or name == "rejected"
            ):
                return True
    return False


def wait(args: Namespace) -> int:
    """Until every awaited batch has finished: 0 all completed, 1 one failed or was
    cancelled, 4 when ``--timeout`` passes first. A daemon restart is waited out. With
    no BATCH_ID: every unfinished batch, including those still in the spool."""
    if args.timeout is not None and args.timeout < 0:
        raise usage("wait: --timeout S must be 0 or more")
    refs = [batch_ref(r) for r in args.batch_ids]  # checked before anything is sent
    path = socket_path(args)
    waiter = Waiter(path, args.timeout)
    st = waiter.next()
    while st is not None and not refs and spool_pending(args):
        st = waiter.next()
    if st is None:
        raise wait_timed_out(args, {})
    if refs:
        items = [call(path, "show", {"batch_id": r})["batch"] for r in refs]
    else:
        items = [b for b in st["batches"] if b["status"] not in render.FINISHED]
    targets: dict[str, shapes.BatchItem] = {b["batch_id"]: b for b in items}
    if not args.json:
        names = ", ".join(f"[{b['seq']}] {b['batch_id']}" for b in items)
        what = f"waiting for {render.plural(len(items), 'batch')}: {names}"
        print(what if items else "nothing to wait for: no unfinished batch", flush=True)
    pending = list(targets)
    while True:
        for bid in list(pending):
            item = targets[bid]
            if item["status"] in render.FINISHED:
                pending.remove(bid)
                if not args.json:
                    print(render.finished_line(item), flush=True)
        if not pending:
            break
        st = waiter.next()
        if st is None:
            raise wait_timed_out(args, {b: targets[b] for b in pending})
        shown = {b["batch_id"]: b for b in st["batches"]}
        for bid in pending:  # one pushed out of status's recent window: ask for it
            targets[bid] = shown.get(bid) or call(path, "show", {"batch_id": bid})["batch"]
    ok = all(b["status"] == "completed" for b in targets.values())
    if args.json:
        emit_json({"batches": list(targets.values()), "all_completed": ok})
    return EXIT_OK if ok else EXIT_FAIL


def wait_timed_out(args: Namespace, left: dict[str, shapes.BatchItem]) -> Failure:
    names = ", ".join(f"[{b['seq']}] {bid} ({b['status']})" for bid, b in left.items())
    what = f"still unfinished: {names}" if names else "the spool still holds submitted batches"
    return Failure(f"--timeout {args.timeout:g}s passed; {what}", EXIT_TIMEOUT, E_TIMEOUT)


# --- commands in their own modules (loaded only when they run) -------------------------------


def submit(args: Namespace) -> int:
    from batchctl import submit as submit_module

    return submit_module.submit(args)


def add(args: Namespace) -> int:
    from batchctl import submit as submit_module

    return submit_module.add(args)


def consent(args: Namespace) -> int:
    from batchctl import consent as consent_module

    return consent_module.consent(args)


def completion(args: Namespace) -> int:
    from batchctl import cli, completion

    print(completion.script(args.shell, cli.TABLE, cli.GLOBAL_OPTIONS), end="")
    return EXIT_OK
