"""A batch beside interactive traffic: the batch's wall time, and what it does to the latency of
interactive queries sent while it runs.

    python bench/batch.py [--requests 1000] [--interactive 120] [--rate 4]
        [--small-latency 0.5] [--large-latency 2] [--redis redis://127.0.0.1:6379/14]

One distributed stack (bench/load_stack.py: `twotier api`, `twotier worker --queues
small,maintenance`, `twotier worker --queues large`, `twotier beat`, two TGI-compatible model
servers at a set latency, a throwaway PostgreSQL database, the Redis database ``--redis``,
flushed before and after). Two tenants: one sends the interactive queries, one the batch, so
that each keeps a threshold scope of its own. Interactive queries are OpenAI chat completions
(the call returns with the answer), sent open loop at ``--rate`` a second; the same prompts in
both phases, after ``--warmup`` queries that fill the threshold's warm-up window:

1. baseline: ``--interactive`` queries, no batch;
2. with a batch: a ``--requests``-line batch created, then the same interactive queries at once.

Prints the figures and writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from load import busy_processes, load_average, write_json
from load_stack import BENCH_DIR, TWOTIER, Stack, scenario_stack

CHAT = "/v1/chat/completions"


def main() -> None:
    args = _parser().parse_args()
    args.worker_args = shlex.split(args.worker_args)
    args.api_args = shlex.split(args.api_args)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    os.environ["TWOTIER_BATCH_MAX_IN_FLIGHT"] = str(args.batch_max_in_flight)
    os.environ["TWOTIER_BATCH_FEED_BELOW"] = str(args.batch_feed_below)
    with scenario_stack(args, latency=(args.small_latency, args.large_latency)) as stack:
        stack.start_workers()
        batch_key = create_tenant(stack, "batch")
        results = run(args, stack, batch_key)
    results.update(
        started=started,
        command="python bench/batch.py " + " ".join(_given(args)),
        load_average_after=load_average(),
        busy_processes_after=busy_processes(),
    )
    write_json(args.out, results)
    print(json.dumps(results, indent=2))


def run(args: argparse.Namespace, stack: Stack, batch_key: str) -> dict[str, Any]:
    prompts = [f"interactive question {i} about the weather" for i in range(args.interactive)]
    warmup = [f"warm-up question {i}" for i in range(args.warmup)]
    asyncio.run(interactive(stack, warmup, rate=args.rate * 4))
    baseline = asyncio.run(interactive(stack, prompts, rate=args.rate))

    with httpx.Client(base_url=stack.api_url, timeout=120) as api:
        api.headers["Authorization"] = f"Bearer {batch_key}"
        sent_at = time.monotonic()
        batch_id = create_batch(api, args.requests)
        alongside = asyncio.run(interactive(stack, prompts, rate=args.rate))
        batch = wait_batch(api, batch_id, deadline_s=args.deadline)
        wall_s = time.monotonic() - sent_at  # from the upload to the batch seen completed
    return {
        "settings": {
            "requests": args.requests,
            "interactive": args.interactive,
            "rate_per_s": args.rate,
            "small_latency_s": args.small_latency,
            "large_latency_s": args.large_latency,
            "batch_max_in_flight": args.batch_max_in_flight,
            "batch_feed_below": args.batch_feed_below,
        },
        "baseline": baseline,
        "with_batch": alongside,
        "p50_ratio": _ratio(alongside["p50_ms"], baseline["p50_ms"]),
        "p95_ratio": _ratio(alongside["p95_ms"], baseline["p95_ms"]),
        "batch": {
            "status": batch["status"],
            "request_counts": batch["request_counts"],
            "wall_s": round(wall_s, 1),
            "requests_per_s": round(args.requests / wall_s, 1) if wall_s > 0 else None,
            # What the in-flight limit allows: each request holds its slot for the small call,
            # and the escalated share (the tenant's target, 0.3) for the large call too.
            "in_flight_ceiling_per_s": round(
                args.batch_max_in_flight / (args.small_latency + 0.3 * args.large_latency), 1
            ),
        },
    }


async def interactive(stack: Stack, prompts: list[str], *, rate: float) -> dict[str, Any]:
    """Each prompt as a chat completion, one every 1/rate s (open loop): latencies in ms."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    limits = httpx.Limits(max_connections=len(prompts) + 1)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers=headers, timeout=120, limits=limits
    ) as client:

        async def one(prompt: str) -> None:
            nonlocal errors
            start = time.perf_counter()
            body = {"model": "twotier", "messages": [{"role": "user", "content": prompt}]}
            response = await client.post(CHAT, json=body)
            if response.status_code == 200:
                latencies.append(1000 * (time.perf_counter() - start))
            else:
                errors += 1

        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(one(prompt)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    return {
        "answered": len(ordered),
        "errors": errors,
        "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
        "p95_ms": round(ordered[min(int(0.95 * len(ordered)), len(ordered) - 1)], 1)
        if ordered
        else None,
        "max_ms": round(ordered[-1], 1) if ordered else None,
    }


def create_batch(api: httpx.Client, requests: int) -> str:
    lines = [
        json.dumps(
            {
                "custom_id": f"r-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {
                    "model": "twotier",
                    "messages": [{"role": "user", "content": f"batch request {i} of the job"}],
                },
            }
        )
        for i in range(requests)
    ]
    content = ("\n".join(lines) + "\n").encode()
    uploaded = api.post(
        "/v1/files",
        files={"file": ("batch.jsonl", content)},
        data={"purpose": "batch"},
    )
    uploaded.raise_for_status()
    created = api.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": CHAT,
            "completion_window": "24h",
        },
    )
    created.raise_for_status()
    batch_id: str = created.json()["id"]
    return batch_id


