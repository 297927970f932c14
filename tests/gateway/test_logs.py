"""gateway.logs: JSON log lines with extra fields; payload logging sampled and truncated (R-25)."""

from __future__ import annotations

import json
import logging
import sys

from gateway.logs import JsonFormatter, PayloadSampler


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
