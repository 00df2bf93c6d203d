"""Runner profiles end to end (SPEC 13): a batch picks [runners.NAME], an unknown name is
refused with the names there are, and a reload that drops a profile in use pauses its
batches until it is back. Real daemons, the fake agent as both profiles' program."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.harness import Daemon, agent_command, toml_list

MakeDaemon = Callable[..., Daemon]


def alt_profile(marker: str = "ALT") -> str:
    """A profile running the fake agent with an extra argument that tells the runs apart."""
    return f"[runners.alt]\ncommand = {toml_list(agent_command(marker))}\ntimeout = 30\n"


def test_a_batch_runs_on_the_profile_it_names(make_daemon: MakeDaemon) -> None:
    """`# batchd: runner = alt` runs alt's command; a plain batch runs [runner]'s; status,
    list and show name each batch's profile."""
    d = make_daemon(config=alt_profile())
    d.start()
    d.drop("a.txt", ["# batchd: runner = alt", "on alt"])
    d.drop("b.txt", ["on default"])
    d.wait_finished(2)
    argv = {r["feature"]: r["argv"] for r in d.agent_runs() if r["event"] == "start"}
    assert argv == {"on alt": ["on alt", "ALT"], "on default": ["on default"]}
    runners = {b["name"]: b["runner"] for b in d.status()["batches"]}
    assert runners == {"a.txt": "alt", "b.txt": "default"}
    listed = json.loads(d.ctl("--json", "list").stdout)
    assert {b["runner"] for b in listed["batches"]} == {"alt", "default"}
    states = d.batch_states()
    assert [s["runner"] for s in states] == ["alt", "default"]
    for words in (d.ctl("list").stdout, d.ctl("status").stdout):  # in words: only the named one
        assert words.count("runner alt") == 1 and "runner default" not in words
    assert "runner: alt" in d.ctl("show", states[0]["batch_id"]).stdout


def test_an_unknown_profile_is_rejected_naming_the_profiles(make_daemon: MakeDaemon) -> None:
    """A file naming a profile that is not configured lands in rejected/ with a reason that
    names the profiles there are; nothing runs."""
    d = make_daemon(config=alt_profile())
    d.start()
    d.drop("x.txt", ["# batchd: runner = codex", "never runs"])
    error = d.spool / "rejected" / "x.txt.error"
    reason = d.wait_for(lambda: error.exists() and error.read_text(), what="the rejection")
    assert "unknown runner profile 'codex'; the profiles are alt, default" in reason
    assert d.agent_runs() == [] and d.batch_states() == []


def test_a_reload_that_drops_a_profile_in_use_pauses_its_batches(make_daemon: MakeDaemon) -> None:
    """Queue paused, a batch on alt waits; a reload without [runners.alt] pauses it with
    runner_unavailable (naming the fix); putting alt back, reloading and resuming runs it."""
    d = make_daemon(config=alt_profile())
    d.start()
    assert d.ctl("pause").returncode == 0
    d.drop("a.txt", ["# batchd: runner = alt", "later"])
    d.wait_for(lambda: d.status()["batches"], what="the batch")
    d.write_config(d.runner_argv)
    assert d.ctl("reload").returncode == 0
    [batch] = d.status()["batches"]
    assert batch["status"] == "paused"
    reason = batch["pause_reason"]
    assert reason.startswith("runner_unavailable: the runner profile 'alt' is not in ")
    assert "add [runners.alt] and reload" in reason
    d.write_config(d.runner_argv, alt_profile())
    assert d.ctl("reload").returncode == 0
    assert d.ctl("resume", "--all").returncode == 0
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert [r["argv"] for r in d.agent_runs() if r["event"] == "start"] == [["later", "ALT"]]
