"""Continuation state shared across instances: a StateStore picked by URL scheme."""

from statestore.base import (
    BindOutcome,
    Continuation,
    NoHooks,
    StateStore,
    StoreHooks,
    TurnBinding,
    open_store,
)

__all__ = [
    "BindOutcome",
    "Continuation",
    "NoHooks",
    "StateStore",
    "StoreHooks",
    "TurnBinding",
    "open_store",
]
