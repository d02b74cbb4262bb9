"""Scenarios (a) and (b) of bench/load.py: many concurrent long polls, many concurrent submitters.

Every simulated client is an ``httpx.AsyncClient`` of its own with one connection, all in one
asyncio event loop: a thousand clients cost a thousand sockets and coroutines, not threads. (One
shared client with a thousand pooled connections spends its time searching its pool.) They share
one TLS context, which httpx would otherwise build per client at some 40 ms each. ``/healthz``
is timed meanwhile from a process of its own (bench/load_probe.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
from load_stack import BENCH_DIR, Stack
from sqlalchemy import text

from services.db import get_engine

SSL = ssl.create_default_context()
TERMINAL = {"succeeded", "failed", "cancelled"}


def client_for(stack: Stack, *, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=timeout_s, verify=SSL, limits=httpx.Limits(max_connections=1),
    )  # fmt: skip


def outcome(response: httpx.Response | BaseException) -> str:
    """A response's class: 2xx, 429, 503, 4xx, 5xx, or what went wrong on the client."""
    if isinstance(response, httpx.TimeoutException):
        return "client_timeout"
    if isinstance(response, BaseException):
        return "transport_error"
    status = response.status_code
    if status in (429, 503) or status >= 500:
        return str(status) if status in (429, 503) else "5xx"
    return "2xx" if status < 300 else "4xx"


def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    ordered = sorted(seconds)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}

    def at(share: float) -> float:
        return round(1000 * ordered[min(int(share * len(ordered)), len(ordered) - 1)], 1)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 1)}


@contextlib.contextmanager
def healthz_probe(stack: Stack, interval_s: float = 0.05) -> Iterator[dict[str, Any]]:
    """Time /healthz while the block runs; the figures fill the yielded dict at its end."""
    out = stack.logs / f"healthz-{time.monotonic_ns()}.json"
    probe = subprocess.Popen([sys.executable, str(BENCH_DIR / "load_probe.py"), stack.api_url,
                              str(out), "--interval", str(interval_s)])  # fmt: skip
    figures: dict[str, Any] = {}
    try:
        yield figures
    finally:
        probe.terminate()
        probe.wait(timeout=30)
    probes = json.loads(out.read_text()) if out.exists() else []
    answered = [latency for _, latency in probes if latency is not None]
    figures.update(
        {"probes": len(probes), "errors": len(probes) - len(answered), **percentiles_ms(answered)}
    )


async def submit_many(
    stack: Stack, count: int, *, clients: int, tag: str, outcomes: Counter[str] | None = None
) -> list[str]:
    """Submit ``count`` queries from ``clients`` clients at once; the ids accepted (202).

    Like a careful client, each query carries an Idempotency-Key and is sent again after a
    429 or 503 (after its Retry-After), a 5xx, a timeout or a dropped connection, up to 20
    times; ``outcomes`` counts every attempt's outcome."""
    ids: list[str] = []
    numbers = iter(range(count))
    seen = outcomes if outcomes is not None else Counter[str]()

    async def one_client() -> None:
        async with client_for(stack, timeout_s=30) as client:
            for i in numbers:
                body = {"prompt": f"load {tag} {i}", "max_new_tokens": 16}
                headers = {"Idempotency-Key": f"{tag}-{i}"}
                for attempt in range(20):
                    try:
                        result: httpx.Response | BaseException = await client.post(
                            "/v1/queries", json=body, headers=headers
                        )
                    except httpx.HTTPError as exc:
                        result = exc
                    seen[outcome(result)] += 1
                    if isinstance(result, httpx.Response) and result.status_code < 300:
                        ids.append(result.json()["id"])
                        break
                    retry_after = 0.2 * 2 ** min(attempt, 4)
                    if isinstance(result, httpx.Response):
                        retry_after = float(result.headers.get("Retry-After", retry_after))
                    await asyncio.sleep(min(retry_after, 5))

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return ids


