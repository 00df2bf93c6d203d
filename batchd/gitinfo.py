"""The git evidence of an attempt (SPEC 14): what it committed and changed in its work tree.

Two layers. Pure parsers of git's own output (``parse_*``, ``count_lines``,
``changed_nothing``), tested against output of real git. A thin async layer
(``head``, ``in_work_tree``, ``evidence``) that runs git as argv, never through a
shell, in its own process group (``engines.process.spawn``: it is killed with its
children on the time limit, and its exit is never reaped by anyone else), with
``GIT_DIR``, ``GIT_WORK_TREE``, ``GIT_INDEX_FILE`` and the like removed from its
environment (a hook of the user's repository may set them), optional locks off
(``git status`` never writes the index behind the agent), and external diff
programs and text conversions off. ``Git`` is that runner, the one way batchd runs
git: the worktree modules (SPEC 15) use it too.

What this module must never do: fail an attempt. A git that is missing, hangs
past the time limit or fails is logged and the answer is None (no evidence),
never an exception to the caller. Its evidence functions never change the repository.

Cancellation: every call stops its git process group (shielded) before the
cancellation proceeds.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread

from batchd.classify import sanitize
from batchd.engines import SpawnError
from batchd.engines.process import Launch, spawn
from batchd.model import GitEvidence

log = logging.getLogger("batchd.git")

GIT = "git"
TIMEOUT_S = 10.0  # the whole of one ``evidence`` or ``head`` call
MAX_SUBJECTS = 20
SUBJECT_CHARS = 200
OUTPUT_CAP = 16 * 1024 * 1024  # more output than this is cut, and the call counts as failed
UNTRACKED_FILES = 1000  # untracked files whose lines are counted (all are counted as files)
UNTRACKED_BYTES = 4 * 1024 * 1024  # read of each untracked file for its lines
_BINARY_PROBE = 8000  # git's own: a NUL in the first 8000 bytes makes a file binary
_DROPPED_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
# Config for every call: no fsmonitor hook program, no colour, paths as they are.
_CONFIG = ("-c", "core.fsmonitor=false", "-c", "color.ui=never", "-c", "core.quotepath=off")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# --- pure: git's output -------------------------------------------------------------------


@dataclass(frozen=True)
class DiffStat:
    files: int
    insertions: int
    deletions: int


@dataclass(frozen=True)
class TreeStatus:
    dirty: bool  # anything changed, staged, deleted or untracked
    untracked: tuple[str, ...]  # paths relative to the top of the work tree


def unpointed(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the variables that point git at another repository, index or work
    tree (a runner in batchd's worktree must work on the worktree)."""
    return {k: v for k, v in base.items() if k not in _DROPPED_ENV}


