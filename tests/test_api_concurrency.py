"""The api under more concurrent requests than it has threads and connections: no 500, no
wedge, overload answered 503 with Retry-After, and long polls that hold neither a thread nor
a database connection while they wait."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select, text

from services.completion import waiters
from services.db import get_engine, session_scope
from services.models import Query
from tests.api_process import ApiProcess
from tests.conftest import TenantApi
from tests.server_thread import ServerThread
from tests.waiting import wait_for

CLIENTS = 150


async def _burst(url: str, tenant: TenantApi, prompts: list[str]) -> list[httpx.Response]:
    """Every prompt submitted at once, each client also polling, listing and probing."""
    # Idle connections are dropped well before the server's keep-alive timeout (5 s), so that
    # none is reused just as the server closes it.
    limits = httpx.Limits(max_connections=len(prompts) * 2, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one_client(prompt: str) -> list[httpx.Response]:
            submitted = await client.post(
                "/v1/queries", json={"prompt": prompt}, headers=tenant.headers
            )
            answers = [submitted, await client.get("/healthz")]
            if submitted.status_code == 202:
                query_id = submitted.json()["id"]
                answers.append(
                    await client.get(
                        f"/v1/queries/{query_id}", params={"wait": 0.2}, headers=tenant.headers
                    )
                )
            answers.append(await client.get("/v1/queries", headers=tenant.headers))
            return answers

        results = await asyncio.gather(*(one_client(prompt) for prompt in prompts))
    return [response for answers in results for response in answers]


def _stored(tenant: TenantApi) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(Query).where(Query.tenant_id == tenant.tenant_id)
        )


def test_more_clients_than_threads_and_connections_get_answers_not_500s(
    api_process: Callable[..., ApiProcess],
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    api = api_process(database_pool_size="2", api_database_threads="2")
    tenant = make_tenant()
    responses = asyncio.run(_burst(api.url, tenant, [unique(f"c{i}") for i in range(CLIENTS)]))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {202: CLIENTS, 200: 3 * CLIENTS}, statuses
    assert _stored(tenant) == CLIENTS


def test_overload_is_503_with_retry_after_and_nothing_half_written(
    api_process: Callable[..., ApiProcess],
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    api = api_process(api_database_threads="1", api_max_waiting_requests="5")
    tenant = make_tenant()
    responses = asyncio.run(_burst(api.url, tenant, [unique(f"o{i}") for i in range(CLIENTS)]))
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {200, 202, 503}, statuses
    assert statuses[503] > 0, statuses
    refused = [response for response in responses if response.status_code == 503]
    assert {response.json()["error"]["code"] for response in refused} == {"overloaded"}
    assert all(response.headers["Retry-After"] == "1" for response in refused)
    health = [response for response in responses if response.request.url.path == "/healthz"]
    assert {response.status_code for response in health} == {200}
    # A refused submit stored nothing; an accepted one is stored once.
    assert _stored(tenant) == statuses[202]


def test_a_long_poll_holds_no_thread_and_no_connection_while_it_waits(
    api_server: ServerThread, make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    """No worker runs in this module, so the query waits until the test cancels it."""
    tenant = make_tenant()
    query_id = tenant.submit(unique("wait for me"))["id"]
    pollers = 60
    threads_before = threading.active_count()

    async def run() -> tuple[list[httpx.Response], float, dict[str, int]]:
        limits = httpx.Limits(max_connections=pollers + 5)
        async with httpx.AsyncClient(base_url=api_server.url, limits=limits, timeout=60) as client:
            polls = [
                asyncio.create_task(
                    client.get(
                        f"/v1/queries/{query_id}", params={"wait": 30}, headers=tenant.headers
                    )
                )
                for _ in range(pollers)
            ]
            await asyncio.sleep(0)  # let the requests go out
            waiting = await asyncio.to_thread(
                wait_for,
                lambda: get_engine().pool.checkedout() == 0 and _registered(query_id) == pollers,
                timeout=20,
                what="every poll to wait with its connection back in the pool",
            )
            assert waiting
            during = {
                "threads": threading.active_count(),
                "checked_out": get_engine().pool.checkedout(),
                "healthz": (await client.get("/healthz")).status_code,
            }
            cancelled_at = time.monotonic()
            cancel = await client.delete(f"/v1/queries/{query_id}", headers=tenant.headers)
            assert cancel.status_code == 200, cancel.text
            answered = await asyncio.gather(*polls)
            return answered, time.monotonic() - cancelled_at, during

    answered, answered_after_s, during = asyncio.run(run())
    assert during["checked_out"] == 0
    assert during["healthz"] == 200
    # Sixty waiting polls add no thread per poll (a few for the server's own pools at most).
    assert during["threads"] - threads_before < 20, (threads_before, during)
    assert {response.json()["status"] for response in answered} == {"cancelled"}
    assert answered_after_s < 10, "the polls were answered by their deadline, not the cancel"


def test_a_long_polls_deadline_counts_from_its_arrival(
    api_server: ServerThread, make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    query_id = tenant.submit(unique("never answered here"))["id"]
    started = time.monotonic()
    response = httpx.get(
        f"{api_server.url}/v1/queries/{query_id}",
        params={"wait": 1.5},
        headers=tenant.headers,
        timeout=30,
    )
    took = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert 1.5 <= took < 5


def test_a_long_polls_wait_includes_its_wait_for_the_database(
    api_server: ServerThread, make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    """A poll whose key check waits (here on a lock the test holds on the tenants table) has
    spent that wait: it answers once the database lets it, not ``wait`` seconds later."""
    tenant = make_tenant()
    query_id = tenant.submit(unique("never answered here"))["id"]
    wait_s = 2.0
    with ThreadPoolExecutor(1) as pool, get_engine().connect() as blocker:
        blocker.execute(text("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"))
        sent = time.monotonic()
        poll = pool.submit(
            httpx.get,
            f"{api_server.url}/v1/queries/{query_id}",
            params={"wait": wait_s},
            headers=tenant.headers,
            timeout=30,
        )
        assert wait_for(
            lambda: _waiting_on_a_lock() > 0, timeout=10, what="the key check to wait on the lock"
        )
        assert wait_for(
            lambda: time.monotonic() > sent + wait_s + 1, timeout=10, what="the poll's wait to end"
        )
        blocker.rollback()
        released = time.monotonic()
        response = poll.result(timeout=30)
    answered_after_s = time.monotonic() - released
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    assert answered_after_s < wait_s, "the poll waited its whole wait again after the lock"


def _waiting_on_a_lock() -> int:
    with get_engine().connect() as connection:
        return int(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        )


def _registered(query_id: str) -> int:
    return waiters.count(uuid.UUID(query_id))
