"""One scenario measured in several rounds, combined into one row.

On a shared 2-core machine the same relay's CPU per event moves by a fifth between two
runs minutes apart, so a ratio of two relays measured at different moments says as much
about the moment as about the relays. Each round measures every relay back to back (in
alternating order), each round's figures are taken against the floor and direct path of
that same round, and the row keeps the median of each figure across rounds.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Figures that are medians across rounds: top-level numbers, and percentile maps.
_NUMBERS = ("cpu_us_per_event", "turns_per_s", "events_per_s")
_PERCENTILES = ("lat_ms", "ttft_ms", "turn_ms", "added_ms", "ttft_added_ms", "turn_added_ms")
_RATIOS = ("x_floor", "x_direct")


def round_order(items: Sequence[T], round_index: int) -> list[T]:
    """The first item (the direct path) always first; the rest reversed every other round,
    so no relay always runs right after the same neighbour or at the same point."""
    head, rest = list(items[:1]), list(items[1:])
    return head + (rest if round_index % 2 == 0 else rest[::-1])


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def combine_rounds(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One row from per-round rows (each already relative to its own round's direct path
    and floor): every figure is the median of that figure over the rounds a relay ran in;
    ``rounds`` says how many that was."""
    row: dict[str, dict[str, Any]] = {}
    labels = [label for label in rounds[0]] + [
        label for r in rounds[1:] for label in r if label not in rounds[0]
    ]
    for label in dict.fromkeys(labels):
        runs = [r[label] for r in rounds if label in r]
        data = copy.deepcopy(runs[0])
        for key in _NUMBERS:
            if key in data:
                data[key] = _median([run.get(key) for run in runs])
        for key in _PERCENTILES + _RATIOS:
            if isinstance(data.get(key), dict):
                data[key] = {q: _median([run[key].get(q) for run in runs]) for q in data[key]}
        data["rounds"] = len(runs)
        row[label] = data
    return row
