"""The morning report and the evidence per attempt through real daemons and real batchctl
(SPEC 14): ``batchctl report`` of a morning with a completed, a failed, a paused and a
limit-waiting batch in text, Markdown and JSON; the ``on_batch_done`` hook's
``BATCHD_REPORT_FILE``; ``show`` and ``logs --all`` with what each attempt did in a real git
repository; a state dir of batchd 0.1 reported and shown with "–" for what it never
recorded; and ``--since`` and its errors. Both backends; the agents are the fake agent and
fixed sh scripts (a feature's text is only ever an argument)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from batchctl.report import parse_duration
from batchd.model import parse_iso
from tests.harness import Daemon, toml_list
from tests.test_batchctl_local import IMPORT_PROBE
from tests.test_checking import check_script, git, make_repo

MakeDaemon = Callable[..., Daemon]
V01_STATE = Path(__file__).resolve().parent / "data" / "v0.1-state"
ON = {"BATCH_RETRY_ENABLED": "true"}
FAST_RETRY = '[retry]\nbackoff_initial = 0.05\nbackoff_max = 0.1\njitter = "none"\n'


def literal(script: str) -> str:
    """A script as an argv element of runner.command or verify: its braces doubled, so
    that none reads as a placeholder."""
    return script.replace("{", "{{").replace("}", "}}")


def limit_runner(until: int) -> str:
    """A runner profile ``claude`` whose agent hits its usage limit, resetting at ``until``."""
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": f"Claude AI usage limit reached|{until}",
    }
    argv = ["sh", "-c", literal(f"echo '{json.dumps(result)}'; exit 1")]
    return f"[runners.claude]\ncommand = {toml_list(argv)}\n"


def morning(make_daemon: MakeDaemon, tmp_path: Path) -> tuple[Daemon, dict[str, str], int]:
    """Four batches as a morning finds them: A completed, B failed, C waiting for its
    agent's usage limit (profile ``claude``), D paused by the user mid-feature."""
    until = int(time.time()) + 5 * 3600
    d = make_daemon(config=limit_runner(until))
    d.start()
    d.drop("a.txt", ["# batchd: name = alpha", "claude=ok cost=0.5 tokens=100 a0", "a1"])
    d.drop("b.txt", ["# batchd: name = bravo", "exit=3 stderr=TypeError:_session_is_None"])
    d.wait_finished(2)
    d.drop("c.txt", ["# batchd: name = charlie", "# batchd: runner = claude", "c0"])
    d.wait_for(lambda: d.status()["limit_waits"], what="the usage-limit wait of claude")
    gate = tmp_path / "never"
    d.drop("d.txt", ["# batchd: name = delta", f"wait={gate} d0", "d1"])
    d.wait_for(lambda: len(d.batch_states()) == 4 and d.status()["running"], what="delta running")
    assert d.ctl("pause", "4", "--now").returncode == 0
    d.wait_for(lambda: not d.status()["running"], what="delta stopped")
    ids = {s["name"]: s["batch_id"] for s in d.batch_states()}
    return d, ids, until


