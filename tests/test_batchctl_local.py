"""batchctl without a daemon: submit, gh issues, consent, exit codes, imports, formatting.

Every command runs as a real ``python -m batchctl`` subprocess with its paths in
``tmp_path``; the only fake is ``gh`` (the edge of the world). The formatters are
pure functions and are fed example results from docs/protocol.md directly.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchctl import issues, render, render_batches, render_status
from batchd import shapes
from batchd.model import UserState, parse_iso
from batchd.parse import Limits, parse_spool_file
from batchd.store import Store, encode

BATCHCTL = [sys.executable, "-m", "batchctl"]
GOOD_ID = "batch-20261124-050653-123456"
ISO_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

FAKE_GH = '''#!{python}
"""A fake GitHub CLI: ``gh issue view N --json number,title [--repo R]``.

$FAKE_GH is a JSON object: issue number -> a title, or one of "notfound",
"auth", "hang", "malformed". Every call is appended to $FAKE_GH_LOG.
"""
import json, os, sys, time

argv = sys.argv[1:]
with open(os.environ["FAKE_GH_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if argv[:2] != ["issue", "view"] or argv[3:5] != ["--json", "number,title"]:
    sys.exit("unexpected call")
number = argv[2]
how = json.loads(os.environ.get("FAKE_GH", "{{}}")).get(number, "title " + number)
if how == "hang":
    time.sleep(600)  # only batchctl's timeout ends it
elif how == "auth":
    print("To get started with GitHub CLI, please run:  gh auth login", file=sys.stderr)
    sys.exit(4)
elif how == "notfound":
    print("GraphQL: Could not resolve to an issue or pull request with the number of "
          + number + ".", file=sys.stderr)
    sys.exit(1)
elif how == "malformed":
    print("{{not json")
else:
    print(json.dumps({{"number": int(number), "title": how}}))
'''


class Local:
    """One user's batchctl setup in a temp dir: config, spool, state, socket (nobody listens)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "data" / "spool"
        self.state = root / "state" / "batchd"
        self.socket = root / "run" / "batchd.sock"
        self.config = root / "config.toml"
        self.config.write_text("")
        self.bin = root / "bin"
        self.bin.mkdir()
        self.gh_log = root / "gh.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BATCHD_", "BATCH_RETRY", "BATCHCTL_", "NOTIFY_SOCKET"))
        }
        self.env.update(
            BATCHD_CONFIG=str(self.config),
            BATCHD_SPOOL_DIR=str(self.spool),
            BATCHD_STATE_DIR=str(self.state),
            BATCHD_SOCKET=str(self.socket),
            PATH=f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            FAKE_GH_LOG=str(self.gh_log),
            BATCHCTL_GH_TIMEOUT="60",  # a slow start of the fake gh must not read as a hang
        )

    def ctl(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BATCHCTL, *args],
            env={**self.env, **(env or {})},
            cwd=cwd or self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def fake_gh(self, issues: Mapping[str, str]) -> None:
        gh = self.bin / "gh"
        gh.write_text(FAKE_GH.format(python=sys.executable))
        gh.chmod(0o755)
        self.env["FAKE_GH"] = json.dumps(dict(issues))

    def gh_calls(self) -> list[list[str]]:
        if not self.gh_log.exists():
            return []
        return [json.loads(line) for line in self.gh_log.read_text().splitlines()]

    def spooled(self) -> list[Path]:
        return sorted(self.spool.iterdir()) if self.spool.exists() else []

    def user_state(self) -> Any:
        return json.loads((self.state / "user_state.json").read_text())


@pytest.fixture
def local(tmp_path: Path) -> Local:
    return Local(tmp_path)


def run_on_pty(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    answer: bytes | None,
    *,
    interrupt: bool = False,
) -> tuple[int, str]:
    """Run argv with a pty as stdin/stdout/stderr; at the ``[y/N]`` prompt, type or interrupt."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    acted = 0.0  # when the prompt was answered or interrupted
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                if interrupt and acted and time.monotonic() - acted > 0.5:
                    # A SIGINT that lands between the prompt and the read() is only seen at
                    # the next signal (a CPython input() race): send it again.
                    proc.send_signal(signal.SIGINT)
                    acted = time.monotonic()
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not acted and b"[y/N]" in out:
                acted = time.monotonic()
                if interrupt:
                    proc.send_signal(signal.SIGINT)
                elif answer is not None:
                    os.write(master, answer)
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.decode(errors="replace")


# --- submit FILE --------------------------------------------------------------------------


def test_submit_file_writes_one_valid_request(local: Local) -> None:
    """A good file becomes exactly one 0600 .json request the daemon's parser accepts."""
    todo = local.root / "todo.txt"
    todo.write_text("# batchd: name = my work\nfirst\n\nsecond ✓\nfirst\n# done\n")
    proj = local.root / "proj"
    proj.mkdir()
    out = local.ctl("submit", str(todo), cwd=proj)
    assert out.returncode == 0, out.stderr
    [path] = local.spooled()
    assert path.suffix == ".json" and not path.name.startswith(".")
    assert str(path) in out.stdout
    assert f"no batchd is running, so nothing watches the spool {local.spool} yet" in out.stderr
    request = json.loads(path.read_text())
    assert request == {
        "features": ["first", "second ✓"],
        "source_type": "file",
        "issue_numbers": None,
        "cwd": str(proj),
        "name": "my work",
    }
    parsed = parse_spool_file(path.name, path.read_bytes(), Limits())
    assert parsed.features == ["first", "second ✓"] and parsed.cwd == str(proj)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(local.spool).st_mode & 0o777 == 0o700
    assert not (local.state / "user_state.json").exists()  # no terminal: no consent question


