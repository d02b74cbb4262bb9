"""Scenario (c) of bench/load.py: the cascade end to end against slow model servers.

Queries are submitted over HTTP as fast as the API takes them; their progress is read from
PostgreSQL (not by polling the API, so that the API's capacity for polls does not limit what is
measured here: scenario (a) measures that). Finished queries per second are compared with the
model servers' ceiling: a server answers at most max_concurrent / latency calls a second, and
the large tier sees only the escalated share of the queries.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from load_http import submit_many
from load_stack import Sampler, Stack
from pipeline import _wait_until
from sqlalchemy import text

from services.db import get_engine

PROGRESS = text(
    "SELECT status, count(*), min(created_at), max(finished_at), "
    "count(*) FILTER (WHERE escalated_at IS NOT NULL) FROM queries "
    "WHERE id = ANY(:ids) GROUP BY status"
)
FINISH_TIMES = text(
    "SELECT finished_at FROM queries WHERE id = ANY(:ids) AND finished_at IS NOT NULL "
    "ORDER BY finished_at"
)
TERMINAL = ("succeeded", "failed", "cancelled")


def progress(ids: list[str]) -> dict[str, Any]:
    with get_engine().connect() as connection:
        rows = connection.execute(PROGRESS, {"ids": _uuids(ids)}).all()
    statuses = {status: count for status, count, *_ in rows}
    finished = [row for row in rows if row[0] in TERMINAL]
    return {
        "statuses": statuses,
        "finished": sum(row[1] for row in finished),
        "escalated": sum(row[4] for row in finished),
        "first_created": min((row[2] for row in rows), default=None),
        "last_finished": max((row[3] for row in finished if row[3]), default=None),
    }


def _uuids(ids: list[str]) -> list[uuid.UUID]:
    return [uuid.UUID(query_id) for query_id in ids]


def wait_finished(ids: list[str], *, deadline: float) -> dict[str, Any]:
    while True:
        state = progress(ids)
        if state["finished"] >= len(ids) or time.perf_counter() > deadline:
            return state
        time.sleep(0.5)


def steady_rate(ids: list[str]) -> float | None:
    """Finishes per second between the 10th and the 90th percentile of the finish times."""
    with get_engine().connect() as connection:
        times = [row[0] for row in connection.execute(FINISH_TIMES, {"ids": _uuids(ids)})]
    if len(times) < 20:
        return None
    first, last = times[len(times) // 10], times[(9 * len(times)) // 10]
    span = (last - first).total_seconds()
    return round(((9 * len(times)) // 10 - len(times) // 10) / span, 1) if span > 0 else None


def end_to_end(
    stack: Stack,
    *,
    queries: int,
    submitters: int,
    deadline_s: float,
    slow_small_s: float,
    slow_queries: int,
    slow_observe_s: float,
) -> dict[str, Any]:
    """(c) Run ``queries`` through both tiers; then make the small model slow and count the
    calls one worker process keeps in flight."""
    stack.start_workers()
    warmup = asyncio.run(submit_many(stack, 40, clients=8, tag="warmup"))  # W = 20, and more
    _wait_until(
        lambda: progress(warmup)["finished"] == len(warmup),
        what=f"the warm-up queries (logs: {stack.logs})", timeout_s=300,
    )  # fmt: skip
    small, large = stack.servers["small"], stack.servers["large"]
    rate = 0.3
    ceiling = min(
        small.max_concurrent / small.latency_s, large.max_concurrent / large.latency_s / rate
    )
    for server in (small, large):
        server.reset()
    with Sampler(stack) as sampler:
        started = time.perf_counter()
        submits = Counter[str]()
        ids = asyncio.run(
            submit_many(stack, queries, clients=submitters, tag="e2e", outcomes=submits)
        )
        submitted_s = time.perf_counter() - started
        state = wait_finished(ids, deadline=started + deadline_s)
        elapsed = time.perf_counter() - started
    gauges = {tier: server.gauge() for tier, server in stack.servers.items()}
    done = state["finished"] >= len(ids)
    span = (state["last_finished"] - state["first_created"]).total_seconds() if done else elapsed
    results: dict[str, Any] = {
        "queries": queries, "submitters": submitters,
        "latency_s": {"small": small.latency_s, "large": large.latency_s},
        "max_concurrent": small.max_concurrent,
        "submit_seconds": round(submitted_s, 1), "submits_per_s": round(len(ids) / submitted_s, 1),
        "submit_attempts": dict(submits), "accepted": len(ids),
        "finished": state["finished"], "all_finished": done, "seconds": round(span, 1),
        "finished_per_s": round(state["finished"] / span, 1),
        "finished_per_s_steady": steady_rate(ids), "ceiling_per_s": round(ceiling, 1),
        "escalated_share": round(state["escalated"] / max(state["finished"], 1), 3),
        "statuses": state["statuses"],
        "model_calls": {tier: {k: g[k] for k in ("peak", "served", "refused")}
                        for tier, g in gauges.items()},
        **sampler.figures(),
    }  # fmt: skip
    results["slow_small_model"] = _slow_small_model(
        stack, seconds=slow_small_s, queries=slow_queries, observe_s=slow_observe_s
    )
    return results


def _slow_small_model(
    stack: Stack, *, seconds: float, queries: int, observe_s: float
) -> dict[str, Any]:
    """Calls in flight from the small-tier worker when each call takes ``seconds``.

    What the main run left unfinished is still queued ahead of these queries: this counts the
    calls the worker keeps in flight, not the queries it finishes."""
    small = stack.servers["small"]
    small.set_latency(seconds)
    small.reset()
    with Sampler(stack) as sampler:
        started = time.perf_counter()
        ids = asyncio.run(submit_many(stack, queries, clients=32, tag="slow"))
        submitted_s = time.perf_counter() - started
        time.sleep(max(0.0, observe_s - submitted_s))
        gauge = small.gauge()
        state = progress(ids)
    figures = sampler.figures()
    return {
        "small_latency_s": seconds, "queries": queries, "observed_s": observe_s,
        "small_calls_peak": gauge["peak"], "small_calls_served": gauge["served"],
        "small_calls_refused": gauge["refused"],
        "small_worker_in_flight_peak_sampled": figures["in_flight_peak_sampled"].get(
            "worker_small", 0),
        "in_flight_peak_per_os_process": figures["in_flight_peak_per_os_process"],
        "finished_in_window": state["finished"], "statuses": dict(Counter(state["statuses"])),
        "rss_peak_mb": figures["rss_peak_mb"],
    }  # fmt: skip
