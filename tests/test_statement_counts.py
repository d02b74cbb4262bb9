"""The SQL each stage of a query sends, pinned so that a change that adds round trips shows.

The stages run in this process, one at a time, against the scripted model servers: submit and
poll through the API, each tier through the same service function its Celery task calls.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services import cascade, completion
from services.api.app import create_app
from services.db import session_factory, session_scope
from services.models import Query, QueryStatus, Tier
from services.runtime import Runtime
from services.settings import get_settings
from services.tenants import create_tenant
from tests.conftest import WARMUP
from tests.scripted_tgi import ScriptedTGI
from tests.sql_counter import counted_statements, sent_statements

# Submit: authenticate, insert. Small tier: claim (select, update), then lock the query with its
# tenant and price, charge, lock the scope, append the margin, update query and scope. Large
# tier: claim (2), then lock, charge, update. Poll: authenticate, read, costs.
MOST = {"submit": 2, "small": 8, "large": 5, "poll": 3}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[Tier, uuid.UUID]] = []

    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        self.sent.append((tier, query_id))

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        raise AssertionError("no tenant here has webhook endpoints")

    def feed_batches(self) -> None:
        raise AssertionError("no batch is fed here")

    def is_reachable(self) -> bool:
        return True


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[TestClient, dict[str, str]]]:
    with session_scope() as session:
        key = create_tenant(
            session, name=f"statements-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3
        ).api_key
    with TestClient(create_app(Recorder())) as client:
        yield client, {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    built = Runtime(get_settings())
    yield built
    built.close()


def _stages(
    api: tuple[TestClient, dict[str, str]], runtime: Runtime, prompt: str
) -> tuple[dict[str, int], cascade.Outcome]:
    client, headers = api
    counts = {}
    with counted_statements() as counted:
        response = client.post("/v1/queries", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 202, response.text
    counts["submit"] = counted.total()
    query_id = uuid.UUID(response.json()["id"])
    with counted_statements() as counted:
        outcome = cascade.answer_on_tier(query_id, Tier.SMALL, runtime).outcome
    counts["small"] = counted.total()
    if outcome is cascade.Outcome.ESCALATE:
        with counted_statements() as counted:
            answered = cascade.answer_on_tier(query_id, Tier.LARGE, runtime)
            assert answered.outcome is cascade.Outcome.ANSWERED
        counts["large"] = counted.total()
    with counted_statements() as counted:
        polled = client.get(f"/v1/queries/{query_id}", headers=headers).json()
    counts["poll"] = counted.total()
    assert polled["status"] == "succeeded"
    return counts, outcome


def test_each_stage_of_a_query_sends_at_most_its_statements(
    api: tuple[TestClient, dict[str, str]],
    runtime: Runtime,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    for i in range(WARMUP + 2):  # the warm-up, then confident queries past it
        prompt = unique(f"confident {i}")
        small_tgi.script(prompt, margin=0.5 + i / 100)
        counts, outcome = _stages(api, runtime, prompt)
        assert outcome is cascade.Outcome.ANSWERED
        if i > 0:  # the first query of a scope also creates the scope's row
            assert all(counts[stage] <= MOST[stage] for stage in counts), counts
    prompt = unique("unsure")
    small_tgi.script(prompt, margin=0.01)
    counts, outcome = _stages(api, runtime, prompt)
    assert outcome is cascade.Outcome.ESCALATE
    assert all(counts[stage] <= MOST[stage] for stage in counts), counts
    assert sum(counts.values()) <= sum(MOST.values())


def test_no_stage_of_a_query_reads_the_tenants_signing_secrets(
    api: tuple[TestClient, dict[str, str]],
    runtime: Runtime,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    # Every stage loads the tenant; its secrets (decrypted on load) sign webhooks only.
    prompt = unique("unsure")
    small_tgi.script(prompt, margin=0.01)
    with sent_statements() as sent:
        _stages(api, runtime, prompt)
    assert any("tenants.id" in statement for statement in sent)  # the tenant is read
    assert not [s for s in sent if "webhook_secret" in s or "webhook_previous_secrets" in s]


def _new_query() -> uuid.UUID:
    with session_scope() as session:
        tenant = create_tenant(
            session, name=f"waiter-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3
        ).tenant
        query = Query(
            tenant_id=tenant.id, status=QueryStatus.RUNNING, prompt="p", max_new_tokens=1,
            delivery_attempts=1,
        )  # fmt: skip
        session.add(query)
    return query.id


def test_a_committed_finish_wakes_a_waiter_through_postgres_and_a_rolled_back_one_does_not() -> (
    None
):
    query_id = _new_query()
    database_url = get_settings().database_url
    waiters = completion.Waiters()  # not this process's: only PostgreSQL can wake it
    try:
        _finish_and_roll_back(waiters, query_id, database_url)
    finally:
        waiters.stop_listening()


def _finish_and_roll_back(
    waiters: completion.Waiters, query_id: uuid.UUID, database_url: str
) -> None:
    with waiters.waiting_for(query_id, database_url) as finished:
        with session_factory()() as session:
            session.execute(
                update(Query).where(Query.id == query_id).values(status=QueryStatus.SUCCEEDED)
            )
            session.rollback()
        assert not finished.wait(1.0)
        done = threading.Event()

        def finish() -> None:
            with session_scope() as session:
                session.execute(
                    update(Query).where(Query.id == query_id).values(status=QueryStatus.SUCCEEDED)
                )
            done.set()

        threading.Thread(target=finish).start()
        assert finished.wait(10.0)
        assert done.wait(10.0)
