"""``wait``: until batches finish; exit 0 when all completed, 1 when one did not, 4 on
``--timeout``.

Reads the ``status`` stream of ``watch`` (which rides out a daemon restart),
and ``show`` for a batch that has left status's window of recent ones. With no
BATCH_ID it waits for every unfinished batch, and first for what is still in
the spool (a batch just submitted that the daemon has not taken yet). Loaded by
``cli`` only when ``wait`` runs; standard library only.
"""

from __future__ import annotations

import os
import sys
import time

from batchctl import render
from batchctl.errors import E_TIMEOUT, EXIT_FAIL, EXIT_OK, EXIT_TIMEOUT, Failure, usage
from batchctl.options import batch_ref, load_paths, socket_path
from batchctl.render import emit_json
from batchctl.transport import call
from batchctl.watch import DOWN, TICK_S, status_events
from batchd.spoolnames import CLAIMED, is_ignored

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path

    from batchd import shapes


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


def spool_pending(spool: Path) -> bool:
    """Is a submitted batch still in the spool (not yet a batch the daemon knows)? A name
    the daemon reads (``spoolnames.is_ignored``), or anything in its claimed folder."""
    for where in (spool, spool / CLAIMED):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        if any(where != spool or not is_ignored(name) for name in names):
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
    if not refs:
        spool = load_paths(args).spool_dir
        while st is not None and spool_pending(spool):
            st = waiter.next()
    if st is None:
        raise wait_timed_out(args, {})
    if refs:
        items = [call(path, "show", {"batch_id": r})["batch"] for r in refs]
    else:
        items = [b for b in st["batches"] if b["status"] not in render.FINISHED]
    if not args.json:
        names = ", ".join(f"[{b['seq']}] {b['batch_id']}" for b in items)
        what = f"waiting for {render.plural(len(items), 'batch')}: {names}"
        print(what if items else "nothing to wait for: no unfinished batch", flush=True)
    targets = follow(args, path, waiter, {b["batch_id"]: b for b in items})
    ok = all(b["status"] == "completed" for b in targets.values())
    if args.json:
        emit_json({"batches": list(targets.values()), "all_completed": ok})
    return EXIT_OK if ok else EXIT_FAIL


def follow(
    args: Namespace, path: Path, waiter: Waiter, targets: dict[str, shapes.BatchItem]
) -> dict[str, shapes.BatchItem]:
    """The awaited batches, each as it was when it finished (printed as it does)."""
    pending = list(targets)
    while True:
        for bid in list(pending):
            item = targets[bid]
            if item["status"] in render.FINISHED:
                pending.remove(bid)
                if not args.json:
                    print(render.finished_line(item), flush=True)
        if not pending:
            return targets
        st = waiter.next()
        if st is None:
            raise wait_timed_out(args, {b: targets[b] for b in pending})
        shown = {b["batch_id"]: b for b in st["batches"]}
        for bid in pending:  # one pushed out of status's recent window: ask for it
            targets[bid] = shown.get(bid) or call(path, "show", {"batch_id": bid})["batch"]


def wait_timed_out(args: Namespace, left: dict[str, shapes.BatchItem]) -> Failure:
    names = ", ".join(f"[{b['seq']}] {bid} ({b['status']})" for bid, b in left.items())
    what = f"still unfinished: {names}" if names else "the spool still holds submitted batches"
    return Failure(f"--timeout {args.timeout:g}s passed; {what}", EXIT_TIMEOUT, E_TIMEOUT)
