"""Shared fixtures: every daemon test runs once per event-loop backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import Daemon
from tests.slurm_cluster import slurm_cluster as slurm_cluster

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
