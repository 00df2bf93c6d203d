"""batchctl: the command-line client of batchd."""
