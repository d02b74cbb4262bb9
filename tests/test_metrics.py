"""Prometheus metrics after queries run end to end: API -> Redis -> `twotier worker` -> TGI.

The api's metrics server (on its own port, not the API's) and the worker's metrics server (its
prefork pool processes share their metrics through PROMETHEUS_MULTIPROC_DIR) are scraped over
HTTP like Prometheus does. tests/test_api_deployed.py scrapes `twotier api --workers 2`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from services.api.app import create_app
from services.api.metrics_port import serve_api_metrics
from services.db import session_scope
from services.metrics import QUEUES, WEBHOOK_OUTCOMES
from services.models import ModelCall, Tenant
from services.settings import get_settings
from services.tenants import set_budget
from tests.celery_workers import CeleryWorker
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for
from workers.celery_dispatcher import CeleryDispatcher

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def api_metrics_url() -> Iterator[str]:
    """The api's metrics server, as `twotier api` starts it, serving this process's metrics
    (the test client's app runs in it)."""
    port = free_port()
    server, thread = serve_api_metrics(get_settings(), host="127.0.0.1", port=port)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def worker_metrics_url(log_dir: Path) -> Iterator[str]:
    """A worker started as deployed (`twotier worker`) with its metrics server on."""
    port = free_port()
    worker = CeleryWorker(
        f"metrics-{uuid.uuid4().hex[:6]}",
        log_dir=log_dir,
        env={"TWOTIER_WORKER_METRICS_PORT": str(port)},
        via_cli=True,
    ).start()
    yield f"http://127.0.0.1:{port}/metrics"
    worker.stop()


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    matches = [v for (n, have), v in samples.items() if n == name and wanted <= have]
    assert matches, f"no {name}{labels} among {sorted({n for n, _ in samples})}"
    return sum(matches)


def run_queries(tenant: TenantApi, small_tgi: ScriptedTGI, large_tgi: ScriptedTGI,
                unique: Callable[[str], str]) -> list[dict[str, object]]:  # fmt: skip
    """The warm-up, then one confident and one escalated query, all in the task 'metrics'."""
    finished = []
    prompts = [unique(f"warm-up {i}") for i in range(WARMUP)]
    for i, prompt in enumerate(prompts):
        small_tgi.script(prompt, answer="fine", margin=0.8 + i / 100)
    confident, unsure = unique("confident"), unique("unsure")
    small_tgi.script(confident, answer="Yes", margin=0.95)
    small_tgi.script(unsure, answer="Maybe", margin=0.01)
    large_tgi.script(unsure, answer="Surely")
    for prompt in [*prompts, confident, unsure]:
        query = tenant.wait_finished(tenant.submit(prompt, task="metrics")["id"])
        assert query["status"] == "succeeded", query
        finished.append(query)
    return finished


def test_api_and_worker_expose_every_metric_after_queries_run(
    api_metrics_url: str,
    worker_metrics_url: str,
    client: TestClient,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.3)
    queries = run_queries(tenant, small_tgi, large_tgi, unique)
    escalated = queries[-1]
    assert escalated["tier"] == "large"
    broke = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, broke.tenant_id).name
        set_budget(session, name=name, period="monthly", hard_limit=Decimal(0), soft_limit=None)
    refused = broke.client.post("/v1/queries", json={"prompt": "hi"}, headers=broke.headers)
    assert refused.status_code == 402

    assert client.get("/metrics").status_code == 404  # not on the API's own port
    api = parse(httpx.get(api_metrics_url, timeout=5).text)
    tenant_id, broke_id = str(tenant.tenant_id), str(broke.tenant_id)
    assert value(api, "twotier_queries_total", status="queued", tier="small") >= len(queries)
    for queue in QUEUES:
        assert value(api, "twotier_queue_depth", queue=queue) >= 0
    assert value(api, "twotier_broker_up") == 1
    for status in ("queued", "running", "escalated"):
        assert value(api, "twotier_unfinished_queries", status=status) >= 0
    assert value(api, "twotier_budget_rejections_total", tenant=broke_id) == 1
    for outcome in WEBHOOK_OUTCOMES:
        assert value(api, "twotier_webhook_deliveries_total", outcome=outcome) == 0

    # The worker's numbers come from its pool processes, which ran the queries.
    worker = wait_for(
        lambda: (
            (s := parse(httpx.get(worker_metrics_url, timeout=5).text))
            and ("twotier_queries_total", frozenset({("status", "succeeded"), ("tier", "large")}))
            in s
            and s
        ),
        timeout=10,
        what="the worker's metrics to show the escalated query",
    )
    scope = {"tenant": tenant_id, "task": "metrics"}
    decisions = "twotier_escalation_decisions_total"
    assert value(worker, decisions, **scope, decision="warmup", escalated="false") == WARMUP
    assert value(worker, decisions, **scope, decision="at_or_above_threshold") == 1
    assert value(worker, decisions, **scope, decision="below_threshold", escalated="true") == 1
    assert value(worker, "twotier_threshold", **scope) == pytest.approx(escalated["threshold"])
    assert value(worker, "twotier_threshold_version", **scope) == WARMUP + 2
    assert value(worker, "twotier_target_escalation_rate", **scope) == pytest.approx(0.3)
    assert value(worker, "twotier_margin_count") >= len(queries)
    assert value(worker, "twotier_margin_bucket", le="0.02") >= 1  # the escalated one's 0.01
    assert value(worker, "twotier_queries_total", status="succeeded", tier="small") >= WARMUP + 1
    assert value(worker, "twotier_queries_total", status="escalated", tier="large") >= 1
    assert value(worker, "twotier_queries_total", status="succeeded", tier="large") >= 1
    calls = "twotier_model_call_seconds_count"
    assert value(worker, calls, tier="small", outcome="ok") >= len(queries)
    assert value(worker, calls, tier="large", model=large_tgi.model_id, outcome="ok") >= 1
    assert value(worker, "twotier_model_call_seconds_sum", tier="small") > 0
    with session_scope() as session:
        spent = session.scalar(
            select(func.sum(ModelCall.cost)).where(ModelCall.tenant_id == tenant.tenant_id)
        )
    assert value(worker, "twotier_cost_total", tenant=tenant_id) == pytest.approx(float(spent))
    assert value(worker, "twotier_cost_total", tenant=tenant_id, tier="large") > 0
    assert value(worker, "twotier_tokens_total", tenant=tenant_id, direction="output") > 0


def test_the_public_port_serves_metrics_only_when_turned_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWOTIER_API_PUBLIC_METRICS", "true")
    get_settings.cache_clear()
    try:
        with TestClient(create_app(CeleryDispatcher())) as public:
            scraped = public.get("/metrics")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert scraped.status_code == 200
    assert "twotier_queue_depth" in scraped.text
