"""gateway.logs: JSON and text lines with fields, correlation ids, the turn line, payload sampling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from gateway import logs
from gateway.config import parse_config
from gateway.logs import (
    JsonFormatter,
    PayloadSampler,
    TextFormatter,
    TurnLogFacts,
    bind_log_fields,
    log_fields,
    log_turn,
    redact_url,
    reset_log_fields,
    setup_logging,
    startup_summary,
)


def make_record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "gateway.test", logging.WARNING, __file__, 10, "bind failed for %s", ("resp_1",), None
    )
    record.__dict__.update(extra)
    return record


def test_json_formatter_emits_one_json_object_with_extras() -> None:
    record = make_record(
        group="default", account_id="acct-a", attempt=2, ratio=0.5, ok=True, none=None
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "gateway.test"
    assert out["msg"] == "bind failed for resp_1"
    assert out["group"] == "default"
    assert out["account_id"] == "acct-a"
    assert out["attempt"] == 2 and out["ratio"] == 0.5 and out["ok"] is True
    assert out["none"] is None
    assert isinstance(out["ts"], float)
    # standard LogRecord attributes are not dumped
    for noise in ("args", "pathname", "lineno", "levelno", "msecs", "thread", "processName"):
        assert noise not in out


def test_json_formatter_stringifies_other_values_and_skips_private() -> None:
    out = json.loads(JsonFormatter().format(make_record(ids=["a", "b"], _private=1)))
    assert out["ids"] == ["a", "b"]
    assert "_private" not in out


def test_json_formatter_includes_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("g", logging.ERROR, __file__, 1, "failed", (), exc_info)
    out = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["exc"]


def test_json_formatter_through_a_logger_with_extra() -> None:
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.test.json")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("turn done", extra={"event": "turn_done", "response_id": "resp_9"})
    finally:
        logger.removeHandler(handler)
    (line,) = lines
    out = json.loads(line)
    assert out["msg"] == "turn done" and out["event"] == "turn_done"
    assert out["response_id"] == "resp_9"


class CountingPayload:
    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return b"x" * self.size


def log_if_sampled(sampler: PayloadSampler, payload: CountingPayload) -> str | None:
    """The call pattern the gateway uses: render only what sample() picked."""
    return sampler.render(payload) if sampler.sample() else None


def test_rate_zero_never_serializes() -> None:
    sampler = PayloadSampler(rate=0.0, max_bytes=2048, rng=lambda: 0.0)
    payload = CountingPayload(1 << 20)
    results = [log_if_sampled(sampler, payload) for _ in range(1000)]
    assert results == [None] * 1000
    assert payload.calls == 0
    assert sampler.serialized == 0


def test_rate_one_renders_a_truncated_payload() -> None:
    sampler = PayloadSampler(rate=1.0, max_bytes=2048)
    payload = CountingPayload(1 << 20)
    text = log_if_sampled(sampler, payload)
    assert text is not None
    assert payload.calls == 1 and sampler.serialized == 1
    assert text.startswith("x" * 2048)
    assert text[2048:] == f"...[truncated {(1 << 20) - 2048} bytes]"


def test_rate_is_a_fraction_of_requests() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.95, 0.1])
    sampler = PayloadSampler(rate=0.1, max_bytes=10, rng=lambda: next(draws))
    assert [sampler.sample() for _ in range(5)] == [True, False, True, False, False]


def test_small_payloads_are_not_marked_truncated() -> None:
    sampler = PayloadSampler(rate=1.0, max_bytes=64)
    assert sampler.render(b'{"type":"response.create"}') == '{"type":"response.create"}'
    assert sampler.render("x" * 64) == "x" * 64
    assert sampler.serialized == 2


def test_truncation_inside_a_multibyte_character_stays_valid_text() -> None:
    sampler = PayloadSampler(rate=1.0, max_bytes=3)
    text = sampler.render("héllo")  # "h" + 2-byte "é" fill 3 bytes exactly
    assert text.startswith("hé") and text.endswith("...[truncated 3 bytes]")
    cut = sampler.render("éé")  # 4 bytes; the cap falls inside the second "é"
    cut.encode()  # must be encodable text
    assert cut.startswith("é") and "truncated 1 bytes" in cut


# -- formats -----------------------------------------------------------------------------
class ListHandler(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@contextlib.contextmanager
def capture(name: str, formatter: logging.Formatter) -> Iterator[ListHandler]:
    handler = ListHandler(formatter)
    logger = logging.getLogger(name)
    old = (logger.propagate, logger.level)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = old


def test_json_has_no_ansi_colour_copy_of_uvicorn_messages() -> None:
    with capture("uvicorn.error", JsonFormatter()) as h:
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 7, extra={"color_message": "\x1b[36m%d\x1b[0m"}
        )
    (line,) = h.lines
    assert "\x1b" not in line and "\\u001b" not in line
    assert json.loads(line)["msg"] == "Started server process [7]"
    assert "color_message" not in json.loads(line)


def test_text_format_keeps_every_field() -> None:
    with capture("gateway.test.text", TextFormatter()) as h, log_fields(session="s-1"):
        logging.getLogger("gateway.test.text").info(
            "turn completed", extra={"account": "acct-a", "ttft_ms": 12.5, "note": "two words"}
        )
    (line,) = h.lines
    assert "INFO gateway.test.text turn completed" in line
    for pair in ("session=s-1", "account=acct-a", "ttft_ms=12.5", 'note="two words"'):
        assert pair in line


def test_setup_logging_routes_uvicorn_through_the_chosen_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("info", "json")
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running", extra={"color_message": "\x1b[1m"}
        )
        setup_logging("warning", "text")
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, TextFormatter)
    finally:
        root.handlers[:], root.level = saved
    out = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert out["logger"] == "uvicorn.error" and "color_message" not in out


# -- correlation ids -------------------------------------------------------------------------
async def test_context_fields_follow_tasks_and_are_reset() -> None:
    with capture("gateway.test.ctx", JsonFormatter()) as h:
        logger = logging.getLogger("gateway.test.ctx")
        token = bind_log_fields(session="sess-9", client="ci", empty="", none=None)

        async def inner() -> None:
            with log_fields(response_id="resp_1"):
                logger.info("inside")
            logger.info("after inner")

        await asyncio.create_task(inner())
        reset_log_fields(token)
        logger.info("outside")
    inside, after, outside = (json.loads(line) for line in h.lines)
    assert inside["session"] == "sess-9" and inside["client"] == "ci"
    assert inside["response_id"] == "resp_1"
    assert "empty" not in inside and "none" not in inside
    assert after["session"] == "sess-9" and "response_id" not in after
    assert "session" not in outside
    # the record carries the fields, so a handler that formats later still has them
    assert h.records[0].log_context == {
        "session": "sess-9",
        "client": "ci",
        "response_id": "resp_1",
    }  # type: ignore[attr-defined]


def test_extra_fields_win_over_context_fields() -> None:
    with capture("gateway.test.win", JsonFormatter()) as h, log_fields(account="ctx"):
        logging.getLogger("gateway.test.win").info("x", extra={"account": "extra"})
    assert json.loads(h.lines[0])["account"] == "extra"


# -- the turn line -----------------------------------------------------------------------------
@dataclass
class FakeError:
    code: str | None


@dataclass
class FakeTracker:
    response_id: str | None = "resp_42"
    model: str | None = "gpt-test"
    input_tokens: int = 11
    output_tokens: int = 7
    ttft_s: float | None = 0.0125
    events: int = 9
    error: FakeError | None = None


def test_turn_line_has_every_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    # The line's duration is read from the logs module's clock: pin it.
    monkeypatch.setattr(logs, "time", SimpleNamespace(perf_counter=lambda: 100.25))
    facts = TurnLogFacts(
        "acct-b", FakeTracker(), retries=2, fallback="closed_policy", recovery="align"
    )
    with (
        capture("gateway.turn", JsonFormatter()) as h,
        log_fields(session="sess-1", client="dev"),
    ):
        log_turn("ctx_pool", "completed", facts, started=100.0)
    (line,) = h.lines
    out = json.loads(line)
    assert out["level"] == "info" and out["event"] == "turn" and out["msg"] == "turn completed"
    assert out["session"] == "sess-1" and out["client"] == "dev"
    assert out["mode"] == "ctx_pool" and out["outcome"] == "completed"
    assert out["account"] == "acct-b" and out["response_id"] == "resp_42"
    assert out["model"] == "gpt-test"
    assert out["retries"] == 2 and out["fallback"] == "closed_policy" and out["recovery"] == "align"
    assert out["ttft_ms"] == 12.5
    assert out["duration_ms"] == 250.0
    assert out["input_tokens"] == 11 and out["output_tokens"] == 7 and out["events"] == 9
    assert out["drained_after_disconnect"] is False
    assert "error_code" not in out


def test_failed_turn_line_names_the_error_and_a_turn_without_upstream_has_no_ttft() -> None:
    with capture("gateway.turn", JsonFormatter()) as h:
        log_turn(
            "ctx_pool",
            "error",
            TurnLogFacts("a", FakeTracker(error=FakeError("server_error"), ttft_s=None)),
            time.perf_counter(),
        )
        log_turn("ctx_pool", "no_account", TurnLogFacts(), time.perf_counter())
    failed, no_account = (json.loads(line) for line in h.lines)
    assert failed["outcome"] == "error" and failed["error_code"] == "server_error"
    assert failed["ttft_ms"] is None
    assert no_account["outcome"] == "no_account" and "response_id" not in no_account


def test_the_turn_line_written_directly_is_the_line_the_formatter_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the gateway's own JSON handler as the only destination the turn line skips the
    logging machinery; it must come out exactly as JsonFormatter would write it."""
    import io

    monkeypatch.setattr(logs, "time", SimpleNamespace(perf_counter=lambda: 100.25, time=time.time))
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    facts = TurnLogFacts("acct-b", FakeTracker(error=FakeError("x")), retries=1)
    made: list[logging.LogRecord] = []
    monkeypatch.setattr(logging.Logger, "handle", lambda self, record: made.append(record))
    try:
        setup_logging("info", "json")
        with log_fields(session="sess-1", client="dev"):
            log_turn("ctx_pool", "error", facts, started=100.0)
        assert made == []  # no LogRecord: the line went straight to the stream
        with (
            capture("gateway.turn", JsonFormatter()) as h,
            log_fields(session="sess-1", client="dev"),
        ):
            log_turn("ctx_pool", "error", facts, started=100.0)  # another handler: the usual way
    finally:
        root.handlers[:], root.level = saved
    direct = json.loads(stream.getvalue())
    usual = json.loads(JsonFormatter().format(made[0])) if made else json.loads(h.lines[0])
    assert direct.pop("ts") > 0 and usual.pop("ts") > 0
    assert direct == usual
    assert direct["msg"] == "turn error" and direct["session"] == "sess-1"
    assert direct["error_code"] == "x" and direct["duration_ms"] == 250.0


