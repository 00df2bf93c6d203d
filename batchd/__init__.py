"""batchd: run a spool of features through an agent command, one at a time, crash-safe."""

__version__ = "0.1.0"
