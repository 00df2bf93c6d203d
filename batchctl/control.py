"""The commands that make one request and print its reply: read (status, list, show,
ping) and change (pause, resume, cancel, retry, skip, reset-breaker, prune, reload, limit).

Each checks what it can locally (a batch reference's shape, an index, options
that go together: exit 2 or 1 before anything is sent), sends one request
through ``transport`` and prints the reply with ``render`` (or as JSON). Loaded
by ``cli`` only when one of these runs; standard library only, like everything
a read command loads.
"""

from __future__ import annotations

import time

from batchctl import render, render_status
from batchctl.errors import EXIT_OK, usage
from batchctl.options import batch_ref, socket_path
from batchctl.render import reply
from batchctl.transport import call

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Any

    from batchd import shapes


# --- reading ---------------------------------------------------------------------------


def status(args: Namespace) -> int:
    st: shapes.Status = call(socket_path(args), "status")
    return reply(args, st, "" if args.json else render_status.format_status(st, time.time()))


def list_(args: Namespace) -> int:
    from batchctl import render_batches  # not loaded by status: each read loads what it prints

    result: shapes.BatchList = call(socket_path(args), "list")
    if args.ids and not args.json:
        text = render_batches.format_ids(result["batches"])
        if text:
            print(text)
        return EXIT_OK
    if args.json:
        return reply(args, result, "")
    return reply(
        args, result, render_batches.format_list(result["batches"], render.terminal_width())
    )


def show(args: Namespace) -> int:
    from batchctl import render_batches

    ref = batch_ref(args.batch_id)
    result: shapes.Show = call(socket_path(args), "show", {"batch_id": ref})
    if args.json:
        return reply(args, result, "")
    text = render_batches.format_show(result, time.time(), render.terminal_width())
    return reply(args, result, text)


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
    """``resume BATCH_ID`` or ``resume --all``: exactly one of them (else exit 2)."""
    if args.all and args.batch_id is not None:
        raise usage("resume takes BATCH_ID or --all, not both")
    if not args.all and args.batch_id is None:
        raise usage("resume needs a BATCH_ID, or --all for every paused batch and the queue")
    req: dict[str, Any] = {"all": True} if args.all else {"batch_id": batch_ref(args.batch_id)}
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


def limit(args: Namespace) -> int:
    """The usage-limit waits (SPEC 13); ``--clear [RUNNER]`` ends them now."""
    from batchctl.table import CLEAR_ALL

    req: dict[str, Any] = {}
    if args.clear is not None:
        req = {"clear": True, "runner": None if args.clear == CLEAR_ALL else args.clear}
    r: shapes.Limits = call(socket_path(args), "limit", req)
    return reply(args, r, render.limits(r))


RESTART_WAIT_S = 60.0  # systemd waits RestartSec= (5 s) before it starts batchd again
RESTART_POLL_S = 0.2


def restart(args: Namespace) -> int:
    """Restart the daemon, leaving what runs running (SPEC 16); wait until it answers again."""
    from batchctl.errors import E_NO_REPLY, EXIT_DOWN, Failure, die

    path = socket_path(args)
    asked = time.monotonic()
    r: shapes.Restarting = call(path, "restart")
    while time.monotonic() - asked < RESTART_WAIT_S:
        time.sleep(RESTART_POLL_S)
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


def reload(args: Namespace) -> int:
    """Make the daemon re-read its config; a bad one is exit 1 with the daemon's error."""
    r: shapes.Reloaded = call(socket_path(args), "reload")
    return reply(args, r, render.reloaded(r))
