"""A worker SIGKILLed with a hundred calls in flight, and queue messages lost: every query
finishes, is charged once per tier, and no model is called for a query while an earlier call
for it still runs; with the default settings, within a minute of the fault. A long backlog in
the queue is never sent twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from services.db import session_scope
from services.models import BudgetPeriod, ModelCall, Query, Tenant, utcnow
from services.settings import Settings
from services.tenants import set_budget
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for

# The recovery settings at their defaults, as deployed (tests.conftest shortens them).
DEFAULT_RECOVERY = {
    f"TWOTIER_{name.upper()}": str(Settings.model_fields[name].default)
    for name in (
        "task_lease_s",
        "stuck_after_s",
        "recovery_interval_s",
        "broker_visibility_timeout_s",
        "broker_restore_interval_s",
    )
}
TARGET_S = 60


@pytest.fixture(autouse=True)
def no_earlier_backlog() -> None:
    """Each test counts and times its own queries: none that earlier modules left unfinished
    (the sweep would send those again, into this test's queue and worker)."""
    forget_earlier_work()


@pytest.fixture
def slow_tgi() -> Iterator[ScriptedTGI]:
    server = ScriptedTGI("test/small-4bit").start()
    yield server
    server.stop()


def tenant_with_budget(make_tenant: Callable[..., TenantApi]) -> TenantApi:
    tenant = make_tenant(target_escalation_rate=0.0)
    with session_scope() as session:
        name = session.get_one(Tenant, tenant.tenant_id).name
        set_budget(session, name=name, period="monthly", hard_limit=Decimal(100), soft_limit=None)
    return tenant


def assert_answered_once(
    tenant: TenantApi, ids: list[str], prompts: list[str], server: ScriptedTGI
) -> None:
    """Succeeded, one ledger row each, never two calls for a query at once, budget settled."""
    finished = [tenant.get(query_id) for query_id in ids]
    assert [query["status"] for query in finished] == ["succeeded"] * len(ids)
    with session_scope() as session:
        rows = dict(
            session.execute(
                select(ModelCall.query_id, func.count())
                .where(ModelCall.query_id.in_([uuid.UUID(i) for i in ids]))
                .group_by(ModelCall.query_id)
            ).all()
        )
        period = session.scalars(
            select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant.tenant_id)
        ).one()
        spent = session.scalar(
            select(func.sum(ModelCall.cost)).where(
                ModelCall.query_id.in_([uuid.UUID(i) for i in ids])
            )
        )
    assert sorted(rows.values()) == [1] * len(ids)
    assert [server.overlapping[prompt] for prompt in prompts] == [0] * len(prompts)
    assert period.reserved == 0
    assert period.spent == spent