def test_submit_twice_writes_two_requests(local: Local) -> None:
    """Each submit writes its own uniquely named file; nothing is overwritten or left as .tmp."""
    todo = local.root / "todo.txt"
    todo.write_text("one\n")
    assert local.ctl("submit", str(todo)).returncode == 0
    assert local.ctl("submit", str(todo)).returncode == 0
    names = [p.name for p in local.spooled()]
    assert len(names) == 2 and all(n.startswith("todo-") and n.endswith(".json") for n in names)


def test_submit_cwd_rules(local: Local) -> None:
    """--cwd is made absolute and wins over '# batchd: cwd', which wins over the caller's cwd;
    submit prints the real directory the features run in."""
    project = local.root / "project"
    project.mkdir()
    plain = local.root / "plain.txt"
    plain.write_text("a\n")
    directive = local.root / "directive.txt"
    directive.write_text(f"# batchd: cwd = {project}\nb\n")
    sub = local.root / "sub"
    sub.mkdir()
    (local.root / "link").symlink_to(sub)
    out = local.ctl("submit", str(plain), "--cwd", "link", cwd=local.root)
    assert out.returncode == 0 and f"runs in: {sub}\n" in out.stdout, out
    out = local.ctl("submit", str(directive), cwd=sub)
    assert out.returncode == 0 and f"runs in: {project}\n" in out.stdout, out
    assert local.ctl("submit", str(directive), "--cwd", str(sub)).returncode == 0
    cwds = sorted(json.loads(p.read_text())["cwd"] for p in local.spooled())
    assert cwds == sorted([str(local.root / "link"), str(project), str(sub)])


def test_submit_refuses_a_directive_cwd_that_does_not_exist(local: Local) -> None:
    """A '# batchd: cwd' naming no directory is refused like --cwd (exit 1, nothing written),
    unless --cwd overrides it."""
    directive = local.root / "directive.txt"
    directive.write_text("# batchd: cwd = /nonexistent/project\nb\n")
    out = local.ctl("submit", str(directive))
    assert out.returncode == 1 and "/nonexistent/project" in out.stderr, out
    assert "no such directory" in out.stderr and "directive.txt" in out.stderr
    assert local.spooled() == []
    assert local.ctl("submit", str(directive), "--cwd", str(local.root)).returncode == 0


def test_submit_missing_cwd_is_refused(local: Local) -> None:
    """--cwd naming no directory exits 1 and writes nothing."""
    todo = local.root / "todo.txt"
    todo.write_text("a\n")
    out = local.ctl("submit", str(todo), "--cwd", str(local.root / "missing"))
    assert out.returncode == 1 and "no such directory" in out.stderr
    assert local.spooled() == []


@pytest.mark.parametrize(
    ("content", "config", "reason"),
    [
        (b"ok\nnul\x00here\n", "", "line 2"),
        (b"\n# only a comment\n\n", "", "no features"),
        (b"ok\n\xff\xfe\n", "", "UTF-8"),
        (b"# batchd: cwd = relative/dir\nok\n", "", "not an absolute path"),
        (b"0123456789abcdef\n", "[spool]\nmax_file_bytes = 8\n", "max_file_bytes"),
        (b"a\nb\nc\n", "[spool]\nmax_features = 2\n", "max_features"),
        (b"x" * 30 + b"\n", "[spool]\nmax_line_chars = 20\n", "max_line_chars"),
    ],
)
def test_submit_bad_file_writes_nothing(
    local: Local, content: bytes, config: str, reason: str
) -> None:
    """A file the daemon would reject exits 1 with the parser's reason; the spool stays empty."""
    local.config.write_text(config)
    bad = local.root / "bad.txt"
    bad.write_bytes(content)
    out = local.ctl("submit", str(bad))
    assert out.returncode == 1 and reason in out.stderr and "bad.txt" in out.stderr, out
    assert local.spooled() == []


def test_submit_refuses_what_is_not_a_regular_file(local: Local) -> None:
    """A directory, a FIFO (never blocked on) or a missing file exits 1 and writes nothing."""
    fifo = local.root / "fifo"
    os.mkfifo(fifo)
    for target in (local.root, fifo):
        out = local.ctl("submit", str(target))
        assert out.returncode == 1 and "not a regular file" in out.stderr
    out = local.ctl("submit", str(local.root / "missing.txt"))
    assert out.returncode == 1 and "missing.txt" in out.stderr
    assert local.spooled() == []


def test_submit_bad_config_exits_1(local: Local) -> None:
    """A config error stops submit with exit 1 and a message naming the key."""
    local.config.write_text('[spool]\nmax_features = "many"\n')
    todo = local.root / "todo.txt"
    todo.write_text("a\n")
    out = local.ctl("submit", str(todo))
    assert out.returncode == 1 and "max_features" in out.stderr
    assert local.spooled() == []


