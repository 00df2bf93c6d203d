"""Queue batches without the daemon: ``submit FILE``, ``submit -``, ``submit --issues``, ``add``.

Each builds one batch request, checks it with the daemon's own parser and the
``[spool]`` limits of the config, and writes it atomically into the spool
(``.<name>.tmp`` 0600, fsynced, renamed, directory fsynced); then it pings a
running daemon so the batch starts at once. Nothing is written unless all of
the request is good: a missing working directory, a file the daemon would
refuse, or any ``gh`` failure ends the run with nothing queued. ``gh`` runs as
an argv list (a few at a time), never through a shell. Loaded only when one of
these commands runs: it imports the daemon's config, parser and store.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from batchctl import render
from batchctl.commands import path_options
from batchctl.transport import (
    E_CONFIG,
    E_GH,
    E_INVALID,
    E_USAGE,
    EXIT_DOWN,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    HOW_TO_START,
    Failure,
    call,
    die,
)
from batchd.config import Config, load_config
from batchd.parse import Limits, ParseError, parse_spool_file
from batchd.paths import ConfigError

TYPE_CHECKING = False

if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Any

GH_TIMEOUT_S = 10.0
GH_AT_ONCE = 4  # gh calls running at the same time
MAX_ISSUES = 100
TITLE_MAX = 200  # characters of an issue title in its feature line, CUT_MARK included
CUT_MARK = "..."
NO_TITLE = "(no title)"


# --- shared by every way in ---------------------------------------------------------------


def load_full_config(args: Namespace) -> Config:
    try:
        return load_config(os.environ, **path_options(args))
    except ConfigError as e:
        die(str(e), EXIT_FAIL, E_CONFIG)


def spool_limits(cfg: Config) -> Limits:
    return Limits(
        max_file_bytes=cfg.spool.max_file_bytes,
        max_features=cfg.spool.max_features,
        max_line_chars=cfg.spool.max_line_chars,
    )


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


def workdir(cwd: str | None, cfg: Config) -> str:
    """Where the features will run, as the daemon decides it (Engine.effective_cwd):
    the batch's cwd, else runner.cwd, else home; symlinks resolved."""
    where = cwd or os.path.expanduser(cfg.runner.cwd or "~")
    return os.path.realpath(where)


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


def ping_after_submit(path: Path) -> bool:
    """A ping makes a running daemon scan the spool at once; False when none runs."""
    try:
        call(path, "ping", timeout=5)
    except Failure as e:
        if e.exit == EXIT_DOWN:
            return False
        print(f"batchctl: warning: {e.message}", file=sys.stderr)
    return True


def queue(args: Namespace, cfg: Config, request: dict[str, Any], stem: str) -> int:
    """Check ``request`` with the daemon's parser, ask consent once, write it, report."""
    from batchctl.consent import maybe_ask_consent

    body = json.dumps(request, ensure_ascii=False).encode()
    try:
        parsed = parse_spool_file("request.json", body, spool_limits(cfg))
    except ParseError as e:
        die(str(e), EXIT_FAIL, E_INVALID)
    maybe_ask_consent(cfg)
    written = write_request(cfg.paths.spool_dir, stem, body)
    running = ping_after_submit(cfg.paths.socket)
    where = workdir(request["cwd"], cfg)
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(written),
                    "features": len(parsed.features),
                    "workdir": where,
                    "daemon_running": running,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    print(f"queued {render.plural(len(parsed.features), 'feature')}: {written}")
    print(f"runs in: {where}")
    if not running:
        print(f"batchd is not running; the batch starts when it does:\n  {HOW_TO_START}")
    return EXIT_OK


# --- submit FILE | - -----------------------------------------------------------------------


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
    """The request for ``submit FILE``: its features; --cwd, else its directive, else here."""
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
    request = {
        "features": parsed.features,
        "source_type": parsed.source_type,
        "issue_numbers": parsed.issue_numbers,
        "cwd": cwd,
        "name": parsed.name,
    }
    return request, "stdin" if args.file == "-" else Path(args.file).stem


