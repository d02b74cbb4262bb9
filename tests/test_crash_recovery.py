"""Workers killed with SIGKILL mid-call, and broker messages lost: every query still finishes,
answered and charged once per tier."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import redis
from sqlalchemy import func, select

from services.db import session_scope
from services.models import BudgetPeriod, ModelCall, Tenant
from services.tenants import set_budget
from tests.celery_workers import CeleryBeat, CeleryWorker, wait_until_exited
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for


def charges(query_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            select(ModelCall.tier, func.count())
            .where(ModelCall.query_id == uuid.UUID(query_id))
            .group_by(ModelCall.tier)
        )
        return dict(rows.all())


def active_task_pid(worker: CeleryWorker, query_id: str) -> int:
    from workers.app import app

    def find() -> int | None:
        active = app.control.inspect(destination=[worker.name], timeout=2).active() or {}
        for task in active.get(worker.name, []):
            if query_id in str(task["args"]):
                return int(task["worker_pid"])
        return None

    return wait_for(find, timeout=30, what=f"a worker process to hold query {query_id}")


def test_pool_process_killed_mid_call_is_replaced_and_the_query_charged_once(
    log_dir: Path,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    worker = CeleryWorker(
        f"crash-{uuid.uuid4().hex[:4]}", log_dir=log_dir, pool="prefork", concurrency=2
    ).start()
    try:
        tenant = make_tenant()
        with session_scope() as session:
            name = session.get_one(Tenant, tenant.tenant_id).name
            set_budget(session, name=name, period="monthly", hard_limit=Decimal(1), soft_limit=None)
        prompt = unique("killed while generating")
        small_tgi.script(prompt, answer="survived", hold=True)
        query_id = tenant.submit(prompt)["id"]
        assert small_tgi.arrived[prompt].wait(timeout=30)
        victim = active_task_pid(worker, query_id)
        os.kill(victim, signal.SIGKILL)
        wait_until_exited(victim)
        small_tgi.release(prompt)

        query = tenant.wait_finished(query_id)
        assert query["status"] == "succeeded"
        assert query["answer"] == "survived"
        assert small_tgi.calls[prompt] == 2
        assert charges(query_id) == {"small": 1}
        with session_scope() as session:  # settled once: nothing left reserved
            period = session.scalars(
                select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant.tenant_id)
            ).one()
            charged = session.scalars(
                select(ModelCall.cost).where(ModelCall.query_id == uuid.UUID(query_id))
            ).one()
        assert period.reserved == 0
        assert period.spent == charged
    finally:
        worker.stop()


def test_whole_worker_killed_during_the_large_call_is_recovered_by_another_worker(
    log_dir: Path,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    victim = CeleryWorker(f"victim-{uuid.uuid4().hex[:4]}", log_dir=log_dir).start()
    survivor = None
    try:
        tenant = make_tenant(target_escalation_rate=0.5)
        for i in range(WARMUP):
            warm = unique(f"warm {i}")
            small_tgi.script(warm, margin=0.8 + i / 100)
            tenant.wait_finished(tenant.submit(warm)["id"])
        prompt = unique("escalated, then the worker dies")
        small_tgi.script(prompt, margin=0.01)
        large_tgi.script(prompt, answer="from the large model", hold=True)
        query_id = tenant.submit(prompt)["id"]
        assert large_tgi.arrived[prompt].wait(timeout=30)
        victim.kill()
        large_tgi.release(prompt)
        assert tenant.get(query_id)["status"] == "escalated"

        survivor = CeleryWorker(f"survivor-{uuid.uuid4().hex[:4]}", log_dir=log_dir).start()
        query = tenant.wait_finished(query_id, timeout=90)
        assert query["status"] == "succeeded"
        assert query["tier"] == "large"
        assert query["answer"] == "from the large model"
        assert small_tgi.calls[prompt] == 1
        assert large_tgi.calls[prompt] == 2
        assert charges(query_id) == {"small": 1, "large": 1}
    finally:
        victim.stop()
        if survivor is not None:
            survivor.stop()


def test_queries_whose_messages_were_lost_are_requeued_by_the_sweep(
    log_dir: Path,
    broker: redis.Redis,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompts = [unique(f"lost message {i}") for i in range(5)]
    ids = [tenant.submit(prompt)["id"] for prompt in prompts]
    broker.flushdb()  # Redis lost every message; Postgres still has the queries
    assert all(tenant.get(query_id)["status"] == "queued" for query_id in ids)

    worker = CeleryWorker(f"sweep-{uuid.uuid4().hex[:4]}", log_dir=log_dir).start()
    beat = CeleryBeat(log_dir=log_dir).start()
    try:
        finished = [tenant.wait_finished(query_id, timeout=60) for query_id in ids]
        assert all(q["status"] == "succeeded" for q in finished)
        assert all(small_tgi.calls[prompt] == 1 for prompt in prompts)
        assert all(charges(query_id) == {"small": 1} for query_id in ids)
    finally:
        beat.stop()
        worker.stop()
