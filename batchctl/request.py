"""A batch request made from the command line: its features, cwd, name and choices.

Reads what ``submit FILE`` (or ``-``) names, a regular file or standard input
(never a FIFO or a device), and checks every part with the daemon's own parser
(``batchd.parse``), the ``[spool]`` limits and the runner profiles of the
config, so a request batchctl accepts is one the daemon accepts. Errors name
what the user wrote: the file and its line, ``feature 2`` of ``add``, the
option (``--cwd``, ``--runner``, ``--verify``, ``--parallel``). It returns the
request; it never writes anything (``submit`` does). Loaded only by ``submit``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from batchctl import render
from batchctl.errors import E_INVALID, EXIT_FAIL, die, usage
from batchd.model import DEFAULT_RUNNER
from batchd.parse import Limits, Options, ParseError, parse_spool_file, with_runners

TYPE_CHECKING = False

if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Any

    from batchd.config import Config


def spool_limits(cfg: Config) -> Limits:
    """The daemon's limits for a spool file, its runner profiles included."""
    limits = Limits(
        max_file_bytes=cfg.spool.max_file_bytes,
        max_features=cfg.spool.max_features,
        max_line_chars=cfg.spool.max_line_chars,
    )
    return with_runners(limits, cfg.profile_names())


def request(
    features: list[str], cwd: str, name: str | None, choices: dict[str, Any], **source: Any
) -> dict[str, Any]:
    """The request written into the spool (``batchd.model.BatchRequest``); a choice left
    at its default is left out, so a plain request reads as it always did."""
    fields = {"source_type": "file", "issue_numbers": None, **source}
    return {"features": features, **fields, "cwd": cwd, "name": name, **choices}


def check(label: str, body: bytes, limits: Limits) -> int:
    """The number of features of an encoded request, checked as the daemon will check it;
    an error is named after ``label`` (what the user wrote: ``add``, a file)."""
    try:
        return len(parse_spool_file(f"{label}.json", body, limits).features)
    except ParseError as e:
        die(str(e).replace(f"{label}.json: ", f"{label}: ", 1), EXIT_FAIL, E_INVALID)


# --- where the features run -------------------------------------------------------------


def caller_cwd() -> str:
    try:
        return os.getcwd()
    except OSError as e:
        die(
            f"the current directory is gone ({e.strerror}); cd somewhere or pass --cwd DIR",
            EXIT_FAIL,
            E_INVALID,
        )


def checked_dir(cwd: str, what: str | None = None) -> str:
    """``cwd`` (``--cwd``, or a file's directive ``what``) made absolute; a directory that
    does not exist is refused (exit 1)."""
    full = os.path.abspath(os.path.expanduser(cwd))
    if not os.path.isdir(full):
        where = f"--cwd {render.printable(cwd)!r}"
        fix = "create it or name another"
        if what is not None:
            where, fix = (
                f"{what}: '# batchd: cwd = {render.printable(cwd)}'",
                "create it or fix the line",
            )
        die(f"{where}: no such directory; {fix}", EXIT_FAIL, E_INVALID)
    return full


def cwd_of(args: Namespace) -> str:
    """``--cwd`` (checked), else the caller's directory."""
    return checked_dir(args.cwd) if args.cwd is not None else caller_cwd()


# --- the batch's choices: --runner, --verify, --worktree, --parallel ----------------------


def command_line_choices(args: Namespace, isolated: bool = False) -> dict[str, Any]:
    """The request fields the options give (SPEC 13-15). Usage errors (exit 2): a bad
    ``--verify``; ``--parallel`` without a worktree (``isolated``: a file's directive)."""
    if args.parallel and not (args.worktree or isolated):
        raise usage(
            "--parallel needs --worktree: each feature runs in a git worktree of its own; "
            "add --worktree (or leave out --parallel)"
        )
    out: dict[str, Any] = {}
    if args.runner is not None:
        out["runner"] = args.runner
    if args.verify is not None:
        out["verify"] = split_verify(args.verify)
    if args.worktree:
        out["isolation"] = "worktree"
    if args.parallel:
        out["parallel"] = True
    return out


def split_verify(text: str) -> list[str]:
    """``--verify 'make test'`` split as a shell would (it never runs through one)."""
    import shlex

    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise usage(f"--verify {text!r}: {e}; quote the command as a shell would") from None
    if not argv:
        raise usage("--verify is empty; give the check command, e.g. --verify 'make test'")
    return argv


