"""Checking the agent's work end to end (SPEC 14), in real git repositories made by the tests:
the check after a completed attempt, the last failure fed back ({last_error} and
BATCHD_LAST_ERROR_FILE), require_change, the check's timeout, a kill during the check (the
agent runs once, the check twice), a batch's own check over the global one, and the
evidence of each attempt. Real daemons on both backends; the agent is a fixed sh script
(the feature text is only ever an argument, never shell code)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.harness import Daemon, toml_list

MakeDaemon = Callable[..., Daemon]
GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@example.org"]

# The agent: notes {last_error} (its $1) and the feedback file it was given, then commits a
# change (or not, with "nochange" in the feature text, $2).
AGENT = r"""
n=$BATCHD_ATTEMPT
printf '%s' "$1" > "$NOTES/arg-$BATCHD_FEATURE_INDEX-$n"
if [ -n "$BATCHD_LAST_ERROR_FILE" ]; then cat "$BATCHD_LAST_ERROR_FILE" > "$NOTES/file-$BATCHD_FEATURE_INDEX-$n"; fi
echo "agent $BATCHD_FEATURE_INDEX/$n" >> "$NOTES/agent-runs"
case "$2" in *nochange*) exit 0 ;; esac
echo "$2 $n" >> work.txt
git add work.txt && git -c user.name=Agent -c user.email=agent@example.org commit -qm "$2 (attempt $n)"
"""
FAST_RETRY = '[retry]\nbackoff_initial = 0.05\nbackoff_max = 0.1\njitter = "none"\n'
ON = {"BATCH_RETRY_ENABLED": "true"}


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *GIT_ID, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "first")
    return repo


def checking_daemon(make_daemon: MakeDaemon, tmp_path: Path, extra: str = "") -> Daemon:
    """A daemon whose runner is AGENT, working in a fresh repository."""
    notes = tmp_path / "notes"
    notes.mkdir()
    repo = make_repo(tmp_path)
    runner = ["sh", "-c", AGENT, "agent", "{last_error}", "{feature}"]
    d = make_daemon(runner=runner, config=FAST_RETRY + extra, env={**ON, "NOTES": str(notes)})
    d.workdir = repo
    d.write_config(runner, FAST_RETRY + extra)
    text = d.config_path.read_text().replace(
        f'cwd = "{tmp_path / "d" / "work"}"', f'cwd = "{repo}"'
    )
    d.config_path.write_text(text)
    return d


def notes(tmp_path: Path, name: str) -> str:
    return (tmp_path / "notes" / name).read_text()


def check_script(body: str) -> list[str]:
    return ["sh", "-c", body]


def test_a_check_that_fails_once_is_fed_back_and_the_retry_passes(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Attempt 1 commits, its check fails (transient); attempt 2 gets the failure as
    {last_error} and in BATCHD_LAST_ERROR_FILE (with the check's output), and passes."""
    check = check_script(
        "if [ -f ../passed ]; then echo all good; else echo 'FAIL: test_login (3 errors)'; touch ../passed; exit 1; fi"
    )
    d = checking_daemon(make_daemon, tmp_path, f"[verify]\ncommand = {toml_list(check)}\n")
    d.start()
    d.drop("f.txt", ["add login"])
    [state] = d.wait_finished(1)
    first, second = state["processing_history"]
    assert (first["outcome"], first["failure_type"], first["verified"]) == (
        "failed",
        "transient",
        False,
    )
    assert first["error_message"] == "verify failed (exit 1): FAIL: test_login (3 errors)"
    assert first["verify"]["exit_code"] == 1 and first["git"]["commits"] == 1
    assert first["git"]["subjects"] == ["add login (attempt 1)"]
    assert (second["outcome"], second["verified"], second["verify"]["output_tail"]) == (
        "completed",
        True,
        "all good",
    )
    assert state["status"] == "completed"
    assert notes(tmp_path, "arg-0-1") == ""
    assert notes(tmp_path, "arg-0-2") == first["error_message"]
    fed = notes(tmp_path, "file-0-2")
    assert fed.startswith(first["error_message"]) and "FAIL: test_login (3 errors)" in fed
    log = (d.state / "batches" / state["batch_id"] / "logs" / "0.1.log").read_text()
    assert "--- verify: sh -c " in log


