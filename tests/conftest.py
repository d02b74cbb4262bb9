"""Test environment: a fresh PostgreSQL database migrated by Alembic, a Redis database, two
scripted TGI servers, and (per module) real Celery worker processes."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.engine import make_url

from services.completion import waiters
from services.db import forget_engines, get_engine, open_database, session_scope
from services.migrate import upgrade_to_head
from services.models import TERMINAL_STATUSES, Query, QueryStatus, utcnow
from services.settings import get_settings
from services.tenants import create_tenant
from tests.api_process import ApiProcess
from tests.celery_workers import CeleryWorker
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread
from tests.waiting import wait_for

ADMIN_POSTGRES_URL = os.environ.get(
    "TWOTIER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_REDIS_URL = os.environ.get("TWOTIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WARMUP = 4
ADMIN_TOKEN = "test-admin-token-0123456789"
LEASE_S = 3
WEBHOOK_RETRY_SCHEDULE_S = [0, 0.3, 0.6, 0.9]
SECRETS_KEY = Fernet.generate_key().decode()  # this session's key for secrets at rest


@pytest.fixture(scope="session")
def small_tgi() -> Iterator[ScriptedTGI]:
    server = ScriptedTGI("test/small-4bit").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def large_tgi() -> Iterator[ScriptedTGI]:
    server = ScriptedTGI("test/large").start()
    yield server
    server.stop()


# The model of the middle tier that tests/three_tiers.py adds to the cascade.
MIDDLE_MODEL = "test/middle"


@pytest.fixture(scope="module")
def middle_tgi() -> Iterator[ScriptedTGI]:
    server = ScriptedTGI(MIDDLE_MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def environment(small_tgi: ScriptedTGI, large_tgi: ScriptedTGI) -> Iterator[dict[str, str]]:
    """Point every process (this one and the workers) at throwaway databases."""
    database = f"twotier_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    database_url = make_url(ADMIN_POSTGRES_URL).set(
        drivername="postgresql+psycopg", database=database
    )
    env = {
        "TWOTIER_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "TWOTIER_BROKER_URL": TEST_REDIS_URL,
        "TWOTIER_SMALL__BACKEND": "tgi",
        "TWOTIER_SMALL__URL": small_tgi.url,
        "TWOTIER_SMALL__MODEL": small_tgi.model_id,
        "TWOTIER_SMALL__TIMEOUT_S": "30",
        "TWOTIER_LARGE__BACKEND": "tgi",
        "TWOTIER_LARGE__URL": large_tgi.url,
        "TWOTIER_LARGE__MODEL": large_tgi.model_id,
        "TWOTIER_WARMUP_QUERIES": str(WARMUP),
        "TWOTIER_TASK_LEASE_S": str(LEASE_S),
        "TWOTIER_BROKER_VISIBILITY_TIMEOUT_S": "8",
        "TWOTIER_BROKER_RESTORE_INTERVAL_S": "1",
        "TWOTIER_STUCK_AFTER_S": "3",
        "TWOTIER_RECOVERY_INTERVAL_S": "1",
        "TWOTIER_LOG_JSON": "false",
        "TWOTIER_ADMIN_TOKEN": ADMIN_TOKEN,
        "TWOTIER_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "TWOTIER_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(WEBHOOK_RETRY_SCHEDULE_S),
        "TWOTIER_WEBHOOK_TIMEOUT_S": "3",
        "TWOTIER_WEBHOOK_RELAY_INTERVAL_S": "1",
        "TWOTIER_TASK_RETRIES": "2",
        "TWOTIER_SECRETS_KEYS": SECRETS_KEY,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    open_database(get_settings())
    waiters.stop_listening()
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    upgrade_to_head()
    yield env
    for leftover in list(CeleryWorker.running):
        leftover.stop()
    get_engine().dispose()
    forget_engines()
    waiters.stop_listening()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    with psycopg.connect(ADMIN_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def forget_earlier_work() -> None:
    """Cancel the unfinished queries that earlier modules left (those that test the API with
    no worker running) and empty the queues, so that a module's workers start on its own work
    alone rather than on a backlog the recovery sweep would keep sending them."""
    unfinished = [QueryStatus.QUEUED, QueryStatus.RUNNING, QueryStatus.ESCALATED]
    with session_scope() as session:
        session.execute(
            update(Query)
            .where(Query.status.in_(unfinished))
            .values(status=QueryStatus.CANCELLED, lease_expires_at=None, finished_at=utcnow())
        )
    redis.Redis.from_url(TEST_REDIS_URL).delete(
        "small", "large", "webhooks", "maintenance", "unacked", "unacked_index"
    )


@contextmanager
def settings_in_env(settings: dict[str, str]) -> Iterator[None]:
    """``settings`` in this process's environment (and its settings read again) until the
    block ends; then the session's."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def worker(log_dir: Path) -> Iterator[CeleryWorker]:
    """One real worker process (`twotier worker`: a pool of threads) consuming every queue."""
    forget_earlier_work()
    process = CeleryWorker(f"worker-{uuid.uuid4().hex[:6]}", log_dir=log_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    from services.api.app import create_app
    from workers.celery_dispatcher import CeleryDispatcher

    with TestClient(create_app(CeleryDispatcher())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def api_server() -> Iterator[ServerThread]:
    """The API over real HTTP on a loopback port, as clients under load reach it."""
    from services.api.app import create_app
    from workers.celery_dispatcher import CeleryDispatcher

    server = ServerThread(create_app(CeleryDispatcher())).start()
    yield server
    server.stop()


@pytest.fixture
def api_process(log_dir: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Starts `twotier api` processes (``api_process(workers=2, some_setting="1")``) and stops
    them after the test."""
    started: list[ApiProcess] = []

    def start(*, workers: int = 1, **settings: str) -> ApiProcess:
        log_path = log_dir / f"api-{uuid.uuid4().hex[:8]}.log"
        started.append(ApiProcess(log_path, workers=workers, **settings))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def broker() -> redis.Redis:
    return redis.Redis.from_url(TEST_REDIS_URL)


@dataclass
class TenantApi:
    """A tenant and the calls it makes through the REST API."""

    client: TestClient
    tenant_id: uuid.UUID
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def submit(self, prompt: str, **body: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/queries", json={"prompt": prompt, **body}, headers=self.headers
        )
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    def get(self, query_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/queries/{query_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_finished(self, query_id: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (q := self.get(query_id))["status"] in TERMINAL_STATUSES and q,
            timeout=timeout,
            what=f"query {query_id} to finish",
        )


def new_tenant_api(client: TestClient, *, target_escalation_rate: float = 0.3) -> TenantApi:
    """A new tenant, calling the API through ``client`` with its key."""
    with session_scope() as session:
        created = create_tenant(
            session,
            name=f"tenant-{uuid.uuid4().hex[:10]}",
            target_escalation_rate=target_escalation_rate,
        )
    return TenantApi(client, created.tenant.id, created.api_key)


@pytest.fixture
def make_tenant(client: TestClient) -> Callable[..., TenantApi]:
    def make(target_escalation_rate: float = 0.3) -> TenantApi:
        return new_tenant_api(client, target_escalation_rate=target_escalation_rate)

    return make


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Prompts unique to one test, so scripted answers never leak between tests."""
    run = uuid.uuid4().hex[:8]
    return lambda text: f"{text} [{run}]"
