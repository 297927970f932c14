"""Durable transcripts: the chain rule, and both backends keeping the same lists."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from statestore import StateStore, TranscriptDelta, TurnBinding, chain_items, open_store
from statestore.transcripts import decode_delta, encode_delta
from tests.support import RedisServer


def raw(text: str) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode({"type": "message", "text": text}))


def delta(prev: str | None, rid: str, *texts: str) -> TranscriptDelta:
    return TranscriptDelta(prev, rid, [raw(t) for t in texts])


def texts(items: list[msgspec.Raw] | None) -> list[str] | None:
    if items is None:
        return None
    return [msgspec.json.decode(bytes(i))["text"] for i in items]


def test_a_chain_is_rebuilt_only_when_it_ends_at_the_response_asked_for() -> None:
    chain = [delta(None, "r1", "a", "A"), delta("r1", "r2", "b", "B"), delta("r2", "r3", "c")]
    assert texts(chain_items(chain, "r3")) == ["a", "A", "b", "B", "c"]
    assert chain_items(chain, "r2") is None  # not the newest: the conversation moved on
    assert chain_items([], "r1") is None
    broken = [delta(None, "r1", "a"), delta("r9", "r2", "b")]
    assert chain_items(broken, "r2") is None  # a delta went missing in between
    headless = [delta("r0", "r1", "a")]
    assert chain_items(headless, "r1") is None  # never reached the conversation's start
    restarted = [delta(None, "r1", "a"), delta(None, "r2", "whole", "again")]
    assert texts(chain_items(restarted, "r2")) == ["whole", "again"]


def test_a_delta_round_trips_byte_for_byte() -> None:
    original = TranscriptDelta("r1", "r2", [msgspec.Raw(b'{"type":"x","k":[1, 2]}')])
    decoded = decode_delta(encode_delta(original))
    assert decoded is not None
    assert bytes(decoded.items[0]) == b'{"type":"x","k":[1, 2]}'
    assert (decoded.previous_response_id, decoded.response_id) == ("r1", "r2")
    assert decode_delta(b"not json") is None


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[StateStore]:
    url = "memory://" if request.param == "memory" else redis_server.url
    opened = open_store(url, key_prefix=key_prefix)
    yield opened
    await opened.aclose()


def bind(rid: str, tx: TranscriptDelta | None, drop: bool = False) -> TurnBinding:
    return TurnBinding(
        group="g",
        account_id="a",
        response_id=rid,
        session_key="sess-tx",
        transcript=tx,
        drop_transcript=drop,
    )


async def test_backends_keep_append_reset_and_drop_alike(store: StateStore) -> None:
    assert await store.load_transcript("g", "sess-tx") is None
    await store.bind_turn(bind("r1", delta(None, "r1", "a")))
    await store.bind_turn(bind("r2", delta("r1", "r2", "b")))
    kept = await store.load_transcript("g", "sess-tx")
    assert kept is not None and texts(chain_items(kept, "r2")) == ["a", "b"]
    # A whole conversation starts the list over.
    await store.bind_turn(bind("r3", delta(None, "r3", "a", "b", "c")))
    kept = await store.load_transcript("g", "sess-tx")
    assert kept is not None and [d.response_id for d in kept] == ["r3"]
    # Other sessions and groups are separate.
    assert await store.load_transcript("other", "sess-tx") is None
    await store.bind_turn(bind("r4", None, drop=True))
    assert await store.load_transcript("g", "sess-tx") is None