def git_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a git call: ``base`` without the variables that point git
    elsewhere, in the C locale, with optional locks and prompts off."""
    env = unpointed(base)
    env.update(LC_ALL="C", GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    return env


def parse_head(out: bytes) -> str | None:
    """``git rev-parse --verify -q HEAD``: the commit id, or None for anything else."""
    text = out.decode("ascii", "replace").strip()
    return text if _COMMIT_RE.fullmatch(text) else None


def parse_count(out: bytes) -> int | None:
    """``git rev-list --count A..B``."""
    text = out.strip()
    return int(text) if text.isdigit() else None


def parse_subjects(out: bytes, limit: int = MAX_SUBJECTS) -> list[str]:
    """``git log --format=%s``: the first ``limit`` subjects, newest first, sanitised."""
    lines = out.decode("utf-8", "replace").splitlines()
    return [sanitize(s, SUBJECT_CHARS) for s in lines[:limit]]


def parse_numstat(out: bytes) -> DiffStat:
    """``git diff --numstat A``: files, and lines added and removed (binary files: 0 lines)."""
    files = insertions = deletions = 0
    for line in out.splitlines():
        fields = line.split(b"\t", 2)
        if len(fields) < 3:
            continue
        files += 1
        if fields[0].isdigit() and fields[1].isdigit():
            insertions += int(fields[0])
            deletions += int(fields[1])
    return DiffStat(files, insertions, deletions)


def parse_status(out: bytes) -> TreeStatus:
    """``git status --porcelain=v1 -z --untracked-files=all --no-renames``."""
    entries = [e for e in out.split(b"\0") if len(e) > 3]
    untracked = tuple(
        os.fsdecode(e[3:]) for e in entries if e.startswith(b"?? ") and not e.endswith(b"/")
    )
    return TreeStatus(dirty=bool(entries), untracked=untracked)


def count_lines(data: bytes) -> int:
    """Lines of a new file as ``git diff --numstat`` counts them; 0 for a binary file."""
    if not data or b"\0" in data[:_BINARY_PROBE]:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def changed_nothing(ev: GitEvidence) -> bool:
    """``verify.require_change``: the attempt made no commit and left no change.

    A tree that was dirty before the attempt still reads as changed (evidence
    compares against the commit the attempt started from, not the tree).
    """
    return ev.commits == 0 and ev.head_after == ev.head_before and not ev.dirty


def is_commit_id(text: str | None) -> bool:
    return text is not None and _COMMIT_RE.fullmatch(text) is not None


# --- IO: running git ----------------------------------------------------------------------


class GitFailed(Exception):
    """A git call that did not answer (or, from ``Git.ok``, failed); the message says which."""


@dataclass(frozen=True)
class GitResult:
    code: int
    stdout: bytes
    stderr: bytes  # its last 4 KiB

    def why(self) -> str:
        """git's own words on stderr, sanitised, for a message."""
        return sanitize(self.stderr.decode("utf-8", "replace").strip(), 300)


class Git:
    """git in one directory (``git -C DIR``, also its cwd), every call within one deadline.

    ``env`` is the base environment (``git_env`` removes what points git elsewhere);
    ``config`` is put before each call's arguments (``-c key=value`` pairs).
    """

    def __init__(
        self,
        cwd: str,
        env: Mapping[str, str] | None,
        timeout: float,
        config: tuple[str, ...] = (),
    ) -> None:
        self.cwd = cwd
        self.env = git_env(os.environ if env is None else env)
        self.timeout = timeout
        self.deadline = anyio.current_time() + timeout
        self.config = config

    async def call(self, *args: str) -> GitResult:
        """What ``git ARGS`` answered; ``GitFailed`` when it did not run to its end."""
        left = self.deadline - anyio.current_time()
        what = f"git {args[0]} in {self.cwd}"
        if left <= 0:
            raise GitFailed(f"{what}: no time left of {self.timeout:g} s")
        launch = Launch(
            argv=[GIT, "-C", self.cwd, *_CONFIG, *self.config, *args],
            env=self.env,
            cwd=self.cwd,
            log_path=None,
            timeout=left,
            kill_grace=1.0,
            tail_caps=(OUTPUT_CAP, 4096),
            what="git",
        )
        try:
            raw = await spawn(launch).wait()
        except (SpawnError, OSError) as e:
            raise GitFailed(f"{what}: {e}") from None
        if raw.timed_out:
            raise GitFailed(f"{what}: no answer within {self.timeout:g} s; stopped")
        if raw.exit_code is None:
            raise GitFailed(f"{what}: killed by signal {raw.signal}")
        if raw.output_bytes > len(raw.stdout_tail):
            raise GitFailed(f"{what}: more than {OUTPUT_CAP} bytes of output")
        result = GitResult(raw.exit_code, raw.stdout_tail, raw.stderr_tail)
        if result.code != 0:
            log.debug("%s: exit %d: %s", what, result.code, result.why())
        return result

    async def run(self, *args: str) -> tuple[int, bytes]:
        """Exit code and stdout of ``git ARGS``; ``GitFailed`` when it did not run to its end."""
        result = await self.call(*args)
        return result.code, result.stdout

    async def ok(self, *args: str) -> bytes:
        """stdout of a call that must succeed."""
        result = await self.call(*args)
        if result.code != 0:
            raise GitFailed(f"git {args[0]} in {self.cwd}: exit {result.code}: {result.why()}")
        return result.stdout

    async def head(self) -> str | None:
        code, out = await self.run("rev-parse", "--verify", "-q", "HEAD")
        return parse_head(out) if code == 0 else None  # exit 1: no commit yet


