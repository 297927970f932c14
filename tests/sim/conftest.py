from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sim.helpers import KEY_A, KEY_B, Sim, running_sim


@pytest.fixture(scope="module")
def sim_process() -> Iterator[Sim]:
    """One simulator process per test module (and xdist worker), with two accounts."""
    with running_sim("--keys", f"{KEY_A},{KEY_B}") as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Sim) -> Sim:
    """The module's simulator, reset: empty log, no faults, no sockets, nothing stored."""
    sim_process.control.reset()
    return sim_process
