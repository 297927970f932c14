"""One client socket's side of the durable transcript.

After each turn the socket says what to append to the session's list in the state store
(the same round trip as the turn's binding): the input it sent and the output it got, or
the whole conversation when it starts one, when it is this socket's first write, or after
a write that failed (so a missing delta never leaves a broken chain behind). A
conversation over ``durable_transcript_max_bytes`` stops being kept (its list is deleted)
until it starts over. When a ``store: false`` continuation arrives on an instance that
has neither the upstream socket nor the transcript, ``rebuild`` restores the transcript
from the list if, and only if, the chain ends exactly at the previous response.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from gateway.context import GatewayContext
from gateway.transcript import Transcript
from normalizer import RequestSnapshot
from statestore import TranscriptDelta, chain_items


class DurableTranscript:
    def __init__(
        self,
        ctx: GatewayContext,
        group: str,
        session_key: str | None,
        transcript: Transcript,
    ) -> None:
        self.ctx = ctx
        self.group = group
        self.session_key = session_key
        self.transcript = transcript
        # Only a session the client names can be found again after a reconnect.
        self.enabled = ctx.durable_transcripts and session_key is not None
        self.max_bytes = ctx.cfg.statestore.durable_transcript_max_bytes
        self.nbytes = 0
        self.resync = True  # the next delta is the whole conversation
        self.over = False  # over the bound: not kept until the conversation starts over

    def delta(
        self, sent: RequestSnapshot, output: Sequence[msgspec.Raw], response_id: str
    ) -> tuple[TranscriptDelta | None, bool]:
        """(the delta to append, whether to delete the list instead). Call after the
        socket's transcript recorded the turn."""
        if not self.enabled:
            return None, False
        starts = sent.previous_response_id is None
        if self.over and not starts:
            return None, False
        whole = self.resync or starts
        if whole:
            full = self.transcript.items if self.transcript.response_id == response_id else None
            if full is None:  # the socket's own transcript is over its cap
                return self._give_up()
            items = [item.raw for item in full]
            self.nbytes = 0
        else:
            items = [item.raw for item in sent.items]
            items.extend(output)
        delta = TranscriptDelta(None if whole else sent.previous_response_id, response_id, items)
        self.nbytes += delta.nbytes
        if self.nbytes > self.max_bytes:
            return self._give_up()
        self.resync = self.over = False
        return delta, False

    def _give_up(self) -> tuple[TranscriptDelta | None, bool]:
        dropped = not self.over
        self.over, self.resync, self.nbytes = True, True, 0
        return None, dropped

    def write_failed(self) -> None:
        """A binding (and its delta) did not reach the store: rewrite it all next time."""
        self.resync = True

    async def rebuild(self, previous_response_id: str) -> bool:
        """Restore this socket's transcript from the store; True when it now ends with
        ``previous_response_id``."""
        if not self.enabled or self.session_key is None:
            return False
        deltas = await self.ctx.store.load_transcript(self.group, self.session_key)
        items = chain_items(deltas, previous_response_id) if deltas else None
        if items is None or not self.transcript.seed(items, previous_response_id):
            self.ctx.metrics.recoveries.labels("durable_transcript", "unavailable").inc()
            return False
        self.ctx.metrics.recoveries.labels("durable_transcript", "rebuilt").inc()
        self.nbytes = self.transcript.nbytes
        self.resync = self.over = False  # the stored chain ends where this one does
        return True