def test_the_report_of_a_morning_in_text_markdown_and_json(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """What needs a person comes first (bravo's failure with its log, delta's pause with the
    command that resumes it, claude's usage-limit wait), then a table per batch, then the
    totals; Markdown is GitHub tables; --json and --format json print the same report."""
    d, ids, until = morning(make_daemon, tmp_path)
    text = d.ctl("report")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    needs, rest = out.split("\n#1 alpha", 1)
    assert "Needs you:" in needs
    assert "FAILED  #2 bravo, feature 1/1 (index 0): exit=3" in needs
    assert "TypeError: session is None" in needs
    log = d.state / "batches" / ids["bravo"] / "logs" / "0.1.log"
    assert f"attempts: 1, log: {log}" in needs
    assert "PAUSED  #4 delta: user" in needs and f"run: batchctl resume {ids['delta']}" in needs
    flat = " ".join(needs.split())  # the text wraps to the terminal's width
    assert "LIMIT claude waits until" in flat and "Claude AI usage limit reached|" in flat
    assert "to try now: batchctl limit --clear claude" in needs
    assert re.search(r"\n\s+0\s+completed\s+1\s+\S+\s+\$0\.5000\s", rest)
    assert re.search(r"\n\s+0\s+failed\s+1\s", rest)
    assert re.search(r"\n\s+0\s+limited\s+1\s", rest)
    assert re.search(r"\n\s+0\s+pending\s+1\s", rest)  # delta's stopped feature runs again
    assert "Totals: 4 batches, 6 features: 2 completed, 1 failed, 3 pending" in out

    md = d.ctl("report", "--format", "markdown").stdout
    assert md.startswith("## batchd report\n")
    assert "**Failed features**" in md and "**Paused**" in md and "**Usage-limit waits**" in md
    assert f"| `batchctl resume {ids['delta']}` |" in md
    assert f"`{log}`" in md
    for table in re.findall(r"((?:^\|.*\|\n)+)", md, re.M):
        widths = {row.replace("\\|", "").count("|") for row in table.splitlines()}
        assert len(widths) == 1, table

    as_json = json.loads(d.ctl("report", "--format", "json").stdout)
    flag = json.loads(d.ctl("--json", "report").stdout)
    for r in (as_json, flag):
        attention = r["needs_attention"]
        assert [b["name"] for b in r["batches"]] == ["alpha", "bravo", "charlie", "delta"]
        assert [(f["batch_id"], f["index"]) for f in attention["failed"]] == [(ids["bravo"], 0)]
        assert [p["batch_id"] for p in attention["paused"]] == [ids["delta"]]
        [wait] = attention["limit_waits"]
        assert wait["runner"] == "claude" and wait["until"].startswith(
            time.strftime("%Y-%m-%dT%H:%M", time.gmtime(until + 120))[:13]
        )
        assert r["totals"]["cost_usd"] == 0.5 and r["totals"]["failed"] == 1
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_PROBE,
            json.dumps([["report"], ["report", "--format", "markdown"]]),
        ],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(probe.stdout.splitlines()[-1]) == {"codes": [0, 0], "heavy": []}, probe


def test_named_batches_and_a_window(make_daemon: MakeDaemon) -> None:
    """Batches named by id, seq or 'last' are reported whatever their age; --since takes a
    duration (a window that ends before anything ran leaves the finished batches out)."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["# batchd: name = alpha", "a0"])
    d.drop("b.txt", ["# batchd: name = bravo", "b0"])
    [a, b] = d.wait_finished(2)
    named = json.loads(d.ctl("--json", "report", "last", a["batch_id"]).stdout)
    assert [x["batch_id"] for x in named["batches"]] == [a["batch_id"], b["batch_id"]]
    assert named["since"] is None
    assert [x["name"] for x in json.loads(d.ctl("--json", "report", "2").stdout)["batches"]] == [
        "bravo"
    ]
    window = json.loads(d.ctl("--json", "report", "--since", "2h").stdout)
    assert len(window["batches"]) == 2
    ended = max(parse_iso(x["updated_at"]) for x in (a, b))
    d.wait_for(lambda: time.time() - ended > 1.5, 10, "the batches to be over a second old")
    assert json.loads(d.ctl("--json", "report", "--since", "1").stdout)["batches"] == []
    unknown = d.ctl("report", "batch-20200101-000000-000000")
    assert unknown.returncode == 1 and "no batch" in unknown.stderr


# The agent of the evidence tests, in a real repository: "json" commits and reports like
# Claude Code (tokens, cost, session); "plain" edits without committing and prints text
# (tokens estimated from its output); the check fails once, then passes.
AGENT = r"""
case "$1" in
*json*)
    echo "$1 $BATCHD_ATTEMPT" >> work.txt
    git add work.txt && git -c user.name=Agent -c user.email=agent@example.org commit -qm "$1 ($BATCHD_ATTEMPT)"
    printf '{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"sess-%s-%s","total_cost_usd":0.25,"usage":{"input_tokens":100,"output_tokens":20}}\n' "$BATCHD_FEATURE_INDEX" "$BATCHD_ATTEMPT" ;;
*)
    echo "edited" >> README
    echo "I edited the README for you, as asked; nothing committed." ;;
