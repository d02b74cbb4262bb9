"""Load from many tenants over real HTTP on loopback, bounded in count and time: submit and
poll throughput, the error rate, and the invariants afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import TenantApi
from tests.invariants import check_invariants
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread

pytestmark = pytest.mark.usefixtures("worker")

TENANTS = 20
QUERIES_PER_TENANT = 15
CONCURRENCY = 32


def test_many_tenants_at_once(
    api_server: ServerThread,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenants = [make_tenant() for _ in range(TENANTS)]
    work = [
        (tenant, unique(f"load {t}-{q}"))
        for t, tenant in enumerate(tenants)
        for q in range(QUERIES_PER_TENANT)
    ]
    for i, (_, prompt) in enumerate(work):
        small_tgi.script(prompt, margin=(i % 97) / 100)

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], float, float]:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=api_server.url, limits=limits, timeout=60) as client:

            async def submit(tenant: TenantApi, prompt: str) -> httpx.Response:
                async with gate:
                    return await client.post(
                        "/v1/queries", json={"prompt": prompt}, headers=tenant.headers
                    )

            async def poll(tenant: TenantApi, query_id: str) -> httpx.Response:
                async with gate:
                    return await client.get(
                        f"/v1/queries/{query_id}", params={"wait": 30}, headers=tenant.headers
                    )

            started = time.perf_counter()
            submits = await asyncio.gather(*(submit(t, p) for t, p in work))
            submitted = time.perf_counter() - started
            polls = await asyncio.gather(
                *(
                    poll(tenant, response.json()["id"])
                    for (tenant, _), response in zip(work, submits, strict=True)
                    if response.status_code == 202
                )
            )
            return submits, polls, submitted, time.perf_counter() - started

    submits, polls, submit_s, total_s = asyncio.run(run())
    statuses = Counter(r.status_code for r in [*submits, *polls])
    ids = [r.json()["id"] for r in submits if r.status_code == 202]
    figures = check_invariants(ids, [tenant.tenant_id for tenant in tenants])
    figures |= {
        "tenants": TENANTS,
        "submits_per_s": round(len(submits) / submit_s, 1),
        "queries_finished_per_s": round(len(ids) / total_s, 1),
        "http_statuses": dict(statuses),
        "error_rate": round(
            sum(n for s, n in statuses.items() if s >= 400) / sum(statuses.values()), 4
        ),
    }
    print("\nload run:", figures)
    assert statuses == {200: len(work), 202: len(work)}
    assert figures["statuses"] == {"succeeded": len(work)}
    assert figures["lost"] == figures["double_charges"] == 0
    assert figures["answered_without_a_charge"] == 0
