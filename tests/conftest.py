"""Shared fixtures: every daemon test runs once per event-loop backend."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import Daemon
from tests.slurm_cluster import slurm_cluster as slurm_cluster


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (``cmd &``, nohup)
    inherits SIGINT ignored (POSIX), and so would every program it starts: the tests that
    press Ctrl-C on batchctl would wait forever. Python's own handler is reset to the
    default by exec, SIG_IGN is not."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# A busy machine makes generating examples slow; that says nothing about the code under test.
settings.register_profile("batchd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("batchd")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backend of async tests, and the ``--backend`` of daemons under test."""
    backend: str = request.param
    return backend


@pytest.fixture
def make_daemon(tmp_path: Path, anyio_backend: str) -> Iterator[Callable[..., Daemon]]:
    """Build (not start) daemons in private temp dirs; all are killed at the end."""
    made: list[Daemon] = []

    def make(name: str = "d", **kw: Any) -> Daemon:
        d = Daemon(tmp_path / name, anyio_backend, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
