"""The daemon says at start what check-config would warn about (issue 23, newcomer item 7):
a runner program that cannot be found is a `runner` problem in status and a warning in the
log, naming the profile and the fix, not a silent "ready"; a reload that fixes it clears it."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import Daemon, agent_command

MakeDaemon = Callable[..., Daemon]


def test_a_missing_runner_is_a_problem_from_the_start(make_daemon: MakeDaemon) -> None:
    """runner.command names a program that is not installed: status lists a runner problem
    at once (naming it and how to fix it); after a fixed config and a reload it is gone."""
    d = make_daemon(runner=["no-such-agent-xyz", "{feature}"])
    d.start()
    [problem] = [p for p in d.status()["problems"] if p["kind"] == "runner"]
    assert "'no-such-agent-xyz'" in problem["message"]
    assert "runner 'default'" in problem["message"] and "PATH" in problem["message"]
    assert "no-such-agent-xyz" in d.stderr() and "WARNING" in d.stderr()
    d.write_config(agent_command())
    assert d.ctl("reload").returncode == 0
    assert [p for p in d.status()["problems"] if p["kind"] == "runner"] == []