# --- submit --issues ------------------------------------------------------------------------


def test_submit_issues_cleans_titles(local: Local) -> None:
    """Titles lose escapes and control characters, whitespace runs become one space, a long
    one is cut to 200 characters ending in '...', a blank one reads '(no title)'."""
    local.fake_gh(
        {
            "72": "Fix \x1b[31mred\x1b[0m\tlogin\n\n  bug\r\n",
            "8": "Ünïcödé ✓ 日本語 " + "x" * 300,
            "9": "bell\x07 and \x1b]0;window title\x07OSC\x7f here",
            "84": "",
            "85": " \t\r\n\x1b[0m\x07 ",
        }
    )
    out = local.ctl("submit", "--issues", "72", "8", "72", "9", "8", "84", "85", "--repo", "me/app")
    assert out.returncode == 0, out.stderr
    [path] = local.spooled()
    request = json.loads(path.read_text())
    assert request["source_type"] == "github_issues"
    assert request["issue_numbers"] == [72, 8, 9, 84, 85]
    assert request["features"] == [
        "Issue #72: Fix red login bug",
        "Issue #8: " + ("Ünïcödé ✓ 日本語 " + "x" * 300)[:197] + "...",
        "Issue #9: bell and OSC here",
        "Issue #84: (no title)",
        "Issue #85: (no title)",
    ]
    assert request["cwd"] == str(local.root)
    assert sorted(local.gh_calls()) == sorted(
        ["issue", "view", n, "--json", "number,title", "--repo", "me/app"]
        for n in ("72", "8", "9", "84", "85")
    )
    assert "fetching 5 issue titles with gh (4 at a time)" in out.stderr
    assert "fetched Issue #72: Fix red login bug" in out.stderr
    parse_spool_file(path.name, path.read_bytes(), Limits())


@pytest.mark.parametrize(
    ("how", "expect"),
    [
        ("notfound", "check the issue number and --repo"),
        ("auth", "gh auth login"),
        ("hang", "did not answer within 5s"),
        ("malformed", "unexpected output"),
    ],
)
def test_submit_issues_gh_failure_writes_nothing(local: Local, how: str, expect: str) -> None:
    """Each gh failure names the issue and the fix, exits 1, and queues nothing; a gh that
    hangs is cut at the timeout."""
    local.fake_gh({"6": how})
    # Issue 5 answers at once, issue 6 never does: a timeout long enough for a slow start.
    env = {"BATCHCTL_GH_TIMEOUT": "5"} if how == "hang" else None
    out = local.ctl("submit", "--issues", "5", "6", "7", env=env)
    assert out.returncode == 1, out
    assert "issue #6" in out.stderr and expect in out.stderr, out.stderr
    assert local.spooled() == []
    called = [c[2] for c in local.gh_calls()]
    assert "6" in called and len(called) == len(set(called)) <= 3


def test_submit_issues_gh_missing_names_first_issue(local: Local) -> None:
    """With no gh on PATH at all, the very first issue fails with the install hint."""
    out = local.ctl("submit", "--issues", "3", env={"PATH": str(local.bin)})
    assert out.returncode == 1
    assert "issue #3" in out.stderr and "install gh: https://cli.github.com" in out.stderr
    assert local.spooled() == []


@pytest.mark.parametrize(
    ("numbers", "code", "expect"),
    [
        (["0"], 2, "positive"),
        (["4", "-3"], 2, "positive"),
        (["abc"], 2, "invalid int"),
        ([str(i) for i in range(1, 102)], 1, "at most 100"),
    ],
)
def test_submit_issue_numbers_are_checked_before_gh(
    local: Local, numbers: list[str], code: int, expect: str
) -> None:
    """Non-positive or non-numeric issues are usage errors, over 100 is refused; gh never runs."""
    local.fake_gh({})
    out = local.ctl("submit", "--issues", *numbers)
    assert out.returncode == code and expect in out.stderr, out
    assert local.gh_calls() == [] and local.spooled() == []


def test_submit_exactly_100_issues_after_dropping_duplicates(local: Local) -> None:
    """Duplicates are dropped before the limit is counted: 100 distinct of 120 given is fine."""
    local.fake_gh({})
    numbers = [str(i) for i in range(1, 101)] + [str(i) for i in range(1, 21)]
    out = local.ctl("submit", "--issues", *numbers)
    assert out.returncode == 0, out.stderr
    [path] = local.spooled()
    assert json.loads(path.read_text())["issue_numbers"] == list(range(1, 101))


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],
        ["submit", "f.txt", "--issues", "1"],
        ["submit", "f.txt", "--repo", "me/app"],
        ["submit", "--issues", "1", "--repo", "--upload-file=x"],
        ["submit", "--issues", "1", "--repo=-R/x"],
        ["submit", "--issues", "1", "--repo", "no-slash"],
    ],
)
def test_submit_usage_errors(local: Local, args: list[str]) -> None:
    """FILE and --issues are exclusive, one is needed, --repo must be OWNER/NAME: exit 2."""
    local.fake_gh({})
    out = local.ctl(*args)
    assert out.returncode == 2, out
    assert local.gh_calls() == [] and local.spooled() == []


# --- exit codes of the daemon commands -----------------------------------------------------

