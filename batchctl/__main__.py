"""``python -m batchctl``."""

from batchctl.cli import main

main()
