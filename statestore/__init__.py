"""Continuation state shared across instances: a StateStore picked by URL scheme.

``open_store("memory://")`` keeps everything in process; ``open_store("redis://...")``
(also ``rediss://``, ``unix://``) puts a hot local cache in front of Redis.
"""

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