def file_choices(options: Options) -> dict[str, Any]:
    """The request fields of a plain file's directives (``# batchd: runner = ...``)."""
    out: dict[str, Any] = {}
    if options.runner != DEFAULT_RUNNER:
        out["runner"] = options.runner
    if options.verify is not None:
        out["verify"] = options.verify
    if options.isolation is not None:
        out["isolation"] = options.isolation
    if options.parallel:
        out["parallel"] = True
    return out


def check_worktree(req: dict[str, Any], label: str) -> None:
    """A worktree batch's cwd is inside a git work tree (SPEC 15), the daemon's own cheap
    check (else exit 1, saying what to do); git has the last word at its first feature."""
    if req.get("isolation") != "worktree":
        return
    from batchd.worktreecheck import work_tree_refusal

    why = work_tree_refusal(req["cwd"], label)
    if why is not None:
        die(render.printable(why), EXIT_FAIL, E_INVALID)


def check_runner(choices: dict[str, Any], cfg: Config) -> None:
    """``--runner`` names a profile of the config (else exit 1, naming the profiles)."""
    runner = choices.get("runner")
    names = cfg.profile_names()
    if runner is not None and runner not in names:
        die(
            f"--runner {render.printable(runner)!r}: no such runner profile; the profiles are "
            f"{', '.join(sorted(names))} ([runner] is 'default', [runners.NAME] the others, "
            f"in {cfg.paths.config})",
            EXIT_FAIL,
            E_INVALID,
        )


# --- submit FILE | - and add --------------------------------------------------------------


def read_spool_input(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (``-``: standard input); a FIFO or a device
    named on the command line is refused, never read."""
    if path == "-":
        try:
            return sys.stdin.buffer.read(limit)
        except OSError as e:
            die(f"standard input: cannot read: {e.strerror}", EXIT_FAIL, E_INVALID)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        die(f"{path}: cannot open: {e.strerror}", EXIT_FAIL, E_INVALID)
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            die(
                f"{path}: not a regular file; submit reads plain feature files only "
                "(or standard input: `submit -`)",
                EXIT_FAIL,
                E_INVALID,
            )
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as e:
        die(f"{path}: cannot read: {e.strerror}", EXIT_FAIL, E_INVALID)
    finally:
        os.close(fd)


def file_request(args: Namespace, cfg: Config) -> tuple[dict[str, Any], str]:
    """The request of ``submit FILE``, and the stem of its spool name. Its features and
    directives; --cwd, else its directive, else here; an option over its directive."""
    limits = spool_limits(cfg)
    data = read_spool_input(args.file, limits.max_file_bytes + 1)
    name = "stdin" if args.file == "-" else os.path.basename(args.file)
    try:
        parsed = parse_spool_file(name, data, limits)
    except ParseError as e:
        die(str(e), EXIT_FAIL, E_INVALID)
    if args.cwd is not None:
        cwd = checked_dir(args.cwd)
    elif parsed.cwd is not None:
        cwd = checked_dir(parsed.cwd, name)
    else:
        cwd = caller_cwd()
    isolated = parsed.options.isolation is not None
    choices = {**file_choices(parsed.options), **command_line_choices(args, isolated)}
    check_runner(choices, cfg)
    req = request(
        parsed.features,
        cwd,
        parsed.name,
        choices,
        source_type=parsed.source_type,
        issue_numbers=parsed.issue_numbers,
    )
    return req, "stdin" if args.file == "-" else Path(args.file).stem


def add_request(args: Namespace, cfg: Config, choices: dict[str, Any]) -> dict[str, Any]:
    """The request of ``add``: one feature per argument, each checked on its own, so that an
    error names it (``feature 2: ...``); named ``--name``, else after its first feature."""
    from batchd.parse import check_feature

    limits = spool_limits(cfg)
    features: list[str] = args.features
    for n, text in enumerate(features, 1):
        try:
            if not text.strip():
                raise ParseError(f"feature {n}: empty; give each feature some text (quote it)")
            check_feature(f"feature {n}", text, limits)
        except ParseError as e:
            die(str(e), EXIT_FAIL, E_INVALID)
    name = args.name
    if name is None:
        more = f" (+{len(features) - 1} more)" if len(features) > 1 else ""
        name = render.cut(" ".join(features[0].split()), 60) + more
    check_runner(choices, cfg)
    return request(features, cwd_of(args), name, choices)
