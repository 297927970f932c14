#!/usr/bin/env bash
# `make cluster`: 3 gateway instances + a private redis-server + nginx (+ the simulator)
# on free loopback ports. Prints the URLs; Ctrl-C tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python - "$@" <<'PY'
import signal, sys, threading
from tests.e2e.cluster import run_cluster
from tests.e2e.harness import run_sim, CLIENT_KEY

with run_sim() as sim:
    with run_cluster(sim.base_url, instances=3) as cluster:
        print(f"simulator : {sim.base_url}")
        print(f"redis     : {cluster.redis.url}")
        for gw, name in zip(cluster.instances, cluster.instance_ids):
            print(f"{name}      : {gw.http_url}")
        print(f"nginx     : {cluster.nginx_url}   (WebSocket: {cluster.ws_url}, key: {CLIENT_KEY})")
        print("Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
PY
