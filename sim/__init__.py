"""A protocol-faithful upstream simulator for the Responses API (WebSocket and HTTP/SSE).

Run it with ``python -m sim`` (or ``make sim``); drive and inspect it through the control
API clients in ``sim.control``. Tests, the benchmark harness and the local cluster use it.
"""