async def head(
    cwd: str, *, timeout: float = TIMEOUT_S, env: Mapping[str, str] | None = None
) -> str | None:
    """The commit checked out in ``cwd``; None outside a repository, before its first
    commit, or when git fails (logged)."""
    try:
        return await Git(cwd, env, timeout).head()
    except GitFailed as e:
        log.warning("git evidence: %s", e)
        return None


async def in_work_tree(
    cwd: str, *, timeout: float = TIMEOUT_S, env: Mapping[str, str] | None = None
) -> bool:
    """Is ``cwd`` inside a git work tree? False when git fails too (logged)."""
    try:
        code, out = await Git(cwd, env, timeout).run("rev-parse", "--is-inside-work-tree")
    except GitFailed as e:
        log.warning("git evidence: %s", e)
        return False
    return code == 0 and out.strip() == b"true"


async def evidence(
    cwd: str,
    head_before: str | None,
    *,
    timeout: float = TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> GitEvidence | None:
    """What the attempt that started at ``head_before`` left in ``cwd``'s work tree:
    its commits and their subjects, and the files and lines changed since
    ``head_before``, committed and not together (untracked files included).

    None outside a work tree, and when git fails or takes longer than ``timeout``
    in all (logged, never raised).
    """
    if head_before is not None and not is_commit_id(head_before):
        log.warning("git evidence in %s: %r is not a commit id", cwd, head_before)
        return None
    git = Git(cwd, env, timeout)
    try:
        code, top = await git.run("rev-parse", "--show-toplevel")
        if code != 0:
            return None  # not in a work tree
        return await _collect(git, os.fsdecode(top.rstrip(b"\n")), head_before)
    except GitFailed as e:
        log.warning("git evidence: %s", e)
        return None


async def _collect(git: Git, top: str, before: str | None) -> GitEvidence:
    after = await git.head()
    commits, subjects = 0, []
    if after is not None and after != before:
        span = f"{before}..{after}" if before else after
        commits = parse_count(await git.ok("rev-list", "--count", span)) or 0
        subjects = parse_subjects(await git.ok("log", f"-n{MAX_SUBJECTS}", "--format=%s", span))
    base = before or parse_head(await git.ok("hash-object", "-t", "tree", os.devnull))
    if base is None:
        raise GitFailed(f"git hash-object in {git.cwd}: no empty tree id")
    diff = parse_numstat(
        await git.ok("diff", "--numstat", "--no-ext-diff", "--no-textconv", base, "--")
    )
    tree = parse_status(
        await git.ok("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    )
    new_lines = await anyio.to_thread.run_sync(_untracked_lines, top, tree.untracked)
    return GitEvidence(
        head_before=before,
        head_after=after,
        commits=commits,
        subjects=subjects,
        files_changed=diff.files + len(tree.untracked),
        insertions=diff.insertions + new_lines,
        deletions=diff.deletions,
        dirty=tree.dirty,
    )


def _untracked_lines(top: str, paths: tuple[str, ...]) -> int:
    """Lines of the untracked regular files (the first ``UNTRACKED_FILES``, each read up to
    ``UNTRACKED_BYTES``); links, FIFOs and unreadable files count 0. Run in a thread."""
    total = 0
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for rel in paths[:UNTRACKED_FILES]:
        try:
            fd = os.open(os.path.join(top, rel), flags)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                total += count_lines(os.read(fd, UNTRACKED_BYTES))
        except OSError:
            pass
        finally:
            os.close(fd)
    return total