DAEMON_COMMANDS = [
    [],
    ["status"],
    ["list"],
    ["ping"],
    ["show", GOOD_ID],
    ["logs", GOOD_ID, "0"],
    ["logs", GOOD_ID, "--follow"],
    ["watch"],
    ["pause"],
    ["pause", GOOD_ID, "--now"],
    ["resume", "--all"],
    ["resume", GOOD_ID],
    ["cancel", GOOD_ID],
    ["retry", GOOD_ID],
    ["skip", GOOD_ID, "3"],
    ["reset-breaker", GOOD_ID],
    ["prune", "--older-than", "7"],
    ["prune", "--dry-run"],
    ["reload"],
    ["wait"],
    ["wait", "3", "last", GOOD_ID, "--timeout", "5"],
    ["list", "--ids"],
    ["show", "7"],
    ["logs", "last", "-n", "5", "--all"],
    ["report"],
    ["report", "last", "7", "--format", "markdown"],
    ["report", "--since", "12h", "--format", "json"],
]


@pytest.mark.parametrize("args", DAEMON_COMMANDS, ids=lambda a: " ".join(a) or "nothing")
def test_no_daemon_exits_3_with_how_to_start(local: Local, args: list[str]) -> None:
    """With nothing listening, every daemon command exits 3, names the socket and how to start."""
    out = local.ctl(*args)
    assert out.returncode == 3, out
    assert str(local.socket) in out.stderr
    assert "`batchd` in a terminal" in out.stderr
    assert "systemctl --user start batchd" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_stale_socket_file_exits_3(local: Local) -> None:
    """A socket file left by a dead daemon (connection refused) is 'not reachable' too."""
    local.socket.parent.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(local.socket))
    s.close()
    out = local.ctl("status")
    assert out.returncode == 3 and "refused" in out.stderr.lower()


def test_global_options_before_and_after_the_command(local: Local) -> None:
    """--json and --socket work on either side of the command; the flag beats the environment."""
    other = local.root / "other.sock"
    for args in (
        ["--socket", str(other), "status"],
        ["status", "--socket", str(other)],
    ):
        out = local.ctl(*args)
        assert out.returncode == 3 and str(other) in out.stderr, out
    for args in (
        ["--json", "--socket", str(other), "status"],
        ["status", "--json", "--socket", str(other)],
    ):
        out = local.ctl(*args)
        error = json.loads(out.stdout)["error"]
        assert out.returncode == 3 and str(other) in error["message"], out
        assert error["code"] == "not_running" and out.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["show"],
        ["skip", GOOD_ID, "notanumber"],
        ["skip", GOOD_ID, "-1"],
        ["resume", GOOD_ID, "--all"],
        ["consent", "--enable", "--disable"],
        ["prune", "--older-than", "soon"],
        ["prune", "--older-than", "-1"],
        ["logs"],
        ["resume"],
        ["completion"],
        ["--sockt", "/tmp/x", "status"],
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(local: Local, args: list[str]) -> None:
    """Bad command lines exit 2 before any socket is tried (else this would be 3)."""
    out = local.ctl(*args)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["show", "../../etc/passwd"],
        ["show", "batch-2026"],
        ["cancel", "batch-20261124-050653-123456\n"],
        ["logs", "x", "0"],
        ["pause", "nope"],
        ["resume", "../x"],
        ["skip", "batch-x", "0"],
        ["retry", ""],
        ["reset-breaker", "BATCH-20261124-050653-123456"],
    ],
)
def test_malformed_batch_id_is_unknown_batch(local: Local, args: list[str]) -> None:
    """A malformed id is exit 1 'unknown batch' without touching the socket (no daemon: not 3)."""
    out = local.ctl(*args)
    assert out.returncode == 1 and "unknown batch" in out.stderr, out


# --- the start-up rule --------------------------------------------------------------------

IMPORT_PROBE = """
import json, sys
from batchctl.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as e:
        codes.append(e.code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("anyio", "msgspec", "trio"))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_daemon_commands_import_neither_anyio_nor_msgspec(local: Local) -> None:
    """status and every other daemon command load neither anyio nor msgspec (fast start)."""
    argvs = [["--json", "status"], *DAEMON_COMMANDS, ["show", "bad-id"]]
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, json.dumps(argvs)],
        env=local.env,
        cwd=local.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["codes"] == [3] * (len(argvs) - 1) + [1]
    assert result["heavy"] == []


START_PROBE = """
import json, sys
floor = set(json.loads(sys.argv[1]))
from batchctl.cli import main
try:
    main(json.loads(sys.argv[2]))
except SystemExit as e:
    code = e.code
