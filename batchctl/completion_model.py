"""What every completion script needs, derived once from the command table.

The commands and their help, each command's options, which options take a
value and what completes it (``file``, ``dir``, ``batch``, ``runner``, or
nothing), and what each positional argument is. Pure; imports only the
table's types. Options hidden from help (``table.HIDDEN``) are left out.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Sequence

    from batchctl.table import Arg, Command

FORWARDED = ("--socket", "--config")  # passed on to `batchctl list --ids` and the runner names


class Model:
    """What every script needs, derived once from the table."""

    def __init__(self, table: Sequence[Command], options: Sequence[Arg]) -> None:
        self.commands = [(c.name, c.help) for c in table]
        self.globals = list(options)
        self.options: dict[str, list[Arg]] = {}
        self.positionals: dict[str, list[str]] = {}
        self.value_kinds: dict[str, str] = {}  # option -> file, dir, batch, runner, none
        for a in self.globals:
            self.note_value(a)
        for c in table:
            args = [a for a in c.flat_args() if not a.hidden]
            self.options[c.name] = [a for a in args if not a.positional]
            self.positionals[c.name] = [kind(a) for a in args if a.positional]
            for a in args:
                self.note_value(a)

    def note_value(self, a: Arg) -> None:
        if not a.positional and a.takes_value:
            for name in a.names:
                self.value_kinds[name] = a.complete or "none"

    def flags(self, command: str) -> list[str]:
        own = [n for a in self.options.get(command, []) for n in a.names]
        return own + [n for a in self.globals for n in a.names] + ["--help"]


def kind(a: Arg) -> str:
    """A positional's completion: batch, file, dir, choice:a,b,c or none; ``*`` repeats it."""
    choices = a.kw.get("choices")
    what = "choice:" + ",".join(choices) if choices else (a.complete or "none")
    return what + ("*" if a.kw.get("nargs") in ("*", "+") else "")


def case_arms(pairs: Sequence[tuple[str, str]], indent: str) -> str:
    return "\n".join(f"{indent}{pattern}) {body};;" for pattern, body in pairs)


def by_value_kind(model: Model) -> list[tuple[str, str]]:
    groups: dict[str, list[str]] = {}
    for name, k in model.value_kinds.items():
        groups.setdefault(k, []).append(name)
    return [("|".join(names), f"echo {k}") for k, names in groups.items()]
