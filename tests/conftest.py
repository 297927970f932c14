from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import SimProcess, run_sim
from tests.support import RedisServer, unique_prefix


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server per test worker; tests isolate by key prefix."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    return unique_prefix("gwtest")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    """The upstream simulator as a real process, one per test module."""
    with run_sim() as s:
        yield s
