"""Operating the gateway: ``--workers 2`` gives one correct scrape and distinct
connection ids; after start and one turn, /metrics has every series the alert rules use."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.client import create, open_ws, terminal, turn
from tests.e2e.harness import (
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import REPO_ROOT

pytestmark = pytest.mark.e2e

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"


@pytest.fixture(autouse=True)
def _reset(sim: SimProcess) -> None:
    sim.control.reset()


def scrape(gateway: GatewayProcess) -> str:
    return httpx.get(f"{gateway.http_url}/metrics", timeout=10).text


def sample(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the scrape")


def turn_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in gateway.proc.output().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("event") == "turn":
                lines.append(line)
    return lines


def worker_of(conn_id: str) -> str:
    return conn_id.split(":", 1)[0]


@pytest.fixture
def two_workers(sim: SimProcess) -> Iterator[GatewayProcess]:
    with run_gateway(gateway_config(sim.base_url), workers=2) as gw:
        yield gw


async def one_turn_on_a_new_socket(gateway: GatewayProcess, n: int) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers(session_id=f"sess-workers-{n}"))
    try:
        events = await turn(ws, create(f"hello {n}"))
        assert terminal(events)["type"] == "response.completed"
    finally:
        await ws.close()


async def test_two_workers_one_scrape_sums_both_and_connection_ids_differ(
    two_workers: GatewayProcess,
) -> None:
    # Sockets land on whichever worker accepts first: keep opening (in small concurrent
    # batches) until both workers have served turns, with a deadline.
    opened = 0
    deadline = time.monotonic() + 60
    while True:
        batch = [one_turn_on_a_new_socket(two_workers, opened + i) for i in range(4)]
        await asyncio.gather(*batch)
        opened += len(batch)
        lines = turn_lines(two_workers)
        workers = {worker_of(line["conn"]) for line in lines}
        if len(lines) == opened and len(workers) == 2:
            break
        assert time.monotonic() < deadline, f"turn lines {len(lines)}/{opened}, workers {workers}"
        await asyncio.sleep(0.05)
    metrics = scrape(two_workers)
    per_worker = {w: sum(1 for x in lines if worker_of(x["conn"]) == w) for w in workers}
    assert all(count > 0 for count in per_worker.values())
    assert sample(metrics, 'gateway_handshakes_total{result="accepted"}') == opened
    assert sample(metrics, 'gateway_turns_total{mode="ctx_pool",outcome="completed"}') == opened
    assert all(re.fullmatch(r"gw-test/w\d+", w) for w in workers), workers
    # Each worker numbers its connections from 1: the worker part keeps the ids apart.
    ids = {w: {line["conn"] for line in lines if worker_of(line["conn"]) == w} for w in workers}
    first, second = ids.values()
    assert first.isdisjoint(second)
    seqs = [{c.rsplit(":", 1)[1] for c in group} for group in ids.values()]
    assert "1" in seqs[0] and "1" in seqs[1]


# -- alert rules against a live scrape ------------------------------------------------------
def alert_series() -> set[str]:
    """Every gateway_* metric name the shipped alert rules use."""
    doc = yaml.safe_load(ALERTS.read_text())
    names: set[str] = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            names.update(re.findall(r"\b(gateway_[a-z_]+)", rule["expr"]))
    return names


def test_after_start_and_one_turn_every_alert_series_exists(sim: SimProcess) -> None:
    with run_gateway(gateway_config(sim.base_url)) as gw:
        asyncio.run(one_turn_on_a_new_socket(gw, 0))
        metrics = scrape(gw)
    present = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line[:1] != "#"}
    wanted = alert_series()
    assert len(wanted) >= 6
    assert wanted <= present, sorted(wanted - present)
    # a normal turn is not a fallback, and the fallback series exist at zero
    assert sample(metrics, 'gateway_http_fallbacks_total{reason="closed_policy"}') == 0
    assert 'reason="client_http"' not in metrics
    assert 'state="total"' not in metrics
    assert "process_resident_memory_bytes" in metrics and "python_info" in metrics
    assert re.search(r'gateway_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0', metrics)


def _log_lines(gateway: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return [
        line
        for raw in gateway.proc.output().splitlines()
        if raw.startswith("{") and (line := json.loads(raw)).get("event") == event
    ]


@pytest.mark.parametrize("trusted", [True, False])
def test_denied_handshake_names_the_forwarded_client_only_when_trusted(
    sim: SimProcess, trusted: bool
) -> None:
    overrides: dict[str, dict[str, object]] = {"server": {"trust_forwarded_headers": trusted}}
    with run_gateway(gateway_config(sim.base_url, overrides=overrides)) as gw:
        reply = httpx.get(
            f"{gw.http_url}/v1/responses",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Authorization": "Bearer wrong",
                "X-Forwarded-For": "203.0.113.7",
            },
            timeout=10,
        )
        assert reply.status_code == 401
        deadline = time.monotonic() + 10
        while not (lines := _log_lines(gw, "handshake_denied")):
            assert time.monotonic() < deadline, gw.proc.output()
            time.sleep(0.02)
    (line,) = lines
    assert line["reason"] == "unauthorized" and line["status"] == 401
    assert line["remote"] == ("203.0.113.7" if trusted else "127.0.0.1")