esac
"""
# Each file written whole under a temp name, then renamed: existing means complete.
HOOK = (
    'cp "$BATCHD_REPORT_FILE" "$NOTES/r.tmp" && mv "$NOTES/r.tmp" "$NOTES/report.md"; '
    'stat -c %a "$BATCHD_REPORT_FILE" > "$NOTES/m.tmp" && mv "$NOTES/m.tmp" "$NOTES/mode"'
)


def evidence_daemon(make_daemon: MakeDaemon, tmp_path: Path) -> tuple[Daemon, Path]:
    """A daemon whose agent is AGENT in a fresh repository, with a check that fails the
    first time it runs, and an on_batch_done hook that keeps what it was given."""
    repo = make_repo(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    check = check_script(
        literal(
            'f=../checked-$BATCHD_BATCH_ID; [ -f $f ] || { touch $f; echo "FAIL: 2 tests"; exit 1; }'
        )
    )
    config = (
        FAST_RETRY
        + f"[verify]\ncommand = {toml_list(check)}\n"
        + f"[hooks]\non_batch_done = {toml_list(['sh', '-c', HOOK])}\n"
    )
    d = make_daemon(
        runner=["sh", "-c", literal(AGENT), "agent", "{feature}"],
        config=config,
        env={**ON, "NOTES": str(notes)},
    )
    text = d.config_path.read_text().replace(
        f"cwd = {json.dumps(str(d.workdir))}", f"cwd = {json.dumps(str(repo))}"
    )
    d.config_path.write_text(text)
    return d, notes


def test_show_and_logs_print_the_evidence_of_each_attempt(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """show lists every attempt as index.attempt with its time, tokens (estimated ones as
    ~N), cost, check (failed with its exit code, then passed), git (commits, files, +/-,
    dirty) and session; logs --all heads each attempt with its session id."""
    d, _ = evidence_daemon(make_daemon, tmp_path)
    d.start()
    d.drop("f.txt", ["json feature", "plain feature"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed", state
    out = d.ctl("show", "last")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("attempts:\n", 1)[1].splitlines()
    rows = {ln.split()[0]: ln for ln in lines if re.match(r"\s+\d+\.\d+ ", ln)}
    assert list(rows) == ["0.1", "0.2", "1.1"]
    assert re.search(r"0\.1 failed\s+\d+s\s+120\s+\$0\.25\s+failed \(exit 1\)$", rows["0.1"])
    assert re.search(r"0\.2 completed\s+\d+s\s+120\s+\$0\.25\s+passed$", rows["0.2"])
    assert re.search(r"1\.1 completed\s+\d+s\s+~\d+\s+–\s+passed$", rows["1.1"])
    after = {ln.split()[0]: lines[i + 1] for i, ln in enumerate(lines) if ln.split()[0] in rows}
    assert after["0.1"].strip() == "1 commit, 1 file, +1/-0; session sess-0-1"
    assert after["0.2"].strip() == "1 commit, 1 file, +1/-0; session sess-0-2"
    assert after["1.1"].strip() == "0 commits, 1 file, +1/-0, dirty"
    assert "claude --resume ID" in out.stdout
    logs = d.ctl("logs", "last", "0", "--all").stdout
    heads = [ln for ln in logs.splitlines() if ln.startswith("==> ")]
    assert [h.split(": ", 1)[0] for h in heads] == [
        "==> feature 1 (index 0), attempt 1, session sess-0-1",
        "==> feature 1 (index 0), attempt 2, session sess-0-2",
    ]
    assert "--- verify: sh -c " in logs and "FAIL: 2 tests" in logs
    reply = json.loads(d.ctl("--json", "logs", "last", "1").stdout)
    assert reply["session_id"] is None


def test_the_batch_done_hook_gets_the_batch_report_in_markdown(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """on_batch_done gets BATCHD_REPORT_FILE: the batch's report.md beside its state.json,
    0600, the Markdown report of that batch alone (its features, commits and checks)."""
    d, notes = evidence_daemon(make_daemon, tmp_path)
    d.start()
    d.drop("other.txt", ["# batchd: name = first", "plain other"])
    d.wait_finished(1)
    d.drop("f.txt", ["# batchd: name = second", "json feature", "plain feature"])
    d.wait_for(
        lambda: (
            d.finished(2)
            and (notes / "mode").exists()
            and ("second" in (notes / "report.md").read_text())
        ),
        what="the second batch's hook",
    )
    second = d.batch_states()[1]
    path = d.state / "batches" / second["batch_id"] / "report.md"
    assert (notes / "mode").read_text().strip() == "600"
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600 and path.is_file() and not path.is_symlink()
    md = path.read_text()
    assert md == (notes / "report.md").read_text()
    assert md.startswith("## batchd report\n") and "the batches asked for" in md
    assert f"### \\#2 second (`{second['batch_id']}`): completed" in md
    assert "first" not in md
    assert re.search(
        r"^\| 0 \| completed \| 2 \| \d+s \| \\\$0\.5000 \| 2 \| \+\d+/-\d+ \| passed \| json feature \|$",
        md,
        re.M,
    )
    assert "### Needs you\n\nNothing." in md
    git_log = git(tmp_path / "repo", "log", "--oneline")
    assert len(git_log.splitlines()) == 3  # the first commit and attempts 1 and 2 of "json"


def test_a_state_dir_of_batchd_0_1_is_shown_and_reported_with_dashes(
    make_daemon: MakeDaemon,
) -> None:
    """Attempts recorded by batchd 0.1 (no check, no git, no session, no cost) show "–" for
    what they never recorded, in show and in the report, and a failed one is still named
    with its reason and log first."""
    d = make_daemon()
    shutil.copytree(V01_STATE, d.state)
    for path in [d.state, *d.state.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    d.start()
    show = d.ctl("show", "2").stdout
    rows = [ln.split() for ln in show.split("attempts:\n", 1)[1].splitlines()[1:]]
    assert rows == [
        ["0.1", "completed", "0s", "0", "–", "–"],
        ["1.1", "failed", "0s", "0", "–", "–"],
        ["2.1", "completed", "0s", "0", "–", "–"],
    ]
    out = d.ctl("report", "1", "2")
    assert out.returncode == 0, out.stderr
    assert "FAILED  #2 b-failed.txt, feature 2/3 (index 1)" in out.stdout
    assert "why: exit code 1: SyntaxError: bad b1" in out.stdout
    assert "session" not in out.stdout
    row = next(ln for ln in out.stdout.splitlines() if ln.split()[:2] == ["1", "failed"])
    assert row.split()[:8] == ["1", "failed", "1", "0s", "–", "–", "–", "–"]
    md = d.ctl("report", "1", "2", "--format", "markdown").stdout
    assert "| 1 | failed | 1 | 0s | – | – | – | – | exit=1 stderr=SyntaxError:\\_bad\\_b1 |" in md


def test_parse_duration_takes_seconds_and_units() -> None:
    """--since: seconds, or a number with s, m, h, d or w; a decimal too."""
    cases = {"3600": 3600, "90m": 5400, "12h": 43200, "2d": 172800, "1w": 604800, "1.5h": 5400}
    for text, seconds in cases.items():
        assert parse_duration(text) == seconds, text
    assert parse_duration(" 30S ") == 30


def test_report_refuses_bad_arguments_before_asking_the_daemon(tmp_path: Path) -> None:
    """A --since that is no duration, naming batches together with --since, and a format
    that does not exist are usage errors (exit 2) that say what is wrong, with no daemon."""
    d = Daemon(tmp_path / "d")  # never started: nothing listens on its socket
    for bad in ("3x", "-5", "0", "h", "12 h", "1e3", "nan"):
        out = d.ctl("report", "--since", bad)
        assert out.returncode == 2, (bad, out)
        assert f"report: --since '{bad}' is not a duration" in out.stderr
        assert "90m, 12h, 2d" in out.stderr
    both = d.ctl("report", "last", "--since", "2h")
    assert both.returncode == 2 and "BATCH_IDs or --since, not both" in both.stderr
    fmt = d.ctl("report", "--format", "yaml")
    assert fmt.returncode == 2 and "invalid choice: 'yaml'" in fmt.stderr
    assert d.ctl("report", "not-a-batch").returncode == 1
    assert d.ctl("report", "--since", "2d").returncode == 3
    as_json = d.ctl("--json", "report", "--since", "soon")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"]["code"] == "usage"
