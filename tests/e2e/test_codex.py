"""Real-client acceptance: the Codex CLI 0.169.0 binary works through the gateway.

Every test runs one scenario in its own loopback-only namespace (see codex_harness):
the simulator, the gateway and Codex itself, all real processes. The ``direct`` tests
point Codex at the simulator with no gateway; they prove the simulator speaks the
protocol the way the real client expects, so the gateway tests mean something.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import codex_harness as ch

pytestmark = [pytest.mark.e2e, pytest.mark.codex, pytest.mark.timeout(300)]

CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'
# What Codex prints on stderr when it retries a stream or gives up on WebSockets.
RETRY_MARKERS = ("retrying", "Reconnecting", "Falling back")


@pytest.fixture(scope="session")
def codex_binary() -> Iterator[str]:
    """The pinned Codex binary, installed on first use; skip only when no namespace."""
    problem = ch.namespace_problem()
    if problem is not None:
        pytest.skip(f"cannot isolate Codex on loopback: {problem}")
    ch.RUNS_DIR.mkdir(parents=True, exist_ok=True)
    # xdist workers share .cache/codex: one installer at a time.
    with open(ch.RUNS_DIR.parent / "codex-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            ["bash", str(ch.INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600
        )
    assert done.returncode == 0, f"install-codex.sh failed:\n{done.stderr[-4000:]}"
    path = done.stdout.strip().splitlines()[-1]
    assert path == str(ch.CODEX_BINARY)
    yield path


def run(codex_binary: str, **scenario: Any) -> dict[str, Any]:
    return ch.run_scenario(scenario)


# ------------------------------------------------------------------ log helpers


def requests(result: dict[str, Any], transport: str = "ws") -> list[dict[str, Any]]:
    log = result["sim_log"]
    return [r for r in log["requests"] if r["transport"] == transport]


def body(req: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(req["raw"])
    return parsed


def ws_connections(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["sim_log"]["connections"] if c.get("handshake_status") == 101]


def item_types(req_body: dict[str, Any]) -> list[str]:
    return [str(i.get("type")) for i in req_body.get("input", [])]


def assert_clean_success(result: dict[str, Any], step: int = -1) -> dict[str, Any]:
    """Codex exited 0 and never retried nor fell back (what the user would notice)."""
    s = result["steps"][step]
    why = ch.describe(result)
    assert s["exit_code"] == 0, why
    for marker in RETRY_MARKERS:
        assert marker not in s["stderr"], f"{marker!r} in Codex stderr\n{why}"
    assert "ERROR" not in s["stdout"], why
    return s  # type: ignore[no-any-return]


# ------------------------------------------- direct: Codex -> simulator (sim fidelity)


def test_direct_text_turn(codex_binary: str) -> None:
    result = run(codex_binary, mode="direct", steps=[{"prompt": "say hello"}])
    step = assert_clean_success(result)
    reqs = requests(result)
    assert [body(r).get("generate") for r in reqs] == [False, None]
    warm, real = (body(r) for r in reqs)
    assert real["previous_response_id"] == reqs[0]["response_id"]
    assert "say hello" in json.dumps(real["input"])
    assert reqs[1]["response_text"] and reqs[1]["response_text"] in step["stdout"]
    assert len(ws_connections(result)) == 1
    assert requests(result, "http") == []
    del warm


def test_direct_tool_loop(codex_binary: str) -> None:
    result = run(codex_binary, mode="direct", steps=[{"prompt": f"run it {CALL}"}])
    assert_clean_success(result)
    reqs = requests(result)
    assert len(reqs) == 3  # warm-up, the prompt, the tool output
    follow_up = body(reqs[2])
    assert follow_up["previous_response_id"] == reqs[1]["response_id"]
    assert item_types(follow_up) == ["function_call_output"]
    assert "ok" in follow_up["input"][0]["output"]
    assert len({r["conn_id"] for r in reqs}) == 1


# ---------------------------------------------------------- through the gateway


def test_text_turn(codex_binary: str) -> None:
    """(a) warm-up then the chained request, on one upstream socket."""
    result = run(codex_binary, steps=[{"prompt": "say hello"}])
    step = assert_clean_success(result)
    reqs = requests(result)
    assert [body(r).get("generate") for r in reqs] == [False, None]
    assert body(reqs[1])["previous_response_id"] == reqs[0]["response_id"]
    assert reqs[1]["response_text"] in step["stdout"]
    assert len(ws_connections(result)) == 1
    assert requests(result, "http") == []


def test_tool_loop(codex_binary: str) -> None:
    """(b) the tool output goes back on the same upstream socket, chained."""
    result = run(codex_binary, steps=[{"prompt": f"run it {CALL}"}])
    assert_clean_success(result)
    reqs = [r for r in requests(result) if body(r).get("generate") is not False]
    assert len(reqs) == 2
    call_turn, output_turn = reqs
    sent = body(output_turn)
    assert sent["previous_response_id"] == call_turn["response_id"]
    assert item_types(sent) == ["function_call_output"]
    assert "ok" in sent["input"][0]["output"]
    assert output_turn["conn_id"] == call_turn["conn_id"]


def test_resume_last_continues_in_new_process(codex_binary: str) -> None:
    """(c) `codex exec resume --last` continues the same conversation."""
    result = run(
        codex_binary,
        steps=[
            {"prompt": "remember the word pelican"},
            {"kind": "resume", "prompt": "which word did I say?"},
        ],
    )
    assert_clean_success(result, 0)
    step = assert_clean_success(result, 1)
    last = requests(result)[-1]
    text = json.dumps(body(last)["input"])
    warmups = [r for r in requests(result) if body(r).get("generate") is False]
    # The resumed process sent the old history (after its own warm-up, or in full).
    assert (
        "remember the word pelican" in text
        or (len(warmups) == 2 and "remember the word pelican" in warmups[-1]["raw"])
        or "remember the word pelican" in json.dumps(_full_input(result, last))
    )
    assert "which word did I say?" in text
    assert last["response_text"] in step["stdout"]


def _full_input(result: dict[str, Any], req: dict[str, Any]) -> list[Any]:
    """The whole input the upstream holds for req: its chain of inputs and outputs."""
    by_id = {r["response_id"]: r for r in requests(result)}
    chain: list[Any] = []
    current: dict[str, Any] | None = req
    while current is not None:
        sent = body(current)
        chain = list(sent.get("input", [])) + chain
        prev = sent.get("previous_response_id")
        current = by_id.get(prev) if prev else None
    return chain


def test_mode_off_gets_426_and_codex_uses_http(codex_binary: str) -> None:
    """(d) mode off: handshake 426, Codex goes straight to HTTP, no WS retries."""
    result = run(
        codex_binary,
        gateway_overrides={"openai_ws": {"mode": "off"}},
        steps=[{"prompt": f"run it {CALL}"}],
    )
    assert_clean_success(result)
    assert result["sim_log"]["connections"] == [] or ws_connections(result) == []
    http = requests(result, "http")
    assert len(http) == 2  # the call and the tool output, each a full request
    assert all("previous_response_id" not in body(r) for r in http)
    assert "function_call_output" in item_types(body(http[1]))


def test_socket_lost_between_call_and_output_is_invisible(codex_binary: str) -> None:
    """(e) store:false upstream socket dropped after the call: the gateway replays."""
    result = run(
        codex_binary,
        faults=[{"kind": "close_after_terminal", "match": "exec_command", "times": 1}],
        steps=[{"prompt": f"run it {CALL}"}],
    )
    assert_clean_success(result)
    reqs = [r for r in requests(result) if body(r).get("generate") is not False]
    replay = body(reqs[-1])
    assert "previous_response_id" not in replay or replay["previous_response_id"] is None
    types = item_types(replay)
    assert "function_call" in types and "function_call_output" in types
    assert types.index("function_call") < types.index("function_call_output")
    assert f"run it {CALL}" in json.dumps(replay["input"])
    assert reqs[-1]["conn_id"] != reqs[-2]["conn_id"]


def test_continuation_errors_never_reach_codex(codex_binary: str) -> None:
    """(f) previous_response_not_found once, then "No tool output found" once."""
    result = run(
        codex_binary,
        steps=[
            {
                "prompt": f"run it {CALL}",
                "faults": [
                    {"kind": "previous_response_not_found", "times": 1},
                    {"kind": "tool_output_missing", "times": 1},
                ],
            }
        ],
    )
    step = assert_clean_success(result)
    assert "previous_response_not_found" not in step["stderr"]
    assert "No tool output found" not in step["stderr"] + step["stdout"]
    errors = [r for r in requests(result) if r.get("fault")]
    assert {r["fault"] for r in errors} == {"previous_response_not_found", "tool_output_missing"}
