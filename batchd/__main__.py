"""``python -m batchd``: the same as the ``batchd`` command."""

from batchd.cli import main

if __name__ == "__main__":
    main()
