"""Real-client acceptance: the Codex CLI 0.169.0 binary works through the gateway.

Every test runs one scenario in its own loopback-only namespace (see codex_harness):
the simulator, the gateway and Codex itself, all real processes. The ``direct`` tests
point Codex at the simulator with no gateway; they prove the simulator speaks the
protocol the way the real client expects, so the gateway tests mean something.

Expected texts follow the simulator's documented script (sim/model.py): a
prompt is answered ``sim-answer: <prompt>``, tool outputs ``tool said: <output>``.
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
# Keeps a response streaming long enough for the harness to arm a fault behind it.
SLOW = "[[sim delay_ms=150]]"
SLOW_TOOL = '[[sim call exec_command {"cmd":"sleep 1 && echo ok"}]]'


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
    assert codex_binary == str(ch.CODEX_BINARY)
    return ch.run_scenario(scenario)


# ------------------------------------------------------------------ log helpers


def requests(
    result: dict[str, Any], transport: str = "ws", step: int | None = None
) -> list[dict[str, Any]]:
    """What the simulator received (optionally only during one Codex step)."""
    reqs: list[dict[str, Any]] = result["sim_log"]["requests"]
    if step is not None:
        steps = result["steps"]
        start = steps[step]["first_sim_request"]
        end = steps[step + 1]["first_sim_request"] if step + 1 < len(steps) else len(reqs)
        reqs = reqs[start:end]
    return [r for r in reqs if r["transport"] == transport]


def real(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests that generate output (not warm-ups)."""
    return [r for r in reqs if r["generate"] is not False]


