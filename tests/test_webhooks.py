"""Webhooks end to end: API -> outbox in Postgres -> Redis -> real Celery worker -> a receiver
in the test process, every delivery verified with the `standardwebhooks` reference library."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.db import session_scope
from services.models import Tenant, WebhookDelivery
from tests.conftest import ADMIN_TOKEN, WEBHOOK_RETRY_SCHEDULE_S, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.test_cascade import UNSURE, warm_up
from tests.waiting import wait_for
from tests.webhook_receiver import Received, WebhookReceiver

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def path() -> str:
    """A receiver path of one test's own, so deliveries of other tests never mix in."""
    return f"/hooks/{uuid.uuid4().hex[:8]}"


def add_endpoint(tenant: TenantApi, url: str, **body: Any) -> dict[str, Any]:
    response = tenant.client.post("/v1/webhooks", json={"url": url, **body}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def finish_a_query(tenant: TenantApi, small_tgi: ScriptedTGI, prompt: str) -> dict[str, Any]:
    """Submit a query the small tier answers confidently, and wait until it is finished."""
    small_tgi.script(prompt, margin=0.9)
    return tenant.wait_finished(tenant.submit(prompt)["id"])


def api_get(tenant: TenantApi, path: str) -> Any:
    response = tenant.client.get(path, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


def attempt_log(tenant: TenantApi, endpoint_id: str) -> list[dict[str, Any]]:
    logged: list[dict[str, Any]] = api_get(tenant, f"/v1/webhooks/{endpoint_id}/attempts")["data"]
    return logged


def get_endpoint(tenant: TenantApi, endpoint_id: str) -> dict[str, Any]:
    view: dict[str, Any] = api_get(tenant, f"/v1/webhooks/{endpoint_id}")
    return view


def dead_letters(tenant: TenantApi) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = api_get(tenant, "/v1/webhooks/dead-letters")["data"]
    return letters


def events(received: list[Received], secret: str) -> list[str]:
    return [r.verified(secret)["type"] for r in received]


def test_a_finished_query_is_delivered_signed_with_its_details(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path)
    assert endpoint["secret"].startswith("whsec_")
    prompt = unique("Is water wet?")
    small_tgi.script(prompt, answer="Yes", margin=0.9)
    query = tenant.wait_finished(tenant.submit(prompt, metadata={"order": 7})["id"])

    [delivery] = receiver.wait_for(path)
    payload = delivery.verified(endpoint["secret"])
    assert payload["type"] == "query.succeeded"
    assert delivery.webhook_id.startswith("msg_")
    data = payload["data"]
    assert data["query_id"] == query["id"]
    assert (data["status"], data["tier"], data["answer"]) == ("succeeded", "small", "Yes")
    assert data["metadata"] == {"order": 7}
    assert data["margin"] == pytest.approx(query["margin"])
    assert data["decision"] == query["decision"] == "warmup"
    assert Decimal(data["cost"]) == Decimal(query["cost"]["total"]) > 0


def test_an_escalated_query_sends_escalated_then_succeeded(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.3)
    warm_up(tenant, small_tgi, unique)
    endpoint = add_endpoint(
        tenant, receiver.url + path, event_types=["query.escalated", "query.succeeded"]
    )
    prompt = unique("Who wrote it?")
    small_tgi.script(prompt, answer="Maybe", margin=UNSURE)
    large_tgi.script(prompt, answer="Nobody knows")
    query = tenant.wait_finished(tenant.submit(prompt)["id"])
    assert query["tier"] == "large"

    # Deliveries may arrive in any order (as the specification warns); the events' own
    # timestamps tell the order they happened in.
    received = receiver.wait_for(path, count=2)
    escalated, succeeded = sorted(received, key=lambda r: r.payload["timestamp"])
    assert events([escalated, succeeded], endpoint["secret"]) == [
        "query.escalated",
        "query.succeeded",
    ]
    assert escalated.payload["data"]["threshold"] == pytest.approx(query["threshold"])
    assert escalated.payload["data"]["answer"] is None
    assert succeeded.payload["data"]["tier"] == "large"
    assert succeeded.payload["data"]["answer"] == "Nobody knows"
    assert escalated.webhook_id != succeeded.webhook_id


def test_event_filter_and_thin_payload(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    only_failures = f"/hooks/failures-{uuid.uuid4().hex[:6]}"
    thin = f"/hooks/thin-{uuid.uuid4().hex[:6]}"
    add_endpoint(tenant, receiver.url + only_failures, event_types=["query.failed"])
    thin_endpoint = add_endpoint(tenant, receiver.url + thin, thin_payload=True)
    prompt = unique("Thin?")
    small_tgi.script(prompt, answer="Yes", margin=0.9)
    tenant.wait_finished(tenant.submit(prompt)["id"])

    [delivery] = receiver.wait_for(thin)
    data = delivery.verified(thin_endpoint["secret"])["data"]
    assert "answer" not in data
    assert data["status"] == "succeeded"
    with session_scope() as session:
        to_failures = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.url == receiver.url + only_failures)
        ).all()
    assert to_failures == []
    assert receiver.at(only_failures) == []


def test_a_failing_receiver_is_retried_with_the_same_webhook_id(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path)
    receiver.answer_next(path, 500)
    finish_a_query(tenant, small_tgi, unique("Retry me"))

    first, second = receiver.wait_for(path, count=2)
    assert first.webhook_id == second.webhook_id
    assert first.body == second.body
    assert second.verified(endpoint["secret"])["type"] == "query.succeeded"
    attempts = wait_for(
        lambda: log if len(log := attempt_log(tenant, endpoint["id"])) == 2 else None,
        timeout=10,
        what="two logged attempts",
    )
    assert [a["status_code"] for a in attempts] == [200, 500]  # newest first
    assert {a["message_id"] for a in attempts} == {first.webhook_id}
    assert len(receiver.at(path)) == 2  # delivered once: no attempt after the 200


def test_retry_after_is_honoured(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    add_endpoint(tenant, receiver.url + path)
    receiver.answer_next(path, (429, {"Retry-After": "2"}))
    finish_a_query(tenant, small_tgi, unique("Slow down"))

    first, second = receiver.wait_for(path, count=2)
    # The schedule alone would retry after 0.3 s (±20 %); Retry-After asks for 2 s, capped at
    # the schedule's longest delay, 0.9 s here.
    assert second.arrived_s - first.arrived_s >= max(WEBHOOK_RETRY_SCHEDULE_S)
    assert first.webhook_id == second.webhook_id


def test_410_disables_the_endpoint(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path)
    receiver.answer_next(path, 410)
    finish_a_query(tenant, small_tgi, unique("Gone"))
    receiver.wait_for(path)

    view = wait_for(
        lambda: (v := get_endpoint(tenant, endpoint["id"]))["enabled"] is False and v,
        timeout=10,
        what="the endpoint to be disabled",
    )
    assert "410" in view["disabled_reason"]
    finish_a_query(tenant, small_tgi, unique("After gone"))
    assert len(receiver.at(path)) == 1  # nothing more is sent to a disabled endpoint
    [dead] = dead_letters(tenant)
    assert dead["endpoint_id"] == endpoint["id"]


def test_a_receiver_down_for_every_attempt_ends_in_dead_letters_and_replay_delivers(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path)
    attempts = len(WEBHOOK_RETRY_SCHEDULE_S)
    receiver.answer_next(path, *[503] * attempts)
    finish_a_query(tenant, small_tgi, unique("Nobody home"))

    failed = receiver.wait_for(path, count=attempts)
    [dead] = wait_for(lambda: dead_letters(tenant), timeout=15, what="a dead letter")
    assert dead["attempts"] == attempts
    assert dead["message_id"] == failed[0].webhook_id
    assert "503" in dead["last_error"]
    assert dead["event_type"] == "query.succeeded"

    response = tenant.client.post(
        f"/v1/webhooks/dead-letters/{dead['id']}/replay", headers=tenant.headers
    )
    assert response.status_code == 202, response.text
    replayed = receiver.wait_for(path, count=attempts + 1)[-1]
    assert replayed.webhook_id == failed[0].webhook_id
    assert replayed.verified(endpoint["secret"])["data"]["status"] == "succeeded"
    wait_for(lambda: not dead_letters(tenant), timeout=10, what="the dead letter to go")
    again = tenant.client.post(
        f"/v1/webhooks/dead-letters/{dead['id']}/replay", headers=tenant.headers
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "webhook_not_replayable"


def test_during_a_rotation_both_secrets_verify(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path)
    rotated = tenant.client.post(
        f"/v1/webhooks/{endpoint['id']}/secret/rotate", headers=tenant.headers
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"]
    assert rotated.json()["previous_secret_expires_at"] is not None
    finish_a_query(tenant, small_tgi, unique("Rotate"))

    [delivery] = receiver.wait_for(path)
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    assert delivery.verified(new_secret)["type"] == "query.succeeded"
    assert delivery.verified(endpoint["secret"])["type"] == "query.succeeded"


def test_a_query_webhook_url_overrides_the_endpoints(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    registered = f"/hooks/registered-{uuid.uuid4().hex[:6]}"
    add_endpoint(tenant, receiver.url + registered)
    secret = tenant.client.get("/v1/webhooks/callback-secret", headers=tenant.headers).json()
    prompt = unique("Call me back")
    small_tgi.script(prompt, answer="Sure", margin=0.9)
    query = tenant.submit(prompt, webhook_url=receiver.url + path)
    assert query["webhook_url"] == receiver.url + path
    tenant.wait_finished(query["id"])

    [delivery] = receiver.wait_for(path)
    assert delivery.verified(secret["secret"])["data"]["answer"] == "Sure"
    assert receiver.at(registered) == []


def test_cancelling_sends_query_cancelled(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + path, event_types=["query.cancelled"])
    prompt = unique("Cancel me")
    small_tgi.script(prompt, margin=0.9, hold=True)
    query = tenant.submit(prompt)
    response = tenant.client.delete(f"/v1/queries/{query['id']}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    small_tgi.release(prompt)

    [delivery] = receiver.wait_for(path)
    data = delivery.verified(endpoint["secret"])
    assert (data["type"], data["data"]["query_id"]) == ("query.cancelled", query["id"])


def test_budget_events(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    path: str,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0)
    endpoint = add_endpoint(
        tenant,
        receiver.url + path,
        event_types=["budget.soft_limit_crossed", "budget.exhausted"],
    )
    set_budget(tenant, budget_period="daily", budget_soft_limit="0")
    prompt = unique("Spend")
    small_tgi.script(prompt, margin=0.9)
    tenant.wait_finished(tenant.submit(prompt, max_new_tokens=4)["id"])
    [soft] = receiver.wait_for(path)
    soft_event = soft.verified(endpoint["secret"])
    assert soft_event["type"] == "budget.soft_limit_crossed"
    assert Decimal(soft_event["data"]["spent"]) > 0

    set_budget(tenant, budget_hard_limit="0.000001")
    for _ in range(2):  # refused twice, alerted once
        refused = tenant.client.post("/v1/queries", json={"prompt": "hi"}, headers=tenant.headers)
        assert refused.status_code == 402, refused.text
    _, exhausted = receiver.wait_for(path, count=2)
    exhausted_event = exhausted.verified(endpoint["secret"])
    assert exhausted_event["type"] == "budget.exhausted"
    assert exhausted_event["data"]["hard_limit"] == "0.0000010000"
    assert len(receiver.at(path)) == 2
    with session_scope() as session:
        assert session.get_one(Tenant, tenant.tenant_id).webhook_secret.startswith("whsec_")


def set_budget(tenant: TenantApi, **budget: str) -> None:
    response = tenant.client.patch(
        f"/v1/admin/tenants/{tenant.tenant_id}",
        json=budget,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "webhook_url_refused"),
        ("http://10.1.2.3/hook", "webhook_url_refused"),
        ("http://[::ffff:169.254.169.254]/hook", "webhook_url_refused"),
        ("ftp://example.com/hook", "invalid_request"),
        ("http://user:pass@127.0.0.1/hook", "webhook_url_refused"),
        ("http://no-such-host.invalid/hook", "webhook_url_unresolvable"),
    ],
)
def test_urls_that_could_reach_inside_are_refused(
    make_tenant: Callable[..., TenantApi], url: str, code: str
) -> None:
    tenant = make_tenant()
    for response in (
        tenant.client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers),
        tenant.client.post(
            "/v1/queries", json={"prompt": "hi", "webhook_url": url}, headers=tenant.headers
        ),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
    assert tenant.client.get("/v1/webhooks", headers=tenant.headers).json()["data"] == []


def test_loopback_is_refused_without_the_allowlist(
    client: TestClient, make_tenant: Callable[..., TenantApi], receiver: WebhookReceiver
) -> None:
    from services.api.deps import current_settings
    from services.settings import get_settings

    tenant = make_tenant()
    strict = get_settings().model_copy(update={"webhook_allowed_networks": []})
    client.app.dependency_overrides[current_settings] = lambda: strict  # type: ignore[attr-defined]
    try:
        for url in (receiver.url + "/hook", "http://localhost:9/hook", "http://[::1]/hook"):
            response = tenant.client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "webhook_url_refused"
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]


def test_endpoints_are_the_tenants_own(
    make_tenant: Callable[..., TenantApi], receiver: WebhookReceiver
) -> None:
    owner, other = make_tenant(), make_tenant()
    endpoint = add_endpoint(owner, receiver.url + "/mine")
    for method, suffix in [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("GET", "/secret"),
        ("POST", "/secret/rotate"),
        ("GET", "/attempts"),
    ]:
        response = other.client.request(
            method,
            f"/v1/webhooks/{endpoint['id']}{suffix}",
            json={} if method == "PATCH" else None,
            headers=other.headers,
        )
        assert response.status_code == 404, (method, suffix, response.text)
    assert other.client.get("/v1/webhooks", headers=other.headers).json()["data"] == []

    updated = owner.client.patch(
        f"/v1/webhooks/{endpoint['id']}",
        json={"event_types": ["query.failed"], "description": "failures"},
        headers=owner.headers,
    )
    assert updated.json()["event_types"] == ["query.failed"]
    deleted = owner.client.delete(f"/v1/webhooks/{endpoint['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    assert owner.client.get("/v1/webhooks", headers=owner.headers).json()["data"] == []