def long_polls(
    stack: Stack, *, polls: int, wait_s: float, tolerance_s: float, launch_s: float
) -> dict[str, Any]:
    """(a) ``polls`` long polls at once (sent evenly over ``launch_s``), no worker running: half
    of the queries are cancelled (which finishes them) halfway through the wait, the other half
    stay queued. Each poll must answer within ``tolerance_s`` of its query's cancellation, or of
    the end of its wait. The client's own lag is reported beside: the time its event loop took to
    put each request on the wire, and how late its loop ran a 10 ms timer."""
    ids = asyncio.run(submit_many(stack, polls, clients=32, tag="poll"))
    cancelled = set(ids[::2])
    answers: dict[str, tuple[float, float, httpx.Response | BaseException]] = {}
    finished_at: dict[str, tuple[float, float, str]] = {}

    send_lag: list[float] = []
    loop_lag: list[float] = []

    async def poll(query_id: str, client: httpx.AsyncClient) -> None:
        sent, answered, result, lag = await _one_poll(client, query_id, wait_s)
        send_lag.append(lag)
        answers[query_id] = (sent, answered, result)

    async def cancel(to_cancel: list[str], until: float) -> None:
        """DELETE each query in turn; none is sent after ``until`` (a wedged API's)."""
        async with client_for(stack, timeout_s=wait_s + 30) as client:
            for query_id in to_cancel:
                sent = time.perf_counter()
                if sent > until:
                    finished_at[query_id] = (sent, sent, "not_sent")
                    continue
                try:
                    kind = outcome(await client.delete(f"/v1/queries/{query_id}"))
                except httpx.HTTPError as exc:
                    kind = outcome(exc)
                finished_at[query_id] = (sent, time.perf_counter(), kind)

    async def run() -> None:
        clients = [client_for(stack, timeout_s=wait_s + 30) for _ in ids]
        ticker = asyncio.create_task(_measure_loop_lag(loop_lag))
        begun = time.perf_counter()
        tasks = []
        for number, (query_id, client) in enumerate(zip(ids, clients, strict=True)):
            tasks.append(asyncio.create_task(poll(query_id, client)))
            await asyncio.sleep(max(0.0, begun + number * launch_s / polls - time.perf_counter()))
        await asyncio.sleep(max(0.0, begun + wait_s / 2 - time.perf_counter()))
        batch, until = sorted(cancelled), time.perf_counter() + wait_s / 2
        await asyncio.gather(*(cancel(batch[i::32], until) for i in range(32)))
        await asyncio.gather(*tasks)
        ticker.cancel()
        await asyncio.gather(*(client.aclose() for client in clients))

    with healthz_probe(stack) as healthz:
        started = time.perf_counter()
        asyncio.run(run())
        elapsed = time.perf_counter() - started
    outcomes = Counter(outcome(result) for _, _, result in answers.values())
    late: dict[str, list[float]] = {"cancelled": [], "waited": []}
    on_time = Counter[str]()
    for query_id, (sent, answered, result) in answers.items():
        group = "cancelled" if query_id in cancelled else "waited"
        if not isinstance(result, httpx.Response) or result.status_code != 200:
            continue
        lateness, right = _lateness(
            sent, answered, result.json()["status"], wait_s, finished_at.get(query_id)
        )
        late[group].append(max(lateness, 0.0))
        on_time[group] += int(right and lateness <= tolerance_s)
    return {
        "polls": polls, "wait_s": wait_s, "tolerance_s": tolerance_s,
        "seconds": round(elapsed, 1), "outcomes": dict(outcomes),
        "errors": sum(n for kind, n in outcomes.items() if kind != "2xx"),
        "cancels": dict(Counter(kind for _, _, kind in finished_at.values())),
        "on_time_cancelled": f"{on_time['cancelled']}/{len(cancelled)}",
        "on_time_waited": f"{on_time['waited']}/{len(ids) - len(cancelled)}",
        "late_after_cancel": percentiles_ms(late["cancelled"]),
        "late_after_wait": percentiles_ms(late["waited"]),
        "launch_s": launch_s, "client_send_lag": percentiles_ms(send_lag),
        "client_loop_lag": percentiles_ms(loop_lag),
        "healthz": healthz,
    }  # fmt: skip


