"""A mistyped option or command on a command line, named with what was probably meant.

argparse says ``invalid choice: '/tmp/x'`` for ``batchctl --sockt /tmp/x status``
(the unknown ``--sockt`` is skipped and its value is read as the command).
``mistyped`` walks the words as the parser will, before it does, and returns
``unknown option --sockt (did you mean --socket?)``, with the parser (the
command's own, or the top one) whose usage goes with it. Shared by ``batchd``
and ``batchctl``, so a leaf of the standard library: it must start fast
(``difflib`` is imported only when a word is wrong) and it never prints or
exits: the caller passes the message to that parser's ``error``.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from argparse import Action, ArgumentParser
    from collections.abc import Sequence

_NUMBER = re.compile(r"\A-\d+\Z|\A-\d*\.\d+\Z")  # argparse reads these as values


def mistyped(parser: ArgumentParser, argv: Sequence[str]) -> tuple[ArgumentParser, str] | None:
    """The first unknown option or command in ``argv`` as an error message, with the parser
    of the command it was given to; None when every word is known."""
    parsers = [parser]
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            return None
        if word.startswith("-") and len(word) > 1 and not _NUMBER.match(word):
            action = _option(parsers[-1], word)
            if action is None:
                return parsers[-1], _unknown_option(parsers, word)
            i += _values_after(action, word, words[i:])
            continue
        commands = _commands(parsers[-1])
        if commands is None:
            continue  # a positional argument of the command
        if word not in commands:
            return parsers[-1], _unknown_command(parsers[-1], word, sorted(commands))
        parsers.append(commands[word])
    return None


def _name(word: str) -> str:
    """The option a word names: ``--x`` of ``--x=1``, ``-n`` of ``-n5``."""
    return word.split("=", 1)[0] if word.startswith("--") else word[:2]


def _option(parser: ArgumentParser, word: str) -> Action | None:
    """The action of the option ``word`` names, also by a unique prefix (as argparse allows)."""
    known = parser._option_string_actions
    name = _name(word)
    if name in known:
        return known[name]
    if name.startswith("--") and parser.allow_abbrev:
        matches = {known[k] for k in known if k.startswith(name)}
        if matches:  # several: argparse itself says the option is ambiguous
            return next(iter(matches))
    return None


def _values_after(action: Action, word: str, rest: Sequence[str]) -> int:
    """How many of the following words are the option's values (not options or commands)."""
    if action.nargs == 0 or "=" in word or (not word.startswith("--") and len(word) > 2):
        return 0
    if action.nargs is None:
        return 1  # even one that looks like an option: argparse then says what it expected
    taken = 0
    for w in rest:
        if (w.startswith("-") and not _NUMBER.match(w)) or (action.nargs == "?" and taken):
            break
        taken += 1
    return taken


def _commands(parser: ArgumentParser) -> dict[str, ArgumentParser] | None:
    for action in parser._actions:
        choices = getattr(action, "_name_parser_map", None)
        if choices is not None:
            return dict(choices)
    return None


def _shown(word: str) -> str:
    return word if word.isprintable() and word.strip() == word and word else repr(word)


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown_option(parsers: Sequence[ArgumentParser], word: str) -> str:
    name = _name(word)
    here = parsers[-1]
    for outer in parsers[:-1]:
        if _option(outer, word) is not None:
            return f"option {name} goes before the command: `{outer.prog} {name} ... COMMAND`"
    long = sorted(k for k in here._option_string_actions if k.startswith("--"))
    guess = _closest(name, long)
    if guess is not None:
        return f"unknown option {_shown(name)} (did you mean {guess}?)"
    return f"unknown option {_shown(name)}; `{here.prog} --help` lists the options"


def _unknown_command(parser: ArgumentParser, word: str, commands: Sequence[str]) -> str:
    guess = _closest(word, commands)
    if guess is not None:
        return f"unknown command {_shown(word)} (did you mean {guess}?)"
    return f"unknown command {_shown(word)}; `{parser.prog} --help` lists the commands"