def test_turn_line_is_skipped_below_info() -> None:
    with capture("gateway.turn", JsonFormatter()) as h:
        logging.getLogger("gateway.turn").setLevel(logging.WARNING)
        log_turn("ctx_pool", "completed", TurnLogFacts(), time.perf_counter())
    assert h.lines == []


# -- startup summary -----------------------------------------------------------------------------
def test_startup_summary_has_no_secrets() -> None:
    cfg = parse_config(
        '[[clients]]\nkey = "sk-client-secret"\ngroup = "g1"\n'
        '[[accounts]]\nid = "a1"\ngroup = "g1"\napi_key = "sk-upstream-secret"\n'
        'extra_headers = {"x-token" = "hdr-secret"}\n'
        '[[accounts]]\nid = "a2"\ngroup = "g1"\nmax_conns = 4\n'
        '[statestore]\nurl = "redis://user:redis-secret@redis:6379/0"\n',
        env={},
    )
    summary = startup_summary(cfg)
    text = json.dumps(summary)
    for secret in ("sk-client-secret", "sk-upstream-secret", "hdr-secret", "redis-secret"):
        assert secret not in text
    assert summary["accounts_by_group"] == {"g1": ["a1", "a2"]}
    assert summary["client_keys_by_group"] == {"g1": 1}
    assert summary["statestore"] == "redis://user:***@redis:6379/0"
    assert summary["mode"] == "ctx_pool" and summary["websocket"] == "on (v2)"
    limits = summary["limits"]
    assert isinstance(limits, dict) and limits["max_conns_per_account"] == {"a1": 128, "a2": 4}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory://", "memory://"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("rediss://:pw@r.example:6380/1", "rediss://:***@r.example:6380/1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
