"""Faults on purpose, with the invariants of DESIGN.md checked after each run.

A few hundred queries from several tenants, with budgets and webhook endpoints, flow through
real worker processes while the test SIGKILLs the small, large and webhook workers, restarts
and empties Redis, stops PostgreSQL (the API answers 503 meanwhile), and makes the model servers
slow, failing and down. Afterwards every query must be finished, answered and charged at most
once per tier, no budget overspent, and every webhook delivered or in the dead letters.

These tests restart the machine's PostgreSQL and Redis: run them alone (CI runs one session).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.db import get_engine
from tests.celery_workers import CeleryBeat, CeleryWorker
from tests.conftest import ADMIN_TOKEN, TenantApi
from tests.invariants import all_finished, check_invariants, no_pending_webhooks
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver
from workers.app import app as celery_app

pytestmark = pytest.mark.chaos

TENANTS = 4
QUERIES_PER_TENANT = 75
HARD_LIMIT = Decimal("0.0008")  # lets each tenant pay for some of its queries, not all


@dataclass
class Pools:
    """One worker process per pool, restarted after each kill, and started again when it
    exits on its own, as compose (`restart: unless-stopped`) and Kubernetes do: a threads-pool
    worker that holds unacknowledged messages when Redis goes away exits (kombu cannot give
    them back to a server that is gone), and its queries wait for their leases to run out."""

    log_dir: Path
    workers: dict[str, CeleryWorker] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)

    def start(self, pool: str) -> None:
        queues = {"small": "small,maintenance", "large": "large", "webhooks": "webhooks"}[pool]
        name = f"chaos-{pool}-{uuid.uuid4().hex[:6]}"
        self.workers[pool] = CeleryWorker(name, log_dir=self.log_dir, queues=queues).start()

    def kill_and_restart(self, pool: str) -> None:
        self.workers[pool].kill()
        self.kills[pool] += 1
        self.start(pool)

    def restart_exited(self) -> None:
        for pool, worker in list(self.workers.items()):
            if worker.process is not None and worker.process.poll() is not None:
                self.exits[pool] += 1
                self.start(pool)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()


@pytest.fixture
def pools(log_dir: Path) -> Iterator[Pools]:
    running = Pools(log_dir)
    for pool in ("small", "large", "webhooks"):
        running.start(pool)
    beat = CeleryBeat(log_dir=log_dir).start()
    yield running
    beat.stop()
    running.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def restart_redis() -> None:
    """Stop Redis and start it again: it keeps nothing on disk, so every message is lost."""
    subprocess.run([_tool("redis-cli"), "-h", "127.0.0.1", "shutdown", "nosave"], check=False)
    wait_for(lambda: not _redis_answers(), timeout=30, what="Redis to stop")
    subprocess.run(
        [_tool("redis-server"), "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
         "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log"],
        check=True,
    )  # fmt: skip
    wait_for(_redis_answers, timeout=30, what="Redis to start")
    # This process's pooled Celery connections went with the old server: start new pools, as
    # Celery does after a fork (closing the old ones would fail every later send).
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed"
    return path


def _redis_answers() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", socket_timeout=1).ping())
    except redis.ConnectionError:
        return False


def postgres(action: str) -> None:
    version = sorted(Path("/etc/postgresql").iterdir())[-1].name
    subprocess.run(
        [_tool("pg_ctlcluster"), "--skip-systemctl-redirect", version, "main", action], check=True
    )


def give_budget(client: TestClient, tenant: TenantApi) -> None:
    response = client.patch(
        f"/v1/admin/tenants/{tenant.tenant_id}",
        json={"budget_period": "monthly", "budget_hard_limit": str(HARD_LIMIT)},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text


def script_prompts(
    rng: random.Random, small_tgi: ScriptedTGI, large_tgi: ScriptedTGI, prompts: list[str]
) -> None:
    """Mostly healthy calls, some transient 5xx, some tiers down for good."""
    for prompt in prompts:
        roll = rng.random()
        small_failures = [503, 500] if roll < 0.1 else [503] * 100 if roll < 0.13 else []
        large_failures = [503] if 0.2 < roll < 0.3 else [503] * 100 if roll > 0.97 else []
        small_tgi.script(prompt, answer="small", margin=rng.random(), failures=small_failures)
        large_tgi.script(prompt, answer="large", failures=large_failures)


@dataclass
class Run:
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    unavailable: int = 0


def submit_all(tenants: list[TenantApi], prompts: list[str], run: Run) -> None:
    for i, prompt in enumerate(prompts):
        tenant = tenants[i % len(tenants)]
        response = tenant.client.post(
            "/v1/queries", json={"prompt": prompt, "max_new_tokens": 8}, headers=tenant.headers
        )
        if response.status_code == 202:
            run.accepted.append(response.json()["id"])
        elif response.status_code == 402:
            run.refused += 1
        else:
            raise AssertionError(response.text)


def test_invariants_hold_while_everything_breaks(
    client: TestClient,
    make_tenant: Callable[..., TenantApi],
    pools: Pools,
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    rng = random.Random(20261125)
    tenants = [make_tenant(target_escalation_rate=0.3) for _ in range(TENANTS)]
    for tenant in tenants:
        give_budget(client, tenant)
        endpoint = client.post(
            "/v1/webhooks", json={"url": receiver.url + "/chaos"}, headers=tenant.headers
        )
        assert endpoint.status_code == 201, endpoint.text
    prompts = [unique(f"chaos {i}") for i in range(TENANTS * QUERIES_PER_TENANT)]
    script_prompts(rng, small_tgi, large_tgi, prompts)
    run = Run()
    faults: Counter[str] = Counter()
    batches = [prompts[i : i + 50] for i in range(0, len(prompts), 50)]
    injections: list[Callable[[], None]] = [
        lambda: pools.kill_and_restart("small"),
        lambda: pools.kill_and_restart("large"),
        lambda: pools.kill_and_restart("webhooks"),
        restart_redis,
        lambda: stop_postgres_and_check_503(client, tenants[0], faults),
        lambda: slow_models(small_tgi, large_tgi, faults),
    ]
    try:
        for batch, inject in zip(batches, injections, strict=True):
            submit_all(tenants, batch, run)
            inject()
        wait_for(
            lambda: pools.restart_exited() or all_finished(run.accepted),
            timeout=240,
            what="every query to finish",
        )
        wait_for(
            lambda: pools.restart_exited() or no_pending_webhooks(),
            timeout=120,
            what="every webhook delivered or dead",
        )
    finally:
        small_tgi.delay_s = large_tgi.delay_s = 0.0
    figures = check_invariants(
        run.accepted,
        [tenant.tenant_id for tenant in tenants],
        hard_limit=HARD_LIMIT,
        received_webhook_ids={r.webhook_id for r in receiver.at("/chaos")},
    )
    figures |= {
        "submits_refused_by_budget": run.refused,
        "faults_injected": len(injections),
        "workers_killed": dict(pools.kills),
        "workers_restarted_after_exiting": dict(pools.exits),
        "api_503_while_postgres_down": faults["api_503"],
    }
    print("\nchaos run:", figures)
    assert figures["lost"] == 0
    assert figures["double_charges"] == 0
    assert figures["answered_without_a_charge"] == 0
    assert figures["tenants_overspent"] == 0
    assert figures["budget_ledger_mismatches"] == 0
    assert figures["webhook_deliveries"].get("pending", 0) == 0
    assert figures["delivered_but_never_received"] == 0
    assert faults["api_503"] >= 1


def stop_postgres_and_check_503(
    client: TestClient, tenant: TenantApi, faults: Counter[str]
) -> None:
    postgres("stop")
    try:
        get_engine().dispose()
        response = client.get("/v1/queries", headers=tenant.headers)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        faults["api_503"] += 1
    finally:
        postgres("start")
    wait_for(
        lambda: client.get("/readyz").status_code == 200, timeout=60, what="the API to recover"
    )


def slow_models(small_tgi: ScriptedTGI, large_tgi: ScriptedTGI, faults: Counter[str]) -> None:
    small_tgi.delay_s = large_tgi.delay_s = 0.05
    faults["slow_models"] += 1