async def _one_poll(
    client: httpx.AsyncClient, query_id: str, wait_s: float
) -> tuple[float, float, httpx.Response | BaseException, float]:
    """When the poll went on the wire and was answered, the answer, and the client's send lag.

    The wait counts from the moment the request is on the wire (httpcore's trace), not from the
    coroutine's start, which this event loop may reach late with a thousand clients to serve."""
    started = time.perf_counter()
    wire: dict[str, float] = {}

    async def trace(event: str, _info: dict[str, Any]) -> None:
        if event == "http11.send_request_headers.complete":
            wire["sent"] = time.perf_counter()

    try:
        result: httpx.Response | BaseException = await client.get(
            f"/v1/queries/{query_id}", params={"wait": wait_s}, extensions={"trace": trace}
        )
    except httpx.HTTPError as exc:
        result = exc
    sent = wire.get("sent", started)
    return sent, time.perf_counter(), result, sent - started


async def _measure_loop_lag(lags: list[float], period_s: float = 0.01) -> None:
    """How late this event loop wakes a timer: what its own busyness adds to every figure."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(period_s)
        lags.append(time.perf_counter() - asked - period_s)


def _lateness(
    sent: float,
    answered: float,
    status: str,
    wait_s: float,
    cancel: tuple[float, float, str] | None,
) -> tuple[float, bool]:
    """How late a poll answered after its end (its query's cancellation, or its wait's end,
    whichever came first), and whether its answer fits that end. A cancellation's commit lies
    between the DELETE's sending and its answer; the answer is taken as the end."""
    wait_end = sent + wait_s
    cancelled_at = cancel[1] if cancel is not None and cancel[2] == "2xx" else None
    end = min(wait_end, cancelled_at) if cancelled_at is not None else wait_end
    if status in TERMINAL:  # only a cancellation finishes a query here
        return answered - end, cancel is not None and answered >= cancel[0]
    return answered - end, answered >= wait_end - 0.05  # not before its wait ends


def submitters(
    stack: Stack, *, submitters: int, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    """(b) ``submitters`` clients submitting back to back for ``duration_s``, no worker running.

    Also counts the queries stored whose client got no 202 (a timeout, a dropped connection),
    once the API has stopped."""
    latencies: list[float] = []
    outcomes = Counter[str]()

    async def one_client(number: int, client: httpx.AsyncClient, deadline: float) -> None:
        i = 0
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            body = {"prompt": f"load submit {number}-{i}", "max_new_tokens": 16}
            try:
                result: httpx.Response | BaseException = await client.post("/v1/queries", json=body)
                latencies.append(time.perf_counter() - sent)
            except httpx.HTTPError as exc:
                result = exc
            outcomes[outcome(result)] += 1
            i += 1
            if isinstance(result, httpx.Response) and result.status_code in (429, 503):
                await asyncio.sleep(min(float(result.headers.get("Retry-After", 1)), 5))

    async def run() -> float:
        clients = [client_for(stack, timeout_s=timeout_s) for _ in range(submitters)]
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(one_client(n, c, deadline) for n, c in enumerate(clients)))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(client.aclose() for client in clients))
        return elapsed

    with healthz_probe(stack) as healthz:
        elapsed = asyncio.run(run())
    stack.stop("api")  # what it still had in hand is written, or never will be
    with get_engine().connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM queries")).scalar_one()
    return {
        "submitters": submitters, "duration_s": duration_s, "client_timeout_s": timeout_s,
        "seconds": round(elapsed, 1), "requests": sum(outcomes.values()),
        "submits_per_s": round(outcomes["2xx"] / elapsed, 1), "outcomes": dict(outcomes),
        "latency": percentiles_ms(latencies), "stored_without_202": stored - outcomes["2xx"],
        "healthz": healthz,
    }  # fmt: skip
