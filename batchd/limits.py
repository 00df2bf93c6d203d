"""The agents' own words for "usage limit reached" and "not logged in" (SPEC 13). Pure.

* ``USAGE_PATTERNS``: Claude Code's current and older usage-limit texts and
  codex's; ``limits.usage_patterns`` adds to them.
* ``LOGIN_PATTERNS``: an agent that is not logged in (Claude Code's
  ``Not logged in · Please run /login``, codex's ``401 Unauthorized`` or
  ``Not logged in``); ``limits.login_patterns`` adds to them.
* ``login_help``: how to log the agent in for the user the daemon runs as, or
  where its API key goes (the service's ``EnvironmentFile``).
* ``agent_of``: which agent a runner program is (``claude``, ``codex``), for
  that help.

The patterns are matched, lowercased, against the classified text only (the
Claude result's text, codex's error events, else the stderr tail): never the
agent's transcript on stdout, which may discuss usage limits it read about.
"""

from __future__ import annotations

# "’" too: the agents' texts are typographic at times.
_APOS = "(?:'|\u2019)?"
USAGE_PATTERNS = (
    r"claude ai usage limit reached",
    r"you" + _APOS + r"ve hit your (?:(?:session|weekly|usage|daily|opus|sonnet) )?limit",
    r"you" + _APOS + r"re out of extra usage",
    r"usage[ _]limit[ _](?:reached|exceeded)",
)
LOGIN_PATTERNS = (
    r"not logged in",
    r"please run /login",
    r"invalid api key",
    r"invalid x-api-key",
    r"401 unauthorized",
    r"oauth token (?:has )?expired",
)

ENVIRONMENT_FILE = "~/.config/batchd/environment"
_HOW = {
    "claude": (
        "run `claude` once in a terminal as {user} and type /login, or put "
        "ANTHROPIC_API_KEY in " + ENVIRONMENT_FILE
    ),
    "codex": "run `codex login` as {user}, or put OPENAI_API_KEY in " + ENVIRONMENT_FILE,
}
_HOW_ANY = "log the agent in as {user}, or put its API key in " + ENVIRONMENT_FILE


def agent_of(program: str) -> str | None:
    """``claude`` or ``codex`` when the runner program is one of them (by its name)."""
    name = program.rsplit("/", 1)[-1].lower()
    for agent in _HOW:
        if name == agent or name.startswith(agent + "-") or name.startswith(agent + "."):
            return agent
    return None


def login_help(agent: str | None, user: str, said: str) -> str:
    """The message of a logged-out agent: what it said, how to fix it, how to go on.

    ``said`` is already sanitised. No ``KEY=value`` here: the sanitiser would
    redact the value of an example and leave the reader a riddle.
    """
    how = _HOW.get(agent or "", _HOW_ANY).format(user=user or "the user batchd runs as")
    name = agent or "the agent"
    return f"{name} is not logged in ({said}): {how} (the batchd service's EnvironmentFile)"