print()
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - floor)}))
"""
START = {  # what every run loads: the parser and the table
    "argparse",
    "gettext",
    "batchctl",
    "batchctl.cli",
    "batchctl.errors",
    "batchctl.table",
    "batchd",
    "batchd.mistyped",
    "batchd.protocol",
}
READ = {  # ... and what a read command adds: its module, the wire, the text
    "batchctl.control",
    "batchctl.options",
    "batchctl.render",
    "batchctl.render_status",
    "batchctl.transport",
    "batchd.paths",
}
COMPLETION = {"batchctl.completion", "batchctl.completion_model", "batchctl.completion_sh"}
REPORT = START | (READ - {"batchctl.control", "batchctl.render_status"}) | {"batchctl.report"}


@pytest.mark.parametrize(
    ("argv", "code", "allowed"),
    [
        (["status"], 3, START | READ),
        (["--version"], 0, START),
        (["completion", "bash"], 0, START | COMPLETION),
        (["report", "--since", "2d"], 3, REPORT),
    ],
)
def test_fast_commands_import_nothing_new(
    local: Local, argv: list[str], code: int, allowed: set[str]
) -> None:
    """status, --version, completion and report load, beyond a bare `import socket, json`,
    only argparse and batchctl's own modules: the split added no import to the start."""
    floor = subprocess.run(
        [sys.executable, "-c", "import json, socket, sys; print(json.dumps(sorted(sys.modules)))"],
        env=local.env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", START_PROBE, floor.stdout, json.dumps(argv)],
        env=local.env,
        cwd=local.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == code, out
    assert set(result["new"]) <= allowed, set(result["new"]) - allowed


def test_command_table_sends_exactly_the_protocol_commands() -> None:
    """Every control command of protocol.COMMANDS is sent by some batchctl command, and
    nothing else is (as the daemon's own table is checked in batchd/server.py)."""
    from batchctl.table import TABLE
    from batchd.protocol import COMMANDS

    assert {cmd for c in TABLE for cmd in c.sends} == set(COMMANDS)
    assert len({c.name for c in TABLE}) == len(TABLE)


BARRIER_GH = """#!{python}
import json, os, sys, time
argv = sys.argv[1:]
number = argv[2]
gate = os.environ["GH_GATE"]
open(os.path.join(gate, number), "w").close()
deadline = time.monotonic() + 20
while len(os.listdir(gate)) < 2:  # a second call must be running at the same time
    if time.monotonic() > deadline:
        print("alone for 20 s", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.01)
print(json.dumps({{"number": int(number), "title": "title " + number}}))
"""


def test_submit_issues_fetches_titles_concurrently(local: Local) -> None:
    """gh runs for several issues at once: each fake gh call waits until another one runs
    (calls one at a time would all time out), and every fetched title is reported."""
    gate = local.root / "gate"
    gate.mkdir()
    gh = local.bin / "gh"
    gh.write_text(BARRIER_GH.format(python=sys.executable))
    gh.chmod(0o755)
    out = local.ctl(
        "submit",
        "--issues",
        "1",
        "2",
        "3",
        "4",
        "5",
        env={"GH_GATE": str(gate), "BATCHCTL_GH_TIMEOUT": "30"},
    )
    assert out.returncode == 0, out
    assert "fetching 5 issue titles with gh (4 at a time)" in out.stderr
    assert all(f"fetched Issue #{n}: title {n}" in out.stderr for n in range(1, 6))
    [path] = local.spooled()
    assert json.loads(path.read_text())["features"] == [
        f"Issue #{n}: title {n}" for n in range(1, 6)
    ]


# --- consent ------------------------------------------------------------------------------


def test_consent_without_daemon_writes_user_state(local: Local) -> None:
    """--enable/--disable with no daemon write user_state.json 0600 in a new 0700 state dir."""
    out = local.ctl("consent", "--enable")
    assert out.returncode == 0 and "enabled" in out.stdout, out
    path = local.state / "user_state.json"
    state = local.user_state()
    assert state["batch_retry_enabled"] is True and ISO_RE.match(state["updated_at"])
    assert set(state) == {"batch_retry_enabled", "updated_at"}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(local.state).st_mode & 0o777 == 0o700
    assert local.ctl("consent", "--disable").returncode == 0
    assert local.user_state()["batch_retry_enabled"] is False
    assert [p.name for p in local.state.iterdir()] == ["user_state.json"]  # no temp left
    # One encoding: the daemon's own model and encoder, byte for byte.
    saved = Store(local.state).load_user()
    assert saved.batch_retry_enabled is False
    assert path.read_bytes() == encode(
        UserState(batch_retry_enabled=False, updated_at=saved.updated_at)
    )


def test_wait_counts_what_the_spool_would_read(tmp_path: Path) -> None:
    """A submitted batch is pending while a name the daemon reads is in the spool, or anything
    in its claimed folder; ignored names (dot files, partial writes, backups, rejected/) not."""
    from batchctl.wait import spool_pending

    spool = tmp_path / "spool"
    assert not spool_pending(spool)  # no spool yet
    spool.mkdir()
    for name in (".x.tmp", "a.part", "b~", "c.tmp", ".batchd.lock", "rejected", ".claimed"):
        (spool / name).mkdir() if name in ("rejected", ".claimed") else (spool / name).touch()
    assert not spool_pending(spool)
    (spool / ".claimed" / "todo.txt").touch()
    assert spool_pending(spool)
    (spool / ".claimed" / "todo.txt").unlink()
    (spool / "todo.txt").touch()
    assert spool_pending(spool)


def test_consent_without_flag_or_terminal_prints_the_setting(local: Local) -> None:
    """Without a terminal, consent only reports: not set, the saved value, or the environment."""
    out = local.ctl("consent")
    assert out.returncode == 0 and "not set" in out.stdout
    assert not local.state.exists()
    local.ctl("consent", "--enable")
    out = local.ctl("--json", "consent")
    assert json.loads(out.stdout)["retry_enabled"] is True
    out = local.ctl("consent", env={"BATCH_RETRY_ENABLED": "No"})
    assert "disabled" in out.stdout and "BATCH_RETRY_ENABLED" in out.stdout


def test_consent_refuses_a_symlink(local: Local) -> None:
    """A symlink at user_state.json is an error (exit 1); its target is never written."""
    local.state.mkdir(parents=True, mode=0o700)
    target = local.root / "elsewhere.json"
    (local.state / "user_state.json").symlink_to(target)
    out = local.ctl("consent", "--enable")
    assert out.returncode == 1 and "symlink" in out.stderr, out
    assert not target.exists() and (local.state / "user_state.json").is_symlink()


@pytest.mark.parametrize(
    ("answer", "enabled"), [(b"\n", False), (b"y\n", True), (b"YES\n", True), (b"nah\n", False)]
)
def test_consent_asks_on_a_terminal(local: Local, answer: bytes, enabled: bool) -> None:
    """On a pty consent explains retry with the configured limits; Enter means no, y means yes."""
    local.config.write_text(
        "[retry]\nmax_per_feature = 7\nmax_global = 42\n[breaker]\nthreshold = 9\n"
    )
    code, text = run_on_pty([*BATCHCTL, "consent"], local.env, local.root, answer)
    assert code == 0, text
    flat = " ".join(text.split())
    assert "rate limit" in flat and "backoff" in flat
    assert "7 retries per feature" in flat and "42 per batch" in flat and "after 9 failed" in flat
    assert "batchctl consent --disable" in flat and "BATCH_RETRY_ENABLED=false" in flat
    assert "Enable automatic retry? [y/N]: " in text
    assert local.user_state()["batch_retry_enabled"] is enabled


def test_ctrl_c_at_the_prompt_exits_130_quietly(local: Local) -> None:
    """Ctrl-C at the consent question exits 130 without a traceback and saves nothing."""
    code, text = run_on_pty([*BATCHCTL, "consent"], local.env, local.root, None, interrupt=True)
    assert code == 130 and "Traceback" not in text
    assert not (local.state / "user_state.json").exists()


def test_submit_asks_consent_once_on_a_terminal(local: Local) -> None:
    """submit on a terminal asks when nothing is set, saves the answer, and never asks again."""
    todo = local.root / "todo.txt"
    todo.write_text("one\n")
    code, text = run_on_pty([*BATCHCTL, "submit", str(todo)], local.env, local.root, b"y\n")
    assert code == 0 and "[y/N]" in text, text
    assert local.user_state()["batch_retry_enabled"] is True
    code, text = run_on_pty([*BATCHCTL, "submit", str(todo)], local.env, local.root, b"n\n")
    assert code == 0 and "[y/N]" not in text, text
    assert local.user_state()["batch_retry_enabled"] is True
    assert len(local.spooled()) == 2


def test_submit_does_not_ask_when_the_environment_decides(local: Local) -> None:
    """BATCH_RETRY_ENABLED set in the environment counts as an answer: no question."""
    todo = local.root / "todo.txt"
    todo.write_text("one\n")
    env = {**local.env, "BATCH_RETRY_ENABLED": "false"}
    code, text = run_on_pty([*BATCHCTL, "submit", str(todo)], env, local.root, b"y\n")
    assert code == 0 and "[y/N]" not in text, text
    assert not (local.state / "user_state.json").exists()


# --- pure helpers and formatters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "clean"),
    [
        ("plain", "plain"),
        ("\x1b[1;31mbold red\x1b[0m", "bold red"),
        ("a\tb\n\nc\r\nd\x0be\x0cf", "a b c d e f"),
        ("bell\x07, nul\x00, del\x7f, c1\x85\x9b end", "bell, nul, del, c1 end"),
        ("link \x1b]8;;https://x.test\x1b\\text\x1b]8;;\x1b\\ done", "link text done"),
        ("  trimmed  ", "trimmed"),
        ("日本語 ✓ émoji 🎉", "日本語 ✓ émoji 🎉"),
        ("y" * 200, "y" * 200),
        ("y" * 201, "y" * 197 + "..."),
        ("y" * 250, "y" * 197 + "..."),
        ("y" * 196 + " \t z" + "y" * 10, "y" * 196 + "..."),  # no space left before the mark
        ("\x1b", ""),
    ],
)
def test_clean_title(title: str, clean: str) -> None:
    """Issue titles come out as one printable line of at most 200 characters, a cut one
    ending in '...'."""
    assert issues.clean_title(title) == clean


