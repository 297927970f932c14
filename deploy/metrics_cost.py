"""Cost of the gateway's metrics in one process vs prometheus-client multiprocess mode
(what ``--workers N`` uses so /metrics sums every worker).

``python -m deploy.metrics_cost single`` and ``python -m deploy.metrics_cost multi``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit


def main(mode: str) -> str:
    if mode == "multi":
        # Must be set before prometheus-client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-cost-")
    from gateway.telemetry import Metrics

    metrics = Metrics(accounts=["acct-a", "acct-b"])
    counter = metrics.turns.labels("ctx_pool", "completed")
    histogram = metrics.added_latency.labels("ctx_pool")
    calls = 200_000
    inc = min(timeit.repeat(counter.inc, number=calls, repeat=3)) / calls
    observe = min(timeit.repeat(lambda: histogram.observe(0.0003), number=calls, repeat=3)) / calls
    scrape = min(timeit.repeat(lambda: metrics.render_exposition(None), number=50, repeat=3)) / 50
    return (
        f"{mode}: counter.inc {inc * 1e9:.0f} ns, histogram.observe {observe * 1e9:.0f} ns,"
        f" scrape {scrape * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "single"))