def submit(args: Namespace) -> int:
    if (args.file is None) == (args.issues is None):
        raise Failure(
            "submit needs FILE (or - for stdin) or --issues N [N ...]", EXIT_USAGE, E_USAGE
        )
    if args.file is not None and args.repo is not None:
        raise Failure("--repo goes with --issues", EXIT_USAGE, E_USAGE)
    check_repo(args.repo)
    cfg = load_full_config(args)
    if args.issues is not None:
        cwd = checked_dir(args.cwd) if args.cwd is not None else caller_cwd()
        request, stem = issues_request(args, cwd)
    else:
        request, stem = file_request(args, cfg)
    return queue(args, cfg, request, stem)


# --- add FEATURE... ------------------------------------------------------------------------


def add(args: Namespace) -> int:
    """One batch from the command line, one feature per argument."""
    cfg = load_full_config(args)
    cwd = checked_dir(args.cwd) if args.cwd is not None else caller_cwd()
    features: list[str] = args.features
    name = args.name
    if name is None:
        more = f" (+{len(features) - 1} more)" if len(features) > 1 else ""
        name = render.cut(" ".join(features[0].split()), 60) + more
    request = {
        "features": features,
        "source_type": "file",
        "issue_numbers": None,
        "cwd": cwd,
        "name": name,
    }
    return queue(args, cfg, request, "add")


# --- submit --issues -------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Text from gh as one line: escape sequences out, whitespace runs (tabs and newlines
    included) to one space, other control characters out; other Unicode is kept."""
    import re

    text = re.sub(
        r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
        r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|\Z)"  # OSC: titles, hyperlinks
        r"|\x1b[PX^_][^\x1b]*(?:\x1b\\|\Z)"  # DCS, SOS, PM, APC strings
        r"|\x1b[ -/]*[0-~]",  # the other two-character escapes
        "",
        text,
    )
    text = "".join(c if c.isspace() or c.isprintable() else "" for c in text)
    return " ".join(text.split())


def clean_title(title: str) -> str:
    """An issue title as one line of at most 200 characters; a cut one ends in ``...``."""
    text = one_line(title)
    if len(text) <= TITLE_MAX:
        return text
    return text[: TITLE_MAX - len(CUT_MARK)].rstrip() + CUT_MARK


def issue_feature(number: int, title: str) -> str:
    """The feature line of a GitHub issue: ``Issue #N: <title>``, ``(no title)`` for a blank one."""
    return f"Issue #{number}: {clean_title(title) or NO_TITLE}"


def gh_timeout() -> float:
    """10 s per gh call. ``BATCHCTL_GH_TIMEOUT`` overrides it: for the test suite only."""
    try:
        value = float(os.environ.get("BATCHCTL_GH_TIMEOUT", ""))
    except ValueError:
        return GH_TIMEOUT_S
    return value if value > 0 else GH_TIMEOUT_S


def gh_fail(message: str) -> Failure:
    return Failure(message, EXIT_FAIL, E_GH)


def gh_feature(number: int, repo: str | None) -> str:
    """``Issue #N: <title>`` from ``gh issue view``; any trouble raises naming the fix."""
    import subprocess

    argv = ["gh", "issue", "view", str(number), "--json", "number,title"]
    if repo:
        argv += ["--repo", repo]
    timeout = gh_timeout()
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        raise gh_fail(
            f"issue #{number}: the GitHub CLI `gh` is not installed (or not on PATH); "
            "install gh: https://cli.github.com, then run `gh auth login`"
        ) from None
    except subprocess.TimeoutExpired:
        raise gh_fail(
            f"issue #{number}: `gh issue view {number}` did not answer within {timeout:g}s; "
            "check your network and `gh auth status`, then try again"
        ) from None
    except OSError as e:
        raise gh_fail(
            f"issue #{number}: cannot run gh: {e.strerror or e}; reinstall gh: https://cli.github.com"
        ) from None
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise gh_fail(gh_error(number, repo, proc.returncode, stderr))
    try:
        title = json.loads(proc.stdout)["title"]
        if not isinstance(title, str):
            raise TypeError(title)
    except (ValueError, KeyError, TypeError):
        shown = render.cut(one_line(proc.stdout.decode("utf-8", "replace")), 60)
        raise gh_fail(
            f"issue #{number}: unexpected output from `gh issue view` (not JSON with a title): "
            f"{shown!r}; update gh: https://cli.github.com"
        ) from None
    return issue_feature(number, title)