@pytest.mark.parametrize("title", ["", " ", "\t\n\r\n", "\x1b[0m\x07", "\u2028\x00"])
def test_blank_issue_title_reads_no_title(title: str) -> None:
    """Regression (was 'Issue #84:'): an empty or blank title reads 'Issue #N: (no title)'."""
    assert issues.issue_feature(84, title) == "Issue #84: (no title)"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_title_fits_and_a_cut_one_says_so(title: str) -> None:
    """Any title becomes at most 200 printable characters; it is cut exactly when the one-line
    form is longer, and then ends in '...' after a prefix of that form."""
    line = issues.one_line(title)
    clean = issues.clean_title(title)
    assert len(clean) <= 200 and clean.isprintable() and clean == clean.strip()
    if len(line) <= 200:
        assert clean == line
    else:
        assert clean.endswith("...") and line.startswith(clean[:-3])
    feature = issues.issue_feature(7, title)
    assert feature == f"Issue #7: {clean or '(no title)'}"
    assert parse_spool_file("f.txt", feature.encode(), Limits()).features == [feature]


@pytest.mark.parametrize(
    "iso",
    ["2026-11-24T05:06:53.123456Z", "1999-12-31T23:59:59.000001Z", "2024-02-29T00:00:00.500000Z"],
)
def test_parse_ts_agrees_with_the_daemon(iso: str) -> None:
    """batchctl's import-free timestamp parser gives what batchd.model.parse_iso gives."""
    assert render.parse_ts(iso) == pytest.approx(parse_iso(iso), abs=1e-6)
    assert render.parse_ts("not a time") is None


