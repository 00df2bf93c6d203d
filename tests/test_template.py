"""Placeholders in the runner's and hooks' argv (SPEC sections 2 and 5, issue 12 section 6).

Pure tests of ``batchd.template``, then the same rules through a real daemon:
a runner command with an unknown placeholder stops it with exit 78, and the
agent receives literal braces and feature text exactly as written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchd.template import PLACEHOLDERS, check, render
from tests.harness import FAKE_AGENT, Daemon

MakeDaemon = Callable[..., Daemon]

VALUES = {"feature": "Add login", "index": "3", "batch_id": "batch-1", "attempt": "2", "issue": ""}
VALID = "{feature}, {index}, {batch_id}, {attempt}, {issue}"


def escape(text: str) -> str:
    """Literal text as a template element: braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def check_error(argv: list[str], where: str = "runner.command") -> str:
    with pytest.raises(ValueError) as e:
        check(argv, where)
    return str(e.value)


# --- render ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "rendered"),
    [
        ("/auto-implement {feature}", "/auto-implement Add login"),
        ("{batch_id}/{index}.{attempt}", "batch-1/3.2"),
        ("#{issue}", "#"),
        ("{{feature}}", "{feature}"),
        ("{{{feature}}}", "{Add login}"),
        ('{{"json": "{index}"}}', '{"json": "3"}'),
        ("no braces", "no braces"),
        ("", ""),
    ],
)
def test_render_examples(element: str, rendered: str) -> None:
    """Placeholders are replaced inside an element; {{ and }} become literal braces."""
    assert render(["agent", element], VALUES) == ["agent", rendered]


def test_inserted_text_is_never_replaced_again() -> None:
    """A feature that says '{batch_id}' or '{{' reaches the agent exactly as written."""
    values = {**VALUES, "feature": "print {batch_id} and {{x}} $(rm -rf ~)"}
    assert render(["{feature}:{index}"], values) == ["print {batch_id} and {{x}} $(rm -rf ~):3"]


TEXT = st.text(alphabet=st.sampled_from(list("ab {}$\\x")), max_size=8)
PIECE = st.one_of(
    st.sampled_from(PLACEHOLDERS).map(lambda n: ("field", n)), TEXT.map(lambda t: ("text", t))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECE, max_size=8), st.fixed_dictionaries({n: TEXT for n in PLACEHOLDERS}))
def test_render_is_one_pass(pieces: list[tuple[str, str]], values: dict[str, str]) -> None:
    """Any valid template renders to its literal pieces and the values, whatever braces the
    values carry: inserted text is never substituted again."""
    element = "".join(f"{{{v}}}" if kind == "field" else escape(v) for kind, v in pieces)
    expected = "".join(values[v] if kind == "field" else v for kind, v in pieces)
    check([element], "runner.command")
    assert render([element], values) == [expected]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=5))
def test_braces_round_trip(argv: list[str]) -> None:
    """Any text with its braces doubled passes check and renders back to itself."""
    escaped = [escape(a) for a in argv]
    check(escaped, "hooks.after_feature")
    assert render(escaped, VALUES) == argv


# --- check -------------------------------------------------------------------------


def test_check_accepts_every_placeholder_and_escapes() -> None:
    """Each valid placeholder and doubled braces pass."""
    check(["agent", *(f"{{{n}}}" for n in PLACEHOLDERS), "{{}}", "}}{{", "{{feature}}"], "x")


def test_unknown_placeholder_names_it_where_and_the_valid_ones() -> None:
    """Regression ('{featur}' ran as literal text): an unknown name is an error naming it,
    its element, and every valid placeholder."""
    message = check_error(["echo", "{featur}", "{Feature}"])
    assert message.startswith("runner.command[1]: unknown placeholder {featur}; ")
    assert "runner.command[2]: unknown placeholder {Feature}; " in message
    assert VALID in message and "{{ and }} write literal braces" in message


@pytest.mark.parametrize(
    ("element", "problem"),
    [
        ("a { b", "a lone '{' at character 3 (write {{)"),
        ("x}", "a lone '}' at character 2 (write }})"),
        ("{feature", "a lone '{' at character 1 (write {{)"),
        ("{{feature}", "a lone '}' at character 10 (write }})"),
        ("{}", "unknown placeholder {}"),
        ("{ feature }", "unknown placeholder { feature }"),
        ("{feature:>10}", "unknown placeholder {feature:>10}"),
        ("{0}", "unknown placeholder {0}"),
    ],
)
def test_lone_braces_and_odd_fields_are_refused(element: str, problem: str) -> None:
    """A brace that is neither doubled nor part of a valid placeholder is named precisely."""
    message = check_error(["notify", element], "hooks.after_feature")
    assert message.startswith(f"hooks.after_feature[1]: {problem}; "), message
    assert VALID in message


# --- through a real daemon -----------------------------------------------------------


def refused(d: Daemon, *args: str) -> str:
    """Start the daemon, expect exit 78 (EX_CONFIG) before it serves; its stderr."""
    d.start(*args, wait=False)
    assert d.proc is not None and d.proc.wait(30) == 78, d.stderr()
    assert d.agent_runs() == [] and not d.socket.exists()
    return d.stderr()


def test_daemon_refuses_an_unknown_placeholder_with_exit_78(make_daemon: MakeDaemon) -> None:
    """batchd --runner 'echo {featur} {Feature}' exits 78 naming {featur} and the valid ones."""
    err = refused(make_daemon(), "--runner", "echo {featur} {Feature}")
    assert "--runner: runner.command[1]: unknown placeholder {featur}" in err, err
    assert "{Feature}" in err and VALID in err


def test_daemon_refuses_a_bad_hook_in_the_config_file(make_daemon: MakeDaemon) -> None:
    """A hook argv with an unknown placeholder in config.toml: exit 78 naming file and key."""
    d = make_daemon(config='[hooks]\nafter_feature = ["notify", "{outcome}"]\n')
    err = refused(d)
    assert f"{d.config_path}: hooks.after_feature[1]: unknown placeholder {{outcome}}" in err, err


def test_agent_gets_literal_braces_and_the_feature_verbatim(make_daemon: MakeDaemon) -> None:
    """{{ }} reach the agent as braces; a feature saying {batch_id} is passed unreplaced."""
    runner = [sys.executable, str(FAKE_AGENT), "{feature}", '{{"i": {index}}}', "{{batch_id}}"]
    d = make_daemon(runner=runner)
    d.start()
    d.drop("b.txt", ["say {batch_id} and {{x}}"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    [start] = [r for r in d.agent_runs() if r["event"] == "start"]
    assert start["argv"] == ["say {batch_id} and {{x}}", '{"i": 0}', "{batch_id}"]
