"""The binding writer: one socket's bindings written off the turn's path, one at a time, in
the order their turns ended, each as a child span of its own turn."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TelemetryConfig
from gateway.forward.binder import BindWriter, Retry
from gateway.tracing import Tracing
from statestore import BindOutcome, TurnBinding, open_store


def binding(n: int) -> TurnBinding:
    return TurnBinding(group="g", account_id="acct-0", response_id=f"resp_{n}", session_key="s")


class GatedStore:
    """Records bindings in write order; each write waits for the test to let it through."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.written: list[str] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.fail_on = fail_on

    def bind_turn_nowait(self, binding: TurnBinding) -> None:
        return None  # like Redis: every write is awaited

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        self.entered.set()
        await self.gate.wait()
        if binding.response_id == self.fail_on:
            raise RuntimeError("store bug")
        self.written.append(binding.response_id)
        return BindOutcome(ok=True)


async def test_submit_returns_at_once_and_flush_waits_for_the_write() -> None:
    store = GatedStore()
    writer = BindWriter(store)  # type: ignore[arg-type]
    writer.submit(binding(1))
    await store.entered.wait()
    assert writer.pending == 1
    assert store.written == []  # the write is in flight, the caller was not held
    store.gate.set()
    await writer.flush()
    assert store.written == ["resp_1"]
    assert writer.pending == 0


async def test_bindings_are_written_in_submit_order_one_at_a_time() -> None:
    store = GatedStore()
    busy: list[str] = []
    writer = BindWriter(
        store,  # type: ignore[arg-type]
        on_busy=lambda: busy.append("busy"),
        on_idle=lambda: busy.append("idle"),
    )
    for n in range(3):
        writer.submit(binding(n))
    await store.entered.wait()
    assert writer.pending == 3  # one being written, two queued
    store.gate.set()
    await writer.flush()
    assert store.written == ["resp_0", "resp_1", "resp_2"]
    assert busy == ["busy", "idle"]
    writer.submit(binding(3))
    await writer.flush()
    assert busy == ["busy", "idle", "busy", "idle"]


async def test_a_failing_write_is_logged_and_the_next_binding_still_lands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = GatedStore(fail_on="resp_1")
    store.gate.set()
    writer = BindWriter(store)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="gateway.binder"):
        writer.submit(binding(1))
        writer.submit(binding(2))
        await writer.flush()
    assert store.written == ["resp_2"]
    [record] = caplog.records
    assert record.__dict__["event"] == "bind_failed"
    assert record.__dict__["response_id"] == "resp_1"


async def test_flush_with_nothing_queued_returns() -> None:
    writer = BindWriter(open_store("memory://"))
    await writer.flush()
    assert writer.pending == 0


async def test_each_binding_is_a_child_span_of_the_turn_that_submitted_it() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(), "gw-1", exporter=exporter, env={})
    store = open_store("memory://")
    writer = BindWriter(store, tracing=tracing)
    with tracing.turn_span("chat", None) as turn:
        writer.submit(binding(1))
    await writer.flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    bind = spans["statestore.bind"]
    assert bind.parent is not None
    assert bind.parent.span_id == turn.get_span_context().span_id
    found = await store.lookup("g", response_id="resp_1", session_key="s")
    assert found.account_id == "acct-0" and found.session_last_response_id == "resp_1"
    tracing.shutdown()


async def test_an_in_process_store_is_written_at_submit_without_a_task() -> None:
    store = open_store("memory://")
    busy: list[str] = []
    writer = BindWriter(store, on_busy=lambda: busy.append("busy"))
    writer.submit(binding(1))
    assert writer.pending == 0 and busy == []  # done already: nothing queued, no task
    found = await store.lookup("g", response_id="resp_1", session_key="s")
    assert found.account_id == "acct-0" and found.session_last_response_id == "resp_1"


async def test_write_again_counts_as_work_and_reports_a_store_bug_as_its_error() -> None:
    store = GatedStore(fail_on="resp_1")
    store.gate.set()
    busy: list[str] = []
    writer = BindWriter(
        store,  # type: ignore[arg-type]
        on_busy=lambda: busy.append("busy"),
        on_idle=lambda: busy.append("idle"),
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def current() -> bool:
        return True

    retry = Retry(2, 0.01, 1.0, sleep=sleep)
    assert await writer.write_again(binding(1), current, retry) == (
        False,
        "RuntimeError: store bug",
    )
    assert busy == ["busy", "idle"] and slept == [0.01]
    assert await writer.write_again(binding(2), current, retry) == (True, None)
    assert store.written == ["resp_2"]