def body(req: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(req["raw"])
    return parsed


def item_types(req: dict[str, Any]) -> list[str]:
    return [str(i.get("type")) for i in body(req).get("input", [])]


def ws_sockets(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["sim_log"]["connections"] if c["handshake_status"] == 101]


def tool_runs(result: dict[str, Any], step: int = -1) -> int:
    """How many times Codex ran the scripted `echo ok` (it logs each exec on stderr)."""
    return str(result["steps"][step]["stderr"]).count("-lc 'echo ok' in ")


def assert_clean_success(result: dict[str, Any], step: int = -1, ws_connects: int = 1) -> str:
    """Codex exited 0, never retried nor fell back, opened ws_connects sockets; its stdout."""
    s = result["steps"][step]
    why = ch.describe(result)
    assert s["exit_code"] == 0, why
    assert s["retry_lines"] == [], why
    assert s["ws_connects"] == ws_connects, why
    assert "ERROR:" not in s["stdout"] + s["stderr"], why
    return str(s["stdout"])


# ------------------------------------------- direct: Codex -> simulator (sim fidelity)


def test_direct_text_turn(codex_binary: str) -> None:
    result = run(codex_binary, mode="direct", steps=[{"prompt": "say hello"}])
    stdout = assert_clean_success(result)
    assert "sim-answer: say hello" in stdout
    reqs = requests(result)
    assert [r["generate"] for r in reqs] == [False, None]
    assert reqs[1]["previous_response_id"] == reqs[0]["response_id"]
    assert all(r["outcome"] == "completed" for r in reqs)
    (socket,) = ws_sockets(result)
    # The headers Codex 0.169.0 sends on the upgrade.
    assert socket["headers"]["openai-beta"] == "responses_websockets=2026-02-06"
    assert socket["headers"]["session-id"] == socket["headers"]["thread-id"]
    assert socket["headers"]["originator"] == "codex_exec"
    assert requests(result, "http") == []


def test_direct_tool_loop(codex_binary: str) -> None:
    result = run(codex_binary, mode="direct", steps=[{"prompt": f"run it {CALL}"}])
    stdout = assert_clean_success(result)
    assert "tool said:" in stdout
    assert tool_runs(result) == 1, ch.describe(result)
    call, output = real(requests(result))
    assert output["previous_response_id"] == call["response_id"]
    assert item_types(output) == ["function_call_output"]
    assert "ok" in body(output)["input"][0]["output"]
    assert output["conn_id"] == call["conn_id"]


def test_direct_http_tool_loop(codex_binary: str) -> None:
    """Codex over plain HTTP (full history every time) against the simulator's SSE."""
    result = run(
        codex_binary,
        mode="direct",
        provider={"supports_websockets": False},
        steps=[{"prompt": f"run it {CALL}"}],
    )
    assert "tool said:" in assert_clean_success(result, ws_connects=0)
    assert tool_runs(result) == 1, ch.describe(result)
    call, output = requests(result, "http")
    assert call["previous_response_id"] is None and output["previous_response_id"] is None
    assert item_types(output)[-2:] == ["function_call", "function_call_output"]
    assert result["sim_log"]["connections"] == []


def test_direct_resume_last(codex_binary: str) -> None:
    result = run(
        codex_binary,
        mode="direct",
        steps=[{"prompt": "remember pelican"}, {"kind": "resume", "prompt": "which word?"}],
    )
    assert_clean_success(result, 0)
    assert "sim-answer: which word?" in assert_clean_success(result, 1)
    warm, chained = requests(result, step=1)
    assert warm["generate"] is False and chained["previous_response_id"] == warm["response_id"]
    assert "remember pelican" in chained["raw"] and "sim-answer: remember pelican" in chained["raw"]
    assert ws_sockets(result)[0]["conn_id"] != ws_sockets(result)[1]["conn_id"]


def test_direct_previous_response_not_found_makes_codex_replay(codex_binary: str) -> None:
    """The simulator's error is the one Codex retries: new socket, full history."""
    result = run(
        codex_binary,
        mode="direct",
        faults=[{"kind": "previous_response_not_found", "times": 1}],
        steps=[{"prompt": "say hello"}],
    )
    step = result["steps"][0]
    assert step["exit_code"] == 0, ch.describe(result)
    assert any("Previous response with id" in line for line in step["retry_lines"])
    assert step["ws_connects"] == 2
    replay = requests(result)[-1]
    assert replay["previous_response_id"] is None and replay["generate"] is None
    assert "say hello" in replay["raw"]


def test_direct_tool_output_missing_is_fatal_for_codex(codex_binary: str) -> None:
    """Why the gateway must hide it: Codex treats it as fatal and exits without a retry."""
    result = run(
        codex_binary,
        mode="direct",
        steps=[
            {
                "prompt": f"run it {CALL} {SLOW}",
                "arm": {"when_in_flight": 1, "faults": [{"kind": "tool_output_missing"}]},
            }
        ],
    )
    step = result["steps"][0]
    assert step["arm"] == "armed", ch.describe(result)
    assert step["exit_code"] == 1, ch.describe(result)
    assert "No tool output found for function call" in step["stdout"] + step["stderr"]
    assert step["retry_lines"] == []


# ---------------------------------------------------------- through the gateway


def test_text_turn(codex_binary: str) -> None:
    """(a) warm-up then the chained request, on one upstream socket."""
    result = run(codex_binary, steps=[{"prompt": "say hello"}])
    assert "sim-answer: say hello" in assert_clean_success(result)
    reqs = requests(result)
    assert [r["generate"] for r in reqs] == [False, None]
    assert reqs[1]["previous_response_id"] == reqs[0]["response_id"]
    (upstream,) = ws_sockets(result)
    assert upstream["account_key"] == ch.SIM_ACCOUNT_KEY  # never the client's gateway key
    assert upstream["headers"]["openai-beta"] == "responses_websockets=2026-02-06"
    assert requests(result, "http") == []


def test_tool_loop(codex_binary: str) -> None:
    """(b) the tool output goes back on the same upstream socket, chained."""
    result = run(codex_binary, steps=[{"prompt": f"run it {CALL}"}])
    assert "tool said:" in assert_clean_success(result)
    assert tool_runs(result) == 1, ch.describe(result)
    call, output = real(requests(result))
    assert output["previous_response_id"] == call["response_id"]
    assert item_types(output) == ["function_call_output"]
    assert "ok" in body(output)["input"][0]["output"]
    assert output["conn_id"] == call["conn_id"]
    assert output["outcome"] == "completed"


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
    assert "sim-answer: which word did I say?" in assert_clean_success(result, 1)
    resumed = requests(result, step=1)
    assert resumed and resumed[-1]["outcome"] == "completed"
    # Upstream saw the earlier turn again: the old prompt and the old answer.
    upstream_text = "".join(r["raw"] for r in resumed)
    assert "remember the word pelican" in upstream_text
    assert "sim-answer: remember the word pelican" in upstream_text


def test_mode_off_gets_426_and_codex_uses_http(codex_binary: str) -> None:
    """(d) mode off: handshake 426, Codex goes straight to HTTP, no WS retries."""
    result = run(
        codex_binary,
        gateway_overrides={"openai_ws": {"mode": "off"}},
        steps=[{"prompt": f"run it {CALL}"}],
    )
    assert "tool said:" in assert_clean_success(result, ws_connects=0)
    assert tool_runs(result) == 1, ch.describe(result)
    assert result["sim_log"]["connections"] == []
    http = requests(result, "http")
    assert len(http) == 2  # the call and the tool output, each a full request
    assert all(r["previous_response_id"] is None for r in http)
    assert "function_call" in item_types(http[1]) and "function_call_output" in item_types(http[1])


def _metric(result: dict[str, Any], name: str, **labels: str) -> float:
    total = 0.0
    for line in str(result.get("gateway_metrics", "")).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_force_http_serves_every_codex_turn_as_one_http_turn(codex_binary: str) -> None:
    """force_http: Codex gets 426 and posts; each POST is one full HTTP turn (normalized,
    bound, counted) and the tool loop completes."""
    result = run(
        codex_binary,
        gateway_overrides={"openai_ws": {"force_http": True}},
        steps=[{"prompt": "say hello"}, {"prompt": f"run it {CALL}"}],
    )
    assert_clean_success(result, step=0, ws_connects=0)
    assert "tool said:" in assert_clean_success(result, step=1, ws_connects=0)
    assert tool_runs(result) == 1, ch.describe(result)
    http = real(requests(result, "http"))
    assert len(http) == 3  # a text turn, then the call and its output
    completed = _metric(result, "gateway_turns_total", mode="http", outcome="http_completed")
    assert completed == len(http), ch.describe(result)


def test_socket_lost_between_call_and_output_is_invisible(codex_binary: str) -> None:
    """(e) store:false upstream socket closed after the call: the gateway replays."""
    result = run(
        codex_binary,
        steps=[
            {
                "prompt": f"run it {CALL} {SLOW}",
                "arm": {
                    "when_in_flight": 1,
                    "faults": [{"kind": "close_after_terminal", "code": 1001}],
                },
            }
        ],
    )
    assert result["steps"][0]["arm"] == "armed", ch.describe(result)
    assert "tool said:" in assert_clean_success(result)
    assert tool_runs(result) == 1, ch.describe(result)
    call, replay = real(requests(result))
    assert body(call)["store"] is False
    assert replay["outcome"] == "completed"
    assert replay["conn_id"] != call["conn_id"]
    assert replay["previous_response_id"] is None
    types = item_types(replay)
    assert "function_call" in types and "function_call_output" in types
    assert types.index("function_call") < types.index("function_call_output")
    assert "run it" in replay["raw"]  # the user's prompt: the full transcript


def test_continuation_errors_never_reach_codex(codex_binary: str) -> None:
    """(f) previous_response_not_found once (on the prompt, chained from the warm-up)
    and "No tool output found" once (on the tool output): Codex sees neither."""
    result = run(
        codex_binary,
        faults=[{"kind": "previous_response_not_found"}],
        steps=[
            {
                "prompt": f"run it {CALL} {SLOW}",
                "arm": {"when_in_flight": 1, "faults": [{"kind": "tool_output_missing"}]},
            }
        ],
    )
    assert result["steps"][0]["arm"] == "armed", ch.describe(result)
    stdout = assert_clean_success(result)
    assert "tool said:" in stdout
    assert tool_runs(result) == 1, ch.describe(result)
    outcomes = [r["outcome"] for r in requests(result)]
    assert outcomes.count("error:previous_response_not_found") == 1, outcomes
    assert len([o for o in outcomes if o.startswith("error:No tool output found")]) == 1, outcomes
    assert outcomes[-1] == "completed"
    last = requests(result)[-1]
    assert "function_call_output" in item_types(last)
    step = result["steps"][0]
    assert "Previous response" not in step["stderr"] and "No tool output" not in step["stderr"]


def test_resume_lands_on_the_other_instance_behind_nginx(codex_binary: str) -> None:
    """(g) Two instances behind the shipped nginx config with Redis: after the first
    process's turn, the instance that served it is drained (SIGTERM, as in a rolling
    deploy); `resume --last` from a new process lands on the other one and completes."""
    result = run(
        codex_binary,
        mode="cluster",
        steps=[
            {"prompt": "remember the word heron", "then_drain_serving_instance": True},
            {"kind": "resume", "prompt": "which word did I say?"},
        ],
    )
    assert_clean_success(result, 0)
    assert "sim-answer: which word did I say?" in assert_clean_success(result, 1)
    drained = result["drained_instance"]
    survivors = result["instance_turns"]
    assert drained not in survivors and len(survivors) == 1
    (other_turns,) = survivors.values()
    assert other_turns >= 2  # the resumed warm-up and turn were served by the other instance
    resumed = requests(result, step=1)
    assert "remember the word heron" in "".join(r["raw"] for r in resumed)


def test_instance_restarted_while_codex_runs_a_tool_is_invisible(codex_binary: str) -> None:
    """A rolling deploy under a live tool loop: the instance holding Codex's socket is
    restarted while the function-call response streams. The turn finishes, the socket is
    closed right after it while Codex runs the tool, Codex reconnects through nginx to the
    other instance and carries on: it exits 0 with no retry or error line, and no
    previous_response_not_found ever reaches it. (Codex sends its whole history on every
    new socket, so here the other instance needs no rebuild.)"""
    result = run(
        codex_binary,
        mode="cluster",
        steps=[{"prompt": f"run it {SLOW_TOOL} {SLOW}", "restart_serving_while_in_flight": True}],
    )
    step = result["steps"][0]
    assert step["arm"].startswith("restarted"), ch.describe(result)
    assert "tool said:" in assert_clean_success(result, ws_connects=2)
    outcomes = [r["outcome"] for r in requests(result)]
    assert "error:previous_response_not_found" not in outcomes, outcomes
    assert all(r["outcome"] == "completed" for r in requests(result)), outcomes
    last = real(requests(result))[-1]
    assert "function_call" in item_types(last) and "function_call_output" in item_types(last)
    sockets = {r["conn_id"] for r in requests(result)}
    assert len(sockets) == 2  # the tool output went out on the other instance's socket


def test_rate_limited_account_fails_over_without_codex_noticing(codex_binary: str) -> None:
    """Two accounts; a answers every request after the first real one with an error 429
    before any event: the tool output moves to b with the whole transcript (store:false,
    so b gets the call and its output), and Codex sees a normal tool loop."""
    limited = {
        "kind": "error_event",
        "after_events": 0,
        "status": 429,
        "code": "rate_limit_exceeded",
        "message": "Rate limit reached for requests. Please try again in 20s.",
        "account_key": ch.SIM_ACCOUNT_KEY,
        "generate": True,
        "skip": 1,
        "times": 100,
    }
    result = run(
        codex_binary,
        gateway_accounts=2,
        faults=[limited],
        steps=[{"prompt": f"run it {CALL}"}],
    )
    assert "tool said:" in assert_clean_success(result)
    assert tool_runs(result) == 1, ch.describe(result)
    call, refused, moved = real(requests(result))
    assert call["account_key"] == ch.SIM_ACCOUNT_KEY and call["outcome"] == "completed"
    assert refused["account_key"] == ch.SIM_ACCOUNT_KEY
    assert refused["outcome"] == "error:rate_limit_exceeded"
    assert moved["account_key"] == "sk-sim-b" and moved["outcome"] == "completed"
    assert moved["previous_response_id"] is None  # b never saw the call's response
    types = item_types(moved)
    assert types.index("function_call") < types.index("function_call_output")
    assert "run it" in moved["raw"]  # the user's prompt: the whole transcript
    assert _metric(result, "gateway_account_failovers_total") == 1, ch.describe(result)
