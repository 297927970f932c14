"""Continuation state shared across instances: a StateStore picked by URL scheme.

``open_store("memory://")`` keeps everything in process; ``redis://`` (also ``rediss://``,
``unix://``), ``redis+cluster://`` and ``redis+sentinel://`` put a hot local cache in
front of Redis. ``STORE_URL_SCHEMES`` is the one list of accepted schemes, and
``store_url_problem`` says what is wrong with a URL.
"""

from statestore.base import (
    BindOutcome,
    Continuation,
    NoHooks,
    StateStore,
    StoreHooks,
    TurnBinding,
)
from statestore.open import open_store
from statestore.schemes import STORE_URL_SCHEMES, STORE_URL_SCHEMES_TEXT
from statestore.topology import store_url_problem
from statestore.transcripts import TranscriptDelta, chain_items

__all__ = [
    "STORE_URL_SCHEMES",
    "STORE_URL_SCHEMES_TEXT",
    "BindOutcome",
    "Continuation",
    "NoHooks",
    "StateStore",
    "StoreHooks",
    "TranscriptDelta",
    "TurnBinding",
    "chain_items",
    "open_store",
    "store_url_problem",
]