def gh_error(number: int, repo: str | None, code: int, stderr: str) -> str:
    said = render.cut(one_line(stderr), 160) or f"exit status {code}"
    low = stderr.lower()
    auth = ("auth login", "not logged", "authenticat", "bad credentials", "http 401", "gh_token")
    if any(k in low for k in auth):
        return f"issue #{number}: gh is not logged in to GitHub; run `gh auth login` (gh: {said})"
    if "could not resolve" in low or "not found" in low:
        where = f" in {repo}" if repo else " in the current directory's repository"
        return (
            f"issue #{number}: not found{where}; check the issue number and --repo "
            f"OWNER/NAME (gh: {said})"
        )
    return f"issue #{number}: `gh issue view` failed (exit status {code}): {said}"


def check_repo(repo: str | None) -> None:
    """``OWNER/NAME`` or ``HOST/OWNER/NAME``: never something gh could take for an option."""
    if repo is None:
        return
    parts = repo.split("/")
    ok = len(parts) in (2, 3) and all(
        p and not p.startswith("-") and all(c.isalnum() or c in "._-" for c in p) for p in parts
    )
    if not ok:
        raise Failure(
            f"--repo {render.printable(repo)!r}: expected OWNER/NAME (or HOST/OWNER/NAME)",
            EXIT_USAGE,
            E_USAGE,
        )


def issue_numbers(raw: list[int]) -> list[int]:
    numbers = list(dict.fromkeys(raw))
    bad = [n for n in numbers if n <= 0]
    if bad:
        raise Failure(
            f"--issues: {bad[0]} is not an issue number (positive integers only)",
            EXIT_USAGE,
            E_USAGE,
        )
    if len(numbers) > MAX_ISSUES:
        die(
            f"--issues: {len(numbers)} issues, at most {MAX_ISSUES} per batch; "
            "submit them in several batches",
            EXIT_FAIL,
            E_INVALID,
        )
    return numbers


def fetch_features(numbers: list[int], repo: str | None) -> list[str]:
    """Every issue's feature line, fetched GH_AT_ONCE at a time, each printed on stderr as it
    arrives. After a failure nothing new starts; the first failing issue (in the order
    given) ends the run."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    at_once = min(GH_AT_ONCE, len(numbers))
    print(
        f"batchctl: fetching {render.plural(len(numbers), 'issue title')} with gh "
        f"({at_once} at a time)",
        file=sys.stderr,
        flush=True,
    )
    done: dict[int, str] = {}
    failed: dict[int, Failure] = {}
    pool = ThreadPoolExecutor(at_once)
    try:
        futures = {pool.submit(gh_feature, n, repo): n for n in numbers}
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            for future in finished:
                n = futures[future]
                if future.cancelled():
                    continue
                error = future.exception()
                if isinstance(error, Failure):
                    failed[n] = error
                    for other in waiting:
                        other.cancel()
                elif error is not None:
                    raise error
                else:
                    done[n] = future.result()
                    print(f"batchctl: fetched {done[n]}", file=sys.stderr, flush=True)
            waiting = {f for f in waiting if not f.cancelled()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if failed:
        raise failed[next(n for n in numbers if n in failed)]
    return [done[n] for n in numbers]


def issues_request(args: Namespace, cwd: str) -> tuple[dict[str, Any], str]:
    numbers = issue_numbers(args.issues)
    features = fetch_features(numbers, args.repo)  # all or nothing: no spool write yet
    name = f"issues {', '.join(f'#{n}' for n in numbers)}"
    if args.repo:
        name = f"{args.repo} {name}"
    request = {
        "features": features,
        "source_type": "github_issues",
        "issue_numbers": numbers,
        "cwd": cwd,
        "name": render.cut(name, 200),
    }
    return request, "issues"
