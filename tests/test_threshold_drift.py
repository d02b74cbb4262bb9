"""Windowed thresholds, the drift alert and the threshold audit API, end to end: the API, a real
worker reading TWOTIER_THRESHOLD_* and a webhook receiver."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.db import session_scope
from services.threshold import replay_threshold
from tests.celery_workers import CeleryWorker
from tests.conftest import WARMUP, TenantApi, forget_earlier_work
from tests.scripted_tgi import ScriptedTGI
from tests.test_webhooks import add_endpoint, api_get
from tests.webhook_receiver import WebhookReceiver

WINDOW = 40
STEADY, SHIFTED = WARMUP + 60, 40
TARGET = 0.3


@pytest.fixture(scope="module")
def windowed_worker(log_dir: Path) -> Iterator[CeleryWorker]:
    forget_earlier_work()
    # Over 40 decisions chance alone moves the realised rate by about 0.07 and the PSI (10
    # bins) by about 9 / 40: the alert here is the PSI's alone, with its limit well above.
    settings = {
        "TWOTIER_THRESHOLD_HISTORY": "window",
        "TWOTIER_THRESHOLD_WINDOW": str(WINDOW),
        "TWOTIER_THRESHOLD_DRIFT_PSI": "1.5",
        "TWOTIER_THRESHOLD_DRIFT_RATE_TOLERANCE": "1",
    }
    worker = CeleryWorker(f"window-{uuid.uuid4().hex[:6]}", log_dir=log_dir, env=settings)
    yield worker.start()
    worker.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def _run(
    tenant: TenantApi, small_tgi: ScriptedTGI, margins: list[float], unique: Callable[[str], str]
) -> list[dict[str, Any]]:
    ids = []
    for i, margin in enumerate(margins):
        prompt = unique(f"drift {margin} {i}")
        small_tgi.script(prompt, answer="small", margin=margin)
        ids.append(tenant.submit(prompt, task="drift")["id"])
    return [tenant.wait_finished(query_id) for query_id in ids]


def test_a_shift_in_margins_alerts_once_and_the_window_follows_it(
    windowed_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    receiver: WebhookReceiver,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=TARGET)
    path = f"/hooks/{uuid.uuid4().hex[:8]}"
    endpoint = add_endpoint(tenant, receiver.url + path, event_types=["threshold.drift_detected"])
    rng = random.Random(17)
    steady = _run(tenant, small_tgi, [rng.uniform(0.5, 1.0) for _ in range(STEADY)], unique)
    [scope] = api_get(tenant, "/v1/thresholds")["data"]
    assert scope["drift"] == "ok"
    assert scope["margins"] == STEADY
    assert 0 < scope["realised_escalation_rate"] < 2 * TARGET

    shifted = _run(tenant, small_tgi, [rng.uniform(0.0, 0.3) for _ in range(SHIFTED)], unique)
    [alert] = receiver.wait_for(path)
    data = alert.verified(endpoint["secret"])["data"]
    assert data["scope_id"] == scope["scope"]
    assert data["window"] == WINDOW
    assert data["margin_psi"] > 1.5
    [scope] = api_get(tenant, "/v1/thresholds")["data"]
    assert scope["drift"] == "drift"
    assert scope["margins"] == STEADY + SHIFTED
    assert scope["drift_changed_at"] is not None

    # The last decision's threshold is the quantile of the last 40 margins, all of the new
    # traffic, and reproducible from the stored history.
    last = max(shifted, key=lambda query: query["threshold_version"])
    assert last["threshold_window"] == WINDOW
    assert last["threshold_scope"] == scope["scope"]
    assert last["threshold"] < 0.3
    with session_scope() as session:
        assert last["threshold"] == replay_threshold(
            session,
            scope_id=scope["scope"],
            threshold_version=last["threshold_version"],
            target_escalation_rate=TARGET,
            window=WINDOW,
        )
    assert all(
        query["threshold_window"] is None for query in steady if query["decision"] == "warmup"
    )
    assert len(receiver.at(path)) == 1  # the scope stayed in drift: one alert


def test_the_history_pages_through_every_decision_with_its_version(
    windowed_worker: CeleryWorker,
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=TARGET)
    finished = _run(tenant, small_tgi, [i / 30 for i in range(30)], unique)
    by_id = {query["id"]: query for query in finished}
    [scope] = api_get(tenant, "/v1/thresholds")["data"]
    url = f"/v1/thresholds/{scope['scope']}/history"
    first = api_get(tenant, f"{url}?limit=20")
    assert first["scope"]["scope"] == scope["scope"]
    assert [d["threshold_version"] for d in first["data"]] == list(range(30, 10, -1))
    assert first["next_before_version"] == 11
    rest = api_get(tenant, f"{url}?limit=20&before_version=11")
    assert [d["threshold_version"] for d in rest["data"]] == list(range(10, 0, -1))
    assert rest["next_before_version"] is None
    for decision in first["data"] + rest["data"]:
        query = by_id[decision["query"]]
        assert decision["margin"] == query["margin"]
        assert decision["threshold"] == query["threshold"]
        assert decision["escalated"] == query["escalated"]
        assert decision["decision"] == query["decision"]

    other = make_tenant()
    response = other.client.get(url, headers=other.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