def test_sigkill_with_a_hundred_calls_in_flight_loses_and_repeats_nothing(
    log_dir: Path,
    slow_tgi: ScriptedTGI,
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    slow_tgi.delay_s = 4.0
    # A lease longer than the calls: a server may go on with a call whose client died, and
    # the next call for its query must not start before that one ends.
    env = {"TWOTIER_SMALL__URL": slow_tgi.url, "TWOTIER_TASK_LEASE_S": "8"}
    victim = CeleryWorker(f"victim-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=env).start()
    survivor = beat = None
    try:
        tenant = tenant_with_budget(make_tenant)
        prompts = [unique(f"in flight when killed {i}") for i in range(100)]
        ids = [tenant.submit(prompt)["id"] for prompt in prompts]
        wait_for(
            lambda: slow_tgi.in_flight >= 90,
            timeout=30,
            what=f"90 calls in flight (now {slow_tgi.in_flight})",
        )
        victim.kill()

        survivor = CeleryWorker(f"survivor-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=env)
        survivor.start()
        beat = CeleryBeat(log_dir=log_dir, env=env).start()
        for query_id in ids:
            tenant.wait_finished(query_id, timeout=90)
    finally:
        victim.stop()
        for process in (survivor, beat):
            if process is not None:
                process.stop()
    assert_answered_once(tenant, ids, prompts, slow_tgi)
    assert all(slow_tgi.calls[prompt] <= 2 for prompt in prompts)


def test_a_killed_workers_queries_finish_within_a_minute_with_the_default_settings(
    log_dir: Path,
    slow_tgi: ScriptedTGI,
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    slow_tgi.delay_s = 2.0
    env = {"TWOTIER_SMALL__URL": slow_tgi.url, **DEFAULT_RECOVERY}
    victim = CeleryWorker(f"victim-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=env).start()
    beat = CeleryBeat(log_dir=log_dir, env=env).start()
    replacement = None
    try:
        tenant = tenant_with_budget(make_tenant)
        prompts = [unique(f"killed with the defaults {i}") for i in range(30)]
        ids = [tenant.submit(prompt)["id"] for prompt in prompts]
        wait_for(lambda: slow_tgi.in_flight >= 30, timeout=30, what="30 calls in flight")
        victim.kill()
        fault = time.monotonic()

        replacement = CeleryWorker(
            f"replacement-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=env
        ).start()
        for query_id in ids:
            tenant.wait_finished(query_id, timeout=TARGET_S - (time.monotonic() - fault))
        recovered_in_s = time.monotonic() - fault
    finally:
        victim.stop()
        beat.stop()
        if replacement is not None:
            replacement.stop()
    assert recovered_in_s < TARGET_S
    assert_answered_once(tenant, ids, prompts, slow_tgi)


def test_lost_messages_are_sent_again_within_a_minute_with_the_default_settings(
    log_dir: Path,
    broker: redis.Redis,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = tenant_with_budget(make_tenant)
    forget_leftover_messages(broker)
    prompts = [unique(f"message lost {i}") for i in range(20)]
    ids = [tenant.submit(prompt)["id"] for prompt in prompts]
    assert broker.llen("small") == len(ids)  # no worker takes the queue yet
    broker.delete("small")  # Redis lost the queue; PostgreSQL still has the queries
    fault = time.monotonic()

    worker = CeleryWorker(
        f"after-loss-{uuid.uuid4().hex[:4]}", log_dir=log_dir, env=DEFAULT_RECOVERY
    ).start()
    beat = CeleryBeat(log_dir=log_dir, env=DEFAULT_RECOVERY).start()
    try:
        for query_id in ids:
            tenant.wait_finished(query_id, timeout=TARGET_S - (time.monotonic() - fault))
    finally:
        beat.stop()
        worker.stop()
    assert time.monotonic() - fault < TARGET_S
    assert_answered_once(tenant, ids, prompts, small_tgi)
    assert [small_tgi.calls[prompt] for prompt in prompts] == [1] * len(prompts)


def test_a_waiting_backlog_is_not_sent_twice_but_its_lost_messages_are(
    log_dir: Path,
    broker: redis.Redis,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    """No worker takes the small queue: its 30 messages wait there while the sweep runs every
    second with a 3 s threshold. Then the 10 oldest are lost."""
    tenant = tenant_with_budget(make_tenant)
    forget_leftover_messages(broker)
    prompts = [unique(f"backlog {i}") for i in range(30)]
    ids = [tenant.submit(prompt)["id"] for prompt in prompts]
    maintenance = CeleryWorker(
        f"maintenance-{uuid.uuid4().hex[:4]}", log_dir=log_dir, queues="maintenance"
    ).start()
    beat = CeleryBeat(log_dir=log_dir).start()
    small = None
    try:
        sweeps_done = sweeps_in(maintenance.log_path)
        wait_for(
            lambda: sweeps_in(maintenance.log_path) >= sweeps_done + 5,
            timeout=30,
            what="five sweeps",
        )
        assert broker.llen("small") == len(ids)

        # The 10 oldest messages are lost; their queries were sent a minute before the rest.
        for _ in range(10):
            broker.rpop("small")
        with session_scope() as session:
            session.execute(
                update(Query)
                .where(Query.id.in_([uuid.UUID(i) for i in ids[:10]]))
                .values(updated_at=utcnow() - timedelta(minutes=1))
            )
        wait_for(lambda: broker.llen("small") == len(ids), timeout=30, what="the lost 10 again")
        sweeps_done = sweeps_in(maintenance.log_path)
        wait_for(
            lambda: sweeps_in(maintenance.log_path) >= sweeps_done + 3,
            timeout=30,
            what="three more sweeps",
        )
        assert broker.llen("small") == len(ids)

        small = CeleryWorker(f"small-{uuid.uuid4().hex[:4]}", log_dir=log_dir, queues="small")
        small.start()
        for query_id in ids:
            tenant.wait_finished(query_id)
    finally:
        beat.stop()
        maintenance.stop()
        if small is not None:
            small.stop()
    assert [small_tgi.calls[prompt] for prompt in prompts] == [1] * len(prompts)


def forget_leftover_messages(broker: redis.Redis) -> None:
    """The queue holds only this test's messages: a worker stopped by an earlier test hands
    back what it had taken (for queries that test saw finished), and a count of the queue, or
    losing its oldest messages, must not take those for this test's."""
    broker.delete("small")


def sweeps_in(worker_log: Path) -> int:
    return sum(
        "twotier.requeue_stuck_queries" in line and "succeeded" in line
        for line in worker_log.read_text().splitlines()
    )
