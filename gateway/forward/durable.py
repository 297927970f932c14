"""One client socket's side of the durable transcript.

After each turn the socket says what to append to the session's list in the state store
(the same round trip as the turn's binding): the input it sent and the output it got, or
the whole conversation when it starts one, when it is this socket's first write, or after
a write that failed (so a missing delta never leaves a broken chain behind). A
conversation over ``durable_transcript_max_bytes`` stops being kept (its list is deleted)
until it starts over. When a ``store: false`` continuation arrives on an instance that
has neither the upstream socket nor the transcript, ``rebuild`` restores the transcript
from the list if, and only if, the chain ends exactly at the previous response.

A failed write is made good by the socket's next turn. When there is none (the socket
closes: the client left, or the instance drains), ``write_on_close`` writes the whole
conversation once more with the last turn's binding: a few tries within a short budget,
and only while no other instance has moved the session on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec

from gateway.context import GatewayContext
from gateway.forward.binder import BindWriter, Retry
from gateway.transcript import Transcript
from normalizer import RequestSnapshot
from statestore import TranscriptDelta, TurnBinding, chain_items

log = logging.getLogger("gateway.durable")

# The write on close: a few tries, a short backoff, and at most a second (half the drain
# timeout when that is shorter), so it never eats the drain's grace.
CLOSE_ATTEMPTS = 3
CLOSE_BACKOFF_S = 0.05
CLOSE_BUDGET_S = 1.0


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
        drain_s = ctx.cfg.server.drain_timeout_s
        self.close_retry = Retry(CLOSE_ATTEMPTS, CLOSE_BACKOFF_S, min(CLOSE_BUDGET_S, drain_s / 2))

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
        if self.resync or starts:
            delta = self._whole(response_id)
            if delta is None:  # the socket's own transcript is over its cap
                return self._give_up()
            self.nbytes = 0
        else:
            items = [item.raw for item in sent.items]
            items.extend(output)
            delta = TranscriptDelta(sent.previous_response_id, response_id, items)
        self.nbytes += delta.nbytes
        if self.nbytes > self.max_bytes:
            return self._give_up()
        self.resync = self.over = False
        return delta, False

    def _whole(self, response_id: str) -> TranscriptDelta | None:
        """The whole conversation as one delta, when the socket's transcript ends at
        ``response_id``."""
        items = self.transcript.items
        if items is None or self.transcript.response_id != response_id:
            return None
        return TranscriptDelta(None, response_id, [item.raw for item in items])

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

    def unsaved(self, last: TurnBinding | None) -> TurnBinding | None:
        """``last`` (the socket's newest binding) carrying the whole conversation, when a
        write failed since the last whole one and nothing made it good; else None."""
        if not self.enabled or not self.resync or self.over or last is None:
            return None
        delta = self._whole(last.response_id)
        if delta is None or delta.nbytes > self.max_bytes:  # none kept for that turn
            return None
        return msgspec.structs.replace(last, transcript=delta, drop_transcript=False)

    async def write_on_close(self, writer: BindWriter) -> None:
        """After the socket's last binding was written or failed (``writer.flush``): if the
        durable chain is left short, write it whole once more (see the module doc)."""
        binding = self.unsaved(writer.last)
        if binding is None:
            return
        response_id = binding.response_id

        async def current() -> bool | None:
            # Another instance may have taken the conversation over since: never reset the
            # list under it. No session at all (a Redis that lost its data) is nobody's.
            # None: the store did not answer (that try is spent).
            found = await self.ctx.store.lookup(
                self.group, response_id=None, session_key=self.session_key
            )
            if found.degraded:
                return None
            return found.session_last_response_id in (None, response_id)

        written, error = await writer.write_again(binding, current, self.close_retry)
        fields = {"response_id": response_id, "session_key": self.session_key}
        if written:
            self.resync = False
            log.info(
                "durable transcript written on close",
                extra={"event": "durable_written_on_close", **fields},
            )
        elif error is None:
            log.info(
                "durable transcript left to the instance that took the session over",
                extra={"event": "durable_superseded_on_close", **fields},
            )
        else:
            log.warning(
                "durable transcript lost on close response_id=%s: %s",
                response_id,
                error,
                extra={"event": "durable_lost_on_close", "error": error, **fields},
            )
