"""Time ``GET /healthz`` every interval, as a liveness probe would, from a process of its own.

    python bench/load_probe.py URL OUT.json [--interval 0.05] [--timeout 10]

Each probe opens a new connection (a kubelet's probe does), so a full accept queue shows. It
runs in its own process so that the load generator's event loop cannot delay it; on SIGTERM it
writes ``[[seconds since start, latency in seconds or null], ...]`` (null: an error or a
timeout) to OUT.json and exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    probes: list[tuple[float, float | None]] = []

    def finish(_signal: int, _frame: object) -> None:
        args.out.write_text(json.dumps(probes))
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        started = time.perf_counter()
        while True:
            sent = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            answered = time.perf_counter()
            probes.append((round(sent - started, 3), answered - sent if ok else None))
            time.sleep(max(0.0, args.interval - (answered - sent)))


if __name__ == "__main__":
    main()