NOW = parse_iso("2026-11-24T05:10:00.000000Z")
LONG = "implement the whole thing " * 20


def batch_item(**over: Any) -> shapes.BatchItem:
    item: shapes.BatchItem = {
        "batch_id": GOOD_ID,
        "name": "features with a rather long name.txt " * 3,
        "seq": 1,
        "status": "in_progress",
        "pause_reason": None,
        "total_features": 1000,
        "completed": 998,
        "failed": 1,
        "skipped": 0,
        "current_index": 999,
        "retry_enabled": True,
        "circuit_breaker_open": True,
        "consecutive_failures": 4,
        "next_attempt_at": "2026-11-24T05:12:00.000000Z",
        "cost_usd": 1234.5678,
        "eta_s": 123456.0,
        "created_at": "2026-11-24T05:06:53.123456Z",
        "updated_at": "2026-11-24T05:06:53.123456Z",
        "cwd": "/home/me/" + "deep/" * 30,
        "workdir": "/home/me/" + "deep/" * 30,
        "source_type": "file",
        "runner": "default",
        "limit_until": None,
    }
    item.update(over)  # type: ignore[typeddict-item]
    return item


def running_item(**over: Any) -> shapes.RunningItem:
    item: shapes.RunningItem = {
        "batch_id": GOOD_ID,
        "seq": 1,
        "name": "n",
        "feature_index": 999,
        "total_features": 1000,
        "feature": LONG,
        "attempt": 4,
        "started_at": "2026-11-24T05:06:53.123456Z",
        "pid": 1,
        "job_id": None,
        "job_state": None,
        "log_path": "/x/1.log",
    }
    item.update(over)  # type: ignore[typeddict-item]
    return item


def status_result(**over: Any) -> shapes.Status:
    running = [running_item()]
    st: shapes.Status = {
        "daemon": {
            "pid": 4321987,
            "version": "0.1.0",
            "backend": "asyncio",
            "engine": "local",
            "uptime_s": 99999.0,
        },
        "queue_paused": True,
        "pause_reason": "runner not found: " + LONG,
        "problems": [{"kind": "state_write", "message": LONG, "batch_id": GOOD_ID}],
        "retry_enabled": False,
        "slots": 1,
        "running": running,
        "current": running[0],
        "next_retry_at": None,
        "finished_total": 0,
        "batches": [
            batch_item(),
            batch_item(seq=2, status="paused", pause_reason="cost_limit " + LONG),
        ],
        "total_cost_usd": 2469.1356,
        "paths": {"config": "/c", "spool_dir": "/s", "state_dir": "/t", "socket": "/k"},
        "limit_waits": [],
    }
    st.update(over)  # type: ignore[typeddict-item]
    return st