def wait_batch(api: httpx.Client, batch_id: str, *, deadline_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while True:
        batch: dict[str, Any] = api.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in {"completed", "failed", "cancelled", "expired"}:
            return batch
        if time.monotonic() > deadline:
            return batch
        time.sleep(0.25)


def create_tenant(stack: Stack, name: str) -> str:
    created = subprocess.run(
        [*TWOTIER, "tenants", "create", name, "--target-escalation-rate", "0.3"],
        env=stack.env(), check=True, capture_output=True, text=True,
    )  # fmt: skip
    lines = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    return lines["api_key"].strip()


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value and base else None


def _given(args: argparse.Namespace) -> list[str]:
    return [
        f"--requests {args.requests}",
        f"--interactive {args.interactive}",
        f"--rate {args.rate}",
        f"--small-latency {args.small_latency}",
        f"--large-latency {args.large_latency}",
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--requests", type=int, default=1000, help="lines of the batch")
    add("--interactive", type=int, default=120, help="interactive queries per phase")
    add("--rate", type=float, default=4.0, help="interactive queries a second")
    add("--warmup", type=int, default=30, help="interactive queries before measuring")
    add("--small-latency", type=float, default=0.5)
    add("--large-latency", type=float, default=2.0)
    add("--batch-max-in-flight", type=int, default=32, help="TWOTIER_BATCH_MAX_IN_FLIGHT")
    add("--batch-feed-below", type=int, default=4, help="TWOTIER_BATCH_FEED_BELOW")
    add("--deadline", type=float, default=600.0, help="stop waiting for the batch after s")
    add("--redis", default="redis://127.0.0.1:6379/14", help="a Redis database of its own")
    add("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    add("--worker-args", default="", help="passed to each `twotier worker`")
    add("--api-args", default="", help="passed to `twotier api`")
    add("--max-concurrent", type=int, default=128, help="per model server, then 429")
    add("--out", type=Path, default=BENCH_DIR / "results/batch.json")
    return parser


if __name__ == "__main__":
    main()
