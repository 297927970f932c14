"""Number formatting and nested look-ups shared by the report sections."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(value: float | None) -> str:
    """`` (1.23x)`` after a number, or nothing when there is no ratio."""
    return "" if value is None else f" ({value:.2f}x)"


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or None where a level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data
