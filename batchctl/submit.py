"""Queue batches without the daemon: ``submit FILE``, ``submit -``, ``submit --issues``, ``add``.

Each builds one batch request (``request``, ``issues``), checks it with the
daemon's own parser, and makes sure a daemon will see it: a running daemon
that watches another spool than the one resolved here refuses the batch
(exit 1, naming both folders); with no daemon running, a warning says that
nothing watches the spool yet. Then it asks consent once on a terminal
(``consent``), writes the request atomically into the spool (``.<name>.tmp``
0600, fsynced, renamed, directory fsynced) and pings the daemon so the batch
starts at once. Nothing is written unless all of it is good. Loaded only when
one of these commands runs: it imports the daemon's config, parser and store.
"""

from __future__ import annotations

import json
import os
import sys
import time

from batchctl import issues, render
from batchctl.errors import (
    E_WRONG_SPOOL,
    EXIT_DOWN,
    EXIT_FAIL,
    EXIT_OK,
    HOW_TO_START,
    Failure,
    die,
    usage,
)
from batchctl.options import load_config
from batchctl.request import (
    add_request,
    check,
    check_runner,
    check_worktree,
    command_line_choices,
    cwd_of,
    file_request,
    request,
    spool_limits,
)
from batchctl.transport import call

TYPE_CHECKING = False

if TYPE_CHECKING:
    from argparse import Namespace
    from pathlib import Path
    from typing import Any

    from batchd.config import Config


def submit(args: Namespace) -> int:
    """``submit FILE`` (``-``: standard input) or ``submit --issues N...``."""
    if (args.file is None) == (args.issues is None):
        raise usage("submit needs FILE (or - for stdin) or --issues N [N ...]")
    if args.file is not None and args.repo is not None:
        raise usage("--repo goes with --issues")
    issues.check_repo(args.repo)
    if args.file is None:
        return submit_issues(args)
    command_line_choices(args, isolated=True)  # a bad --verify: exit 2 before the file is read
    cfg = load_config(args)
    req, stem = file_request(args, cfg)
    return queue(args, cfg, req, (stem, "submit"))


def submit_issues(args: Namespace) -> int:
    """``submit --issues``: every title fetched with gh, or nothing queued."""
    numbers = issues.issue_numbers(args.issues)
    choices = command_line_choices(args)
    cfg = load_config(args)
    check_runner(choices, cfg)
    cwd = cwd_of(args)
    running = daemon_watches(cfg)  # before gh runs: a wrong spool is refused at once
    features, name = issues.issues_request(numbers, args.repo)  # all or nothing: no write yet
    req = request(features, cwd, name, choices, source_type="github_issues", issue_numbers=numbers)
    return queue(args, cfg, req, ("issues", "submit --issues"), running)


def add(args: Namespace) -> int:
    """One batch from the command line, one feature per argument."""
    choices = command_line_choices(args)  # usage errors first
    cfg = load_config(args)
    return queue(args, cfg, add_request(args, cfg, choices), ("add", "add"))


def queue(
    args: Namespace,
    cfg: Config,
    req: dict[str, Any],
    names: tuple[str, str],
    running: bool | None = None,
) -> int:
    """Check ``req`` with the daemon's parser and against the running daemon's spool (unless
    ``running`` says it was), ask consent once, write it, report. ``names``: the stem of the
    spool file, and what an error calls the request."""
    from batchctl.consent import maybe_ask_consent

    stem, label = names
    body = json.dumps(req, ensure_ascii=False).encode()
    features = check(label, body, spool_limits(cfg))
    check_worktree(req, label)
    if running is None:
        running = daemon_watches(cfg)
    maybe_ask_consent(cfg)
    written = write_request(cfg.paths.spool_dir, stem, body)
    if running:
        poke(cfg.paths.socket)
    where = workdir(req["cwd"], cfg)
    if args.json:
        shown = {"path": str(written), "features": features, "workdir": where}
        print(json.dumps({**shown, "daemon_running": running}, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"queued {render.plural(features, 'feature')}: {written}")
    print(f"runs in: {where}")
    return EXIT_OK


def daemon_watches(cfg: Config) -> bool:
    """Is a daemon running on our socket? One that watches another spool refuses the batch
    (it would never run); with none running, a warning on stderr."""
    spool, socket = cfg.paths.spool_dir, cfg.paths.socket
    try:
        theirs = call(socket, "status", timeout=5)["paths"]["spool_dir"]
    except Failure as e:
        if e.exit != EXIT_DOWN:
            print(f"batchctl: warning: {e.message}", file=sys.stderr)
            return True
        print(
            f"batchctl: warning: no batchd is running, so nothing watches the spool {spool} "
            f"yet; the batch starts when a daemon on that spool does:\n  {HOW_TO_START}",
            file=sys.stderr,
        )
        return False
    if os.path.realpath(theirs) != os.path.realpath(spool):
        die(
            f"the running batchd (socket {socket}) watches the spool {theirs}, not {spool}: "
            "it would never run this batch. Leave out --spool (and BATCHD_SPOOL_DIR) to queue "
            f"into its spool, or give the --socket of a daemon that watches {spool}",
            EXIT_FAIL,
            E_WRONG_SPOOL,
        )
    return True


def poke(socket: Path) -> None:
    """A ping makes a running daemon scan the spool at once."""
    try:
        call(socket, "ping", timeout=5)
    except Failure as e:
        print(f"batchctl: warning: {e.message}", file=sys.stderr)


def write_request(spool: Path, stem: str, body: bytes) -> Path:
    """``.<name>.tmp`` (0600, fsynced), renamed to ``<stem>-<time>-<pid>.json``, dir fsynced."""
    from batchd.store import StoreError, ensure_dir, write_durable

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip("._-") or "batch"
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    name = f"{safe[:80]}-{stamp}-{os.getpid()}.json"
    try:
        ensure_dir(spool)
        write_durable(spool, name, body)
    except (StoreError, OSError) as e:
        die(f"cannot write into the spool dir {spool}: {getattr(e, 'strerror', None) or e}")
    return spool / name


def workdir(cwd: str | None, cfg: Config) -> str:
    """Where the features will run, as the daemon decides it: the batch's cwd, else
    runner.cwd, else home; symlinks resolved."""
    where = cwd or os.path.expanduser(cfg.runner.cwd or "~")
    return os.path.realpath(where)
