"""``batchctl completion bash|zsh|fish``: print a shell completion script made from the table.

The scripts themselves are in ``completion_sh`` (bash, zsh) and
``completion_fish``, both from ``completion_model``'s view of ``table``.
``completion --runner-names`` (hidden from help) prints the runner profiles of
the config, one a line: the scripts call it to complete ``--runner``. Nothing
here runs unless ``completion`` does; only ``--runner-names`` loads the config.
"""

from __future__ import annotations

from batchctl.completion_model import Model
from batchctl.errors import EXIT_OK, usage
from batchctl.table import GLOBAL_OPTIONS, TABLE

TYPE_CHECKING = False

if TYPE_CHECKING:
    from argparse import Namespace


def script(shell: str) -> str:
    model = Model(TABLE, GLOBAL_OPTIONS)
    if shell == "fish":
        from batchctl.completion_fish import fish

        return fish(model)
    from batchctl.completion_sh import bash, zsh

    return bash(model) if shell == "bash" else zsh(model)


def completion(args: Namespace) -> int:
    if args.runner_names:
        from batchctl.options import load_config

        print("\n".join(sorted(load_config(args).profile_names())))
        return EXIT_OK
    if args.shell is None:
        raise usage("completion needs SHELL: bash, zsh or fish")
    print(script(args.shell), end="")
    return EXIT_OK