def assert_fits(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= width, line


def test_status_output_fits_80_columns_and_says_it_all() -> None:
    """Human status: daemon, pause and why, problems, running feature with elapsed, the table
    with seq first."""
    text = render_status.format_status(status_result(), NOW)
    assert_fits(text)
    assert "pid 4321987" in text and "asyncio" in text and "up 1d03h" in text
    assert "PAUSED: runner not found" in text and "problem: state_write" in text
    assert f"running: [1] {GOOD_ID}, attempt 4, 3m07s, pid 1\n" in text
    assert "    feature 1000/1000 (index 999): implement the whole" in text
    assert "998/1/1000" in text and "$1234.57" in text and "OPEN" in text
    assert "1d10h" not in text  # the queue is paused: no ETA
    row = next(line for line in text.splitlines() if GOOD_ID in line and "998/1" in line)
    assert row.split()[:2] == ["1", GOOD_ID]
    waiting = status_result(running=[], current=None, next_retry_at="2026-11-24T05:12:00.000000Z")
    text = render_status.format_status(waiting, NOW)
    assert_fits(text)
    assert f"waiting: [1] {GOOD_ID}, retry at " in text and "(in 2m00s)\n" in text
    assert "    feature 1000/1000 (index 999)\n" in text
    assert "no batches" in render_status.format_status(status_result(batches=[], problems=[]), NOW)


def test_status_shows_every_running_feature_and_the_finished_count() -> None:
    """Two slots: both running features are shown; finished batches beyond the 20 shown are
    counted, with where to see them all."""
    two = [running_item(), running_item(seq=2, batch_id=GOOD_ID[:-1] + "7", feature="second")]
    st = status_result(
        slots=2,
        running=two,
        current=two[0],
        queue_paused=False,
        finished_total=57,
        batches=[batch_item(status="completed", seq=n) for n in range(1, 21)],
    )
    text = render_status.format_status(st, NOW)
    assert_fits(text)
    assert "queue: running, 2 slots" in text
    assert f"running: [2] {GOOD_ID[:-1]}7, attempt 4" in text
    assert "    feature 1000/1000 (index 999): second" in text
    assert "20 of 57 finished batches shown; `batchctl list` has all" in text


def test_list_and_progress_lines_fit() -> None:
    """list rows fit the width given; the watch line stays under 80 so \\r can rewrite it."""
    items = [batch_item(), batch_item(status="completed")]
    assert_fits(render_batches.format_list(items, 80))
    wide = render_batches.format_list(items, 200)
    assert_fits(wide, 200)
    assert ("features with a rather long name.txt " * 3).strip() in wide
    line = render_status.progress_line(status_result(queue_paused=False), NOW)
    assert len(line) < 80 and line.startswith(f"[1] {GOOD_ID} 1000/1000 3m07s eta 1d10h: implement")
    waiting = render_status.progress_line(
        status_result(
            running=[],
            current=None,
            queue_paused=False,
            next_retry_at="2026-11-24T05:12:00.000000Z",
        ),
        NOW,
    )
    assert waiting.startswith(f"waiting 2m00s to retry [1] {GOOD_ID}")
    two = render_status.progress_line(
        status_result(running=[running_item(), running_item(seq=2, feature_index=0)]), NOW
    )
    assert (
        len(two) < 80 and two.startswith("2 running: [1] 1000/1000 3m07s") and "[2] 1/1000" in two
    )


def test_show_lists_every_feature_with_its_status_and_cost() -> None:
    """show: one row per feature (status, attempts, time, cost), errors of failed ones, total."""

    def attempt(i: int, n: int, outcome: str | None, cost: float, took: float | None) -> Any:
        return {
            "feature_index": i,
            "attempt": n,
            "started_at": "2026-11-24T05:09:00.000000Z",
            "finished_at": None,
            "duration_s": took,
            "outcome": outcome,
            "tokens": 1200,
            "cost_usd": cost,
        }

    state = {
        "features": ["done one", "broken " + LONG, "skipped one", "running one", "later", "gone"],
        "completed_features": [0],
        "failed_features": [{"feature_index": 1, "error_message": "TypeError: " + LONG}],
        "skipped_features": [2],
        "processing_history": [
            attempt(0, 1, "completed", 0.5, 30.0),
            attempt(1, 1, "failed", 0.25, 10.0),
            attempt(1, 2, "failed", 0.25, 10.0),
            attempt(3, 1, None, 0.0, None),
        ],
        "cost_usd": 1.0,
        "context_token_estimate": 4800,
        "cwd": None,
        "source_type": "file",
    }
    result: shapes.Show = {
        "batch": batch_item(
            total_features=6, completed=1, failed=1, skipped=1, cost_usd=1.0, workdir="/real/dir"
        ),
        "feature_states": ["completed", "failed", "skipped", "running", "pending", "cancelled"],
        "running": running_item(
            feature_index=3,
            total_features=6,
            attempt=1,
            pid=None,
            job_id="4711",
            job_state="RUNNING",
        ),
        "state": state,
        "retry": {"global_retry_count": 1, "circuit_breaker_open": False},
    }
    text = render_batches.format_show(result, NOW, 80)
    assert "running: feature 4/6 (index 3), attempt 1, 3m07s, job 4711 RUNNING" in text
    assert_fits(text)
    assert "runs in: /real/dir" in text and text.startswith(f"[1] {GOOD_ID}")
    rows = {
        line.split()[0]: line.split() for line in text.splitlines() if line[:4].strip().isdigit()
    }
    assert rows["0"][1:6] == ["completed", "1", "30s", "1200", "$0.50"]
    assert rows["1"][1:6] == ["failed", "2", "20s", "2400", "$0.50"]
    assert rows["2"][1:3] == ["skipped", "0"]
    assert rows["3"][1:4] == ["running", "1", "1m00s"]
    assert rows["4"][1:3] == ["pending", "0"]
    assert rows["5"][1:3] == ["cancelled", "0"]
    assert "error: TypeError: implement" in text
    [total] = [line.split() for line in text.splitlines() if line.split()[:1] == ["total"]]
    assert total[-1] == "$1.00"
    assert text.split("\nattempts:\n", 1)[1].startswith("   RUN OUTCOME")
    wide = render_batches.format_show(result, NOW, 700)
    assert ("broken " + LONG).strip() in wide


@pytest.mark.parametrize(
    ("n", "noun", "text"),
    [
        (1, "feature", "1 feature"),
        (2, "feature", "2 features"),
        (1, "batch", "1 batch"),
        (0, "batch", "0 batches"),
        (3, "slot", "3 slots"),
    ],
)
def test_plural(n: int, noun: str, text: str) -> None:
    """Regression ('1 features'): counts agree with their noun."""
    assert render.plural(n, noun) == text
