"""The per-socket transcript: what it keeps, what a turn adds, and its byte caps."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from gateway.context import TranscriptBudget
from gateway.transcript import Transcript
from normalizer import decode_request


def request(items: list[dict[str, Any]], prev: str | None = None) -> Any:
    body: dict[str, Any] = {"type": "response.create", "input": items}
    if prev is not None:
        body["previous_response_id"] = prev
    return decode_request(json.dumps(body, separators=(",", ":")))


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def reply(text: str) -> msgspec.Raw:
    item = {"type": "message", "role": "assistant", "content": text}
    return msgspec.Raw(json.dumps(item, separators=(",", ":")).encode())


def texts(transcript: Transcript) -> list[str]:
    assert transcript.items is not None
    return [json.loads(bytes(item.raw))["content"] for item in transcript.items]


def size(*parts: Any) -> int:
    return sum(len(json.dumps(p, separators=(",", ":"))) for p in parts)


def test_a_continuation_appends_and_a_new_conversation_replaces() -> None:
    budget = TranscriptBudget(10_000)
    transcript = Transcript(budget, 5_000)
    transcript.record(request([user("a")]), [reply("b")], "resp_1")
    transcript.record(request([user("c")], prev="resp_1"), [reply("d")], "resp_2")
    assert texts(transcript) == ["a", "b", "c", "d"]
    assert transcript.covers("resp_2") and not transcript.covers("resp_1")
    expected = size(user("a"), user("c")) + sum(len(bytes(reply(t))) for t in ("b", "d"))
    assert transcript.nbytes == expected == budget.used

    transcript.record(request([user("x")]), [reply("y")], "resp_9")
    assert texts(transcript) == ["x", "y"]
    assert transcript.nbytes == budget.used == size(user("x")) + len(bytes(reply("y")))


def test_a_continuation_of_something_else_drops_the_transcript() -> None:
    budget = TranscriptBudget(10_000)
    transcript = Transcript(budget, 5_000)
    transcript.record(request([user("a")]), [reply("b")], "resp_1")
    transcript.record(request([user("c")], prev="resp_other"), [reply("d")], "resp_2")
    assert transcript.items is None and not transcript.covers("resp_2")
    assert budget.used == 0


def test_a_view_handed_out_keeps_what_it_saw_when_the_transcript_starts_over() -> None:
    transcript = Transcript(TranscriptBudget(10_000), 5_000)
    transcript.record(request([user("a")]), [reply("b")], "resp_1")
    seen = transcript.items
    transcript.record(request([user("x")]), [reply("y")], "resp_2")
    assert seen is not None
    assert [json.loads(bytes(i.raw))["content"] for i in seen] == ["a", "b"]


def test_over_the_socket_cap_it_stops_keeping_until_seeded() -> None:
    budget = TranscriptBudget(100_000)
    transcript = Transcript(budget, 300)
    transcript.record(request([user("a" * 100)]), [reply("b" * 100)], "resp_1")
    assert transcript.covers("resp_1")
    transcript.record(request([user("c" * 100)], prev="resp_1"), [reply("d")], "resp_2")
    assert transcript.items is None and transcript.overflowed and budget.used == 0
    transcript.record(request([user("e")]), [reply("f")], "resp_3")  # stays off
    assert transcript.items is None

    assert transcript.seed([msgspec.Raw(json.dumps(user("g")).encode())], "resp_7")
    assert texts(transcript) == ["g"] and not transcript.overflowed


def test_the_process_budget_is_shared_and_given_back() -> None:
    budget = TranscriptBudget(250)
    first, second = Transcript(budget, 10_000), Transcript(budget, 10_000)
    first.record(request([user("a" * 100)]), [reply("b")], "resp_1")
    taken = budget.used
    second.record(request([user("c" * 100)]), [reply("d" * 100)], "resp_2")
    assert second.items is None and not second.overflowed and budget.used == taken
    first.close()
    assert budget.used == 0
