"""Cost of the budget's check-and-reserve on the submit path, and concurrent submit throughput.

    python bench/budget_submit.py [--submits 2000] [--concurrency 64]
        [--admin-url postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/14]

Creates a throwaway PostgreSQL database, runs the API in this process with the Celery
dispatcher on Redis (no workers: queries stay queued), and submits through HTTP for a tenant
without a budget and one with a budget. Prints and writes bench/results/budget_submit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from decimal import Decimal
from pathlib import Path

import httpx
import redis

from services.api.app import create_app
from services.db import session_scope
from services.migrate import upgrade_to_head
from services.tenants import create_tenant, set_budget
from tests.server_thread import ServerThread
from tests.throwaway_database import throwaway_database
from workers.celery_dispatcher import CeleryDispatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=Path("bench/results/budget_submit.json"))
    args = parser.parse_args()

    os.environ["TWOTIER_BROKER_URL"] = args.redis
    with throwaway_database(args.admin_url):
        results = run(args.submits, args.concurrency)
    for name, value in results.items():
        print(f"{name:>36}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def run(submits: int, concurrency: int) -> dict[str, float]:
    upgrade_to_head()
    keys = {}
    with session_scope() as session:
        for name in ("unlimited", "budgeted"):
            keys[name] = create_tenant(session, name=name, target_escalation_rate=0.3).api_key
        set_budget(session, name="budgeted", period="monthly",
                   hard_limit=Decimal(10**6), soft_limit=None)  # fmt: skip
    server = ServerThread(create_app(CeleryDispatcher())).start()
    results: dict[str, float] = {"submits": submits, "concurrency": concurrency}
    try:
        for name, key in keys.items():
            latencies, elapsed = asyncio.run(_burst(server.url, key, submits, concurrency))
            latencies.sort()
            results[f"{name}_submits_per_s"] = round(submits / elapsed, 1)
            results[f"{name}_latency_p50_ms"] = round(1000 * statistics.median(latencies), 2)
            results[f"{name}_latency_p99_ms"] = round(
                1000 * latencies[int(0.99 * len(latencies))], 2
            )
        results["reservation_cost_p50_ms"] = round(
            results["budgeted_latency_p50_ms"] - results["unlimited_latency_p50_ms"], 2
        )
        results["reservation_cost_p99_ms"] = round(
            results["budgeted_latency_p99_ms"] - results["unlimited_latency_p99_ms"], 2
        )
    finally:
        server.stop()
        redis.Redis.from_url(os.environ["TWOTIER_BROKER_URL"]).flushdb()
    return results


async def _burst(url: str, key: str, submits: int, concurrency: int) -> tuple[list[float], float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def submit(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/queries",
                    json={"prompt": f"benchmark question {i}", "max_new_tokens": 16},
                    headers={"Authorization": f"Bearer {key}"},
                )
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(submits)))
        return latencies, time.perf_counter() - started


if __name__ == "__main__":
    main()
