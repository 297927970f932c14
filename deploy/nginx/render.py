"""Render deploy/nginx/nginx.conf.template for a port, a prefix dir and instance addresses.

python deploy/nginx/render.py --listen 8080 --prefix /tmp/ngx 127.0.0.1:8081 127.0.0.1:8082
python deploy/nginx/render.py --listen 0.0.0.0:8080 --prefix /tmp gateway-1:8080 ...  (compose)
"""

from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def render(listen: int | str, prefix: str, upstreams: list[str]) -> str:
    """``listen``: a port (on loopback) or an nginx listen address as is."""
    servers = "\n".join(f"        server {addr} max_fails=1 fail_timeout=5s;" for addr in upstreams)
    text = TEMPLATE.read_text()
    for name, value in (
        ("LISTEN", f"127.0.0.1:{listen}" if isinstance(listen, int) else listen),
        ("PREFIX", prefix),
        ("UPSTREAMS", servers),
    ):
        text = text.replace(f"@{name}@", value)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="port (loopback) or host:port")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("upstreams", nargs="+")
    args = parser.parse_args()
    listen = int(args.listen) if args.listen.isdigit() else args.listen
    print(render(listen, args.prefix, args.upstreams), end="")


if __name__ == "__main__":
    main()