def test_require_change_fails_an_agent_that_changed_nothing(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """verify.require_change: an agent that made no commit and left no change fails,
    permanent, 'the agent changed nothing', and the check does not run."""
    check = check_script("touch ../check-ran")
    d = checking_daemon(
        make_daemon,
        tmp_path,
        f"[verify]\ncommand = {toml_list(check)}\nrequire_change = true\n",
    )
    d.start()
    d.drop("f.txt", ["idle nochange"])
    [state] = d.wait_finished(1)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"], attempt["error_message"]) == (
        "failed",
        "permanent",
        "the agent changed nothing",
    )
    assert attempt["verified"] is False and attempt["verify"] is None
    assert attempt["git"]["commits"] == 0 and attempt["git"]["dirty"] is False
    assert not (tmp_path / "check-ran").exists()


def test_a_check_past_its_timeout_fails_naming_the_limit(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A check that hangs is stopped at verify.timeout with its group; the attempt fails
    naming verify.timeout, permanent as verify.failure says (not retried); nothing of the
    check is left running."""
    check = check_script("echo $$ > ../check-pid; exec sleep 600")
    d = checking_daemon(
        make_daemon,
        tmp_path,
        f'[verify]\ncommand = {toml_list(check)}\ntimeout = 1\nfailure = "permanent"\n',
    )
    d.start()
    d.drop("f.txt", ["slow check"])
    [state] = d.wait_finished(1)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"]) == ("failed", "permanent")
    assert attempt["error_message"].startswith(
        "verify failed: timed out after 1 s (verify.timeout)"
    )
    pid = int((tmp_path / "check-pid").read_text())
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_a_kill_during_the_check_runs_the_check_again_never_the_agent(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """kill -9 while the check runs: the next start runs the check again (the old one is
    stopped first), the agent ran once, and the attempt completes verified."""
    check = check_script(
        "echo run >> ../checks; if [ -f ../go ]; then exit 0; fi; echo $$ > ../first-check; exec sleep 600"
    )
    d = checking_daemon(make_daemon, tmp_path, f"[verify]\ncommand = {toml_list(check)}\n")
    d.start()
    d.drop("f.txt", ["feature"])
    first = d.wait_for(
        lambda: (tmp_path / "first-check").exists() and (tmp_path / "first-check").read_text(),
        what="the first check running",
    )
    [state] = d.batch_states()
    assert state["processing_history"][0]["phase"] == "verifying"
    d.kill9()
    (tmp_path / "go").touch()
    d.start()
    [state] = d.wait_finished(1)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["verified"]) == ("completed", True)
    assert notes(tmp_path, "agent-runs") == "agent 0/1\n"
    assert (tmp_path / "checks").read_text() == "run\nrun\n"
    pid = int(first)
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_a_batch_check_wins_over_the_global_one(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """[verify] says `false`, the batch says `true`: the batch's own check decides."""
    d = checking_daemon(make_daemon, tmp_path, '[verify]\ncommand = ["false"]\n')
    d.start()
    d.drop("f.txt", ["# batchd: verify = true", "feature"])
    [state] = d.wait_finished(1)
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["verified"]) == ("completed", True)
    shown = json.loads(d.ctl("--json", "show", state["batch_id"]).stdout)
    assert shown["state"]["verify"] == ["true"]


def test_the_check_argv_gets_the_placeholders_and_literal_braces(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A check's argv takes the runner's placeholders, each as one argument (never shell
    code), and {{ }} as literal braces, as check-config asks of it."""
    check = [
        "sh",
        "-c",
        'printf "%s|%s\\n" "$1" "$2" >> ../seen; f() {{ :; }}; f',
        "check",
        "{feature} {index}.{attempt}",
        "{{literal}}",
    ]
    d = checking_daemon(make_daemon, tmp_path, f"[verify]\ncommand = {toml_list(check)}\n")
    d.start()
    d.drop("f.txt", ["add $(touch ../pwned) login"])
    [state] = d.wait_finished(1)
    assert state["processing_history"][0]["verified"] is True
    assert (tmp_path / "seen").read_text() == "add $(touch ../pwned) login 0.1|{literal}\n"
    assert not (tmp_path / "pwned").exists()
