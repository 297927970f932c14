"""Durable conversation transcripts: what each turn added, kept next to the session's
records so another instance can rebuild a ``store: false`` conversation whose upstream
socket and in-memory transcript went away with their instance (a restart, a deploy).

Each completed turn appends one delta: the input items it sent upstream and the output
items it got back, as raw JSON, with the response id that closed it and the previous
response it continued. A delta without a previous response starts a chain (the list is
reset first), so a rebuild walks back from the newest delta and must reach a chain start
through unbroken links; anything else is not rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class TranscriptDelta(msgspec.Struct, frozen=True, array_like=True):
    previous_response_id: str | None  # None: this delta starts the conversation (whole)
    response_id: str
    items: list[msgspec.Raw]  # input sent, then output received, byte for byte

    @property
    def nbytes(self) -> int:
        return sum(len(item) for item in self.items)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TranscriptDelta)


def encode_delta(delta: TranscriptDelta) -> bytes:
    return _encoder.encode(delta)


def decode_delta(raw: bytes) -> TranscriptDelta | None:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def chain_items(deltas: Sequence[TranscriptDelta], ends_with: str) -> list[msgspec.Raw] | None:
    """The whole conversation up to and including ``ends_with``'s output, or None when the
    newest delta is not ``ends_with`` or a link back to the chain's start is missing."""
    if not deltas or deltas[-1].response_id != ends_with:
        return None
    chain: list[TranscriptDelta] = []
    expected: str | None = ends_with
    for delta in reversed(deltas):
        if delta.response_id != expected:
            return None
        chain.append(delta)
        expected = delta.previous_response_id
        if expected is None:
            break
    else:
        return None  # ran out of deltas before the chain's start
    items: list[msgspec.Raw] = []
    for delta in reversed(chain):
        items.extend(delta.items)
    return items
