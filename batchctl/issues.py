"""``submit --issues``: GitHub issues as features, their titles fetched with ``gh``.

``gh issue view N --json number,title`` runs as an argv list (a few at a time,
each with a time limit), never through a shell. Any trouble (gh missing, not
logged in, an issue not found, a timeout, output that is not what gh prints)
is a ``Failure`` naming the issue and the fix, and nothing is queued. Titles
are made one clean line. Loaded only by ``submit``; it never writes anything.
"""

from __future__ import annotations

import json
import os
import sys

from batchctl import render
from batchctl.errors import E_GH, E_INVALID, EXIT_FAIL, Failure, die, usage

GH_TIMEOUT_S = 10.0
GH_AT_ONCE = 4  # gh calls running at the same time
MAX_ISSUES = 100
TITLE_MAX = 200  # characters of an issue title in its feature line, CUT_MARK included
CUT_MARK = "..."
NO_TITLE = "(no title)"


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
        raise usage(f"--repo {render.printable(repo)!r}: expected OWNER/NAME (or HOST/OWNER/NAME)")


def issue_numbers(raw: list[int]) -> list[int]:
    numbers = list(dict.fromkeys(raw))
    bad = [n for n in numbers if n <= 0]
    if bad:
        raise usage(f"--issues: {bad[0]} is not an issue number (positive integers only)")
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


def issues_request(numbers: list[int], repo: str | None) -> tuple[list[str], str]:
    """The features of these issues and the batch's name; all fetched, or a ``Failure``."""
    features = fetch_features(numbers, repo)
    name = f"issues {', '.join(f'#{n}' for n in numbers)}"
    if repo:
        name = f"{repo} {name}"
    return features, render.cut(name, 200)
