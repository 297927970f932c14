"""The command line: any key without --keys, --timestamps stamps every event last."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.sim.helpers import frame, running_sim


async def test_any_key_and_timestamps() -> None:
    with running_sim("--timestamps") as sim:
        url = f"ws://127.0.0.1:{sim.port}/v1/responses"
        async with connect(url, additional_headers={"Authorization": "Bearer anything"}) as ws:
            await ws.send(frame("stamp me"))
            raw_frames: list[str] = []
            events: list[dict[str, object]] = []
            while not events or events[-1]["type"] != "response.completed":
                raw = await ws.recv()
                assert isinstance(raw, str)
                raw_frames.append(raw)
                events.append(json.loads(raw))
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers={"Authorization": "Bearer "})
        assert refused.value.response.status_code == 401
        assert sim.control.log().connections[0].account_key == "anything"
    assert all(isinstance(e["sim_t_ns"], int) for e in events)
    assert all(list(e)[-1] == "sim_t_ns" for e in events)
    assert all(r.rfind('"sim_t_ns":') > r.rfind('"sequence_number"') for r in raw_frames)
