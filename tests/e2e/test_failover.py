"""Accounts that run out: failover the client never sees (real gateway processes, the
simulator with per-account faults, a real Redis)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from sim.records import ConnectionRecord, RequestRecord
from tests.e2e.client import create, open_ws, read_turn, response_id, terminal, turn, user_message
from tests.e2e.harness import (
    SIM_KEYS,
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import RedisServer, unique_prefix

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = SIM_KEYS
ADMIN_KEY = "adm-failover-e2e"


@pytest.fixture(autouse=True)
def _reset(sim: SimProcess) -> None:
    sim.control.reset()


def two_account_config(sim: SimProcess, **openai_ws: object) -> dict[str, object]:
    return gateway_config(
        sim.base_url,
        accounts=2,
        overrides={"server": {"admin_key": ADMIN_KEY}, "openai_ws": dict(openai_ws)},
    )


@contextmanager
def gateway(sim: SimProcess, **openai_ws: object) -> Iterator[GatewayProcess]:
    with run_gateway(two_account_config(sim, **openai_ws)) as gw:
        yield gw


def accounts(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    reply = httpx.get(
        f"{gw.http_url}/admin/accounts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    reply.raise_for_status()
    return {a["id"]: a for a in reply.json()["accounts"]}


def requests_with(sim: SimProcess, text: str) -> list[RequestRecord]:
    """The generating requests whose frame mentions ``text``."""
    return [r for r in sim.control.log().requests if r.generate is not False and text in r.raw]


def dials(sim: SimProcess, key: str) -> list[ConnectionRecord]:
    return [c for c in sim.control.log().connections if c.account_key == key]


async def one_conversation(gw: GatewayProcess, text: str) -> list[dict[str, Any]]:
    ws = await open_ws(gw.ws_url, auth_headers())
    try:
        return await turn(ws, create(text))
    finally:
        await ws.close()


def assert_completed_cleanly(events: list[dict[str, Any]]) -> None:
    assert terminal(events)["type"] == "response.completed", events[-1]
    assert not [e for e in events if e.get("type") == "error"]


async def test_handshake_429_moves_new_conversations_to_b_until_a_cools_down(
    sim: SimProcess,
) -> None:
    with gateway(sim) as gw:
        rule = sim.control.add_fault(
            kind="handshake_status", status=429, retry_after=2, account_key=KEY_A, times=1000
        )
        for i in range(20):
            assert_completed_cleanly(await one_conversation(gw, f"conversation {i} of 20"))
        for i in range(20):
            (served,) = requests_with(sim, f"conversation {i} of 20")
            assert (served.account_key, served.outcome) == (KEY_B, "completed")
        refused = dials(sim, KEY_A)
        assert refused and all(c.handshake_status == 429 for c in refused)
        # No dial to a while it cools: one per 2 s at most (exactly one unless this
        # machine took longer than the cooldown for the 20 conversations).
        gaps = [b.opened_at - a.opened_at for a, b in itertools.pairwise(refused)]
        assert all(gap >= 2.0 - 0.05 for gap in gaps), gaps
        b_dials = len(dials(sim, KEY_B))
        (moved,) = requests_with(sim, "conversation 0 of 20")
        print(
            f"\n20 conversations, a refusing: dials to a {len(refused)}, to b {b_dials};"
            f" handshake 429 -> request on b {(moved.received_at - refused[0].opened_at) * 1e3:.1f} ms"
        )
        refused_at = refused[-1].opened_at

        # a answers again: new conversations keep landing on b until the 2 s are over.
        sim.control.remove_fault(rule)
        deadline = refused_at + 6.0
        n = 0
        while len(dials(sim, KEY_A)) == len(refused):
            assert time.time() < deadline, "a got no traffic after its cooldown"
            assert_completed_cleanly(await one_conversation(gw, f"after cooldown [{n}]"))
            n += 1
            await asyncio.sleep(0.05)  # pacing only: the loop ends on a's next dial
        second = dials(sim, KEY_A)[len(refused)]
        assert second.handshake_status == 101
        assert second.opened_at - refused_at >= 2.0 - 0.05  # not before the cooldown ended
        (back,) = requests_with(sim, f"after cooldown [{n - 1}]")
        assert (back.account_key, back.outcome) == (KEY_A, "completed")
        for i in range(n - 1):
            (cooling,) = requests_with(sim, f"after cooldown [{i}]")
            assert cooling.account_key == KEY_B


async def test_error_429_before_any_event_replays_the_whole_conversation_on_b(
    sim: SimProcess,
) -> None:
    with gateway(sim) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            first = await turn(ws, create("remember the word heliotrope"))
            (on_a,) = requests_with(sim, "heliotrope")
            assert on_a.account_key == KEY_A
            sim.control.add_fault(
                kind="error_event",
                after_events=0,
                status=429,
                code="rate_limit_exceeded",
                message="Rate limit reached for requests. Please try again in 20s.",
                account_key=KEY_A,
                times=1,
            )
            await ws.send(
                create(
                    previous_response_id=response_id(first),
                    items=[user_message("what was the word")],
                )
            )
            first_event = json.loads(await ws.recv())
            seen_at = time.time()  # the first event from b, at the client
            second = [first_event, *await read_turn(ws)]
            third = await turn(
                ws,
                create(previous_response_id=response_id(second), items=[user_message("thanks")]),
            )
        finally:
            await ws.close()

        assert_completed_cleanly(second)  # the client saw only the completed turn
        assert second[0]["type"] == "response.created"
        log = sim.control.log().requests
        refused = [r for r in log if r.outcome.startswith("error:") and r.account_key == KEY_A]
        assert len(refused) == 1 and refused[0].events_sent <= 1  # only the error event
        (replayed,) = [r for r in log if "what was the word" in r.raw and r.account_key == KEY_B]
        body = replayed.body()
        assert body.get("previous_response_id") is None  # b never saw the first response
        texts = json.dumps(body["input"])
        assert "heliotrope" in texts and "what was the word" in texts
        assert [i.get("role") for i in body["input"] if i.get("type") == "message"] == [
            "user",
            "assistant",
            "user",
        ]
        assert replayed.outcome == "completed"
        (later,) = [r for r in log if '"thanks"' in r.raw]
        assert later.account_key == KEY_B  # the conversation stays on b
        assert later.body().get("previous_response_id") == response_id(second)
        assert_completed_cleanly(third)
        b_dials = [c for c in dials(sim, KEY_B) if c.opened_at >= refused[0].received_at]
        error_at = refused[0].finished_at or refused[0].received_at
        latency_s = seen_at - error_at
        print(
            f"\nfailover: 429 -> request on b {(replayed.received_at - error_at) * 1000:.1f} ms,"
            f" 429 -> first event from b at the client {latency_s * 1000:.1f} ms;"
            f" dials for the failed-over turn: a 0 (pooled), b {len(b_dials)}"
        )
        assert len(b_dials) == 1
        assert latency_s < 1.0


async def test_a_cooldown_on_one_instance_keeps_the_other_off_the_account(
    sim: SimProcess, redis_server: RedisServer
) -> None:
    shared = {"url": redis_server.url, "key_prefix": unique_prefix("failover")}
    configs = []
    for name in ("gw-one", "gw-two"):
        doc = two_account_config(sim, account_sync_interval_s=0.1)
        doc["statestore"] = shared
        doc["server"] = {**doc["server"], "instance_id": name}  # type: ignore[dict-item]
        configs.append(doc)
    with run_gateway(configs[0]) as one, run_gateway(configs[1]) as two:
        # One refusal only: a dial to a after it would succeed.
        sim.control.add_fault(
            kind="handshake_status", status=429, retry_after=5, account_key=KEY_A, times=1
        )
        assert_completed_cleanly(await one_conversation(one, "on instance one"))
        (refused,) = dials(sim, KEY_A)
        assert refused.handshake_status == 429
        deadline = time.time() + 2.0
        while accounts(two)["acct-a"]["state"] != "cooling":
            assert time.time() < deadline, "instance two never learned of a's cooldown"
            await asyncio.sleep(0.02)
        for i in range(10):
            assert_completed_cleanly(await one_conversation(two, f"on instance two {i}"))
            (served,) = requests_with(sim, f"on instance two {i}")
            assert served.account_key == KEY_B
        assert time.time() < refused.opened_at + 5.0, "the cooldown ended before the check"
        assert len(dials(sim, KEY_A)) == 1  # no dial to a from either instance
        # The control: once the cooldown is over, instance two sends new work to a again.
        deadline = refused.opened_at + 9.0
        while accounts(two)["acct-a"]["state"] != "healthy":
            assert time.time() < deadline, "a never became healthy on instance two"
            await asyncio.sleep(0.05)
        assert_completed_cleanly(await one_conversation(two, "after the cooldown"))
        (served,) = requests_with(sim, "after the cooldown")
        assert served.account_key == KEY_A


async def test_every_account_limited_gives_one_error_naming_the_wait(sim: SimProcess) -> None:
    with gateway(sim) as gw:
        for key in (KEY_A, KEY_B):
            sim.control.add_fault(
                kind="handshake_status", status=429, retry_after=3, account_key=key, times=1000
            )
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            started = time.monotonic()
            first = await turn(ws, create("anyone there"), timeout=10)
            second = await turn(ws, create("anyone there now"), timeout=10)
            elapsed = time.monotonic() - started
        finally:
            await ws.close()
        for events in (first, second):
            (error,) = events  # one event per turn, nothing before it
            assert error["type"] == "error" and error["status"] == 429
            assert error["error"]["code"] == "rate_limit_exceeded"
            wait = int(error["headers"]["retry-after"])
            assert 1 <= wait <= 3
            assert f"retry after {wait} s" in error["error"]["message"]
        assert elapsed < 2.0  # no hang, no waiting out the cooldown inside the turn
        # One refused dial per account for the first turn; none at all for the second.
        log = sim.control.log()
        assert sorted(c.account_key for c in log.connections) == [KEY_A, KEY_B]
        assert all(c.handshake_status == 429 for c in log.connections)
        assert [r for r in log.requests if r.generate is not False] == []
        states = accounts(gw)
        assert {states["acct-a"]["state"], states["acct-b"]["state"]} == {"cooling"}
