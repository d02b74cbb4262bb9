"""Authentication, tenant isolation and secrets: every route but health and the docs needs a key;
one tenant's queries, usage, webhooks and dead letters are 404 to another; the admin API takes
only the admin token; keys and webhook secrets never reach a log line or an error body; keys are
compared in constant time."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi.testclient import TestClient

from services import tenants
from services.api import deps
from services.logs import configure_logging
from services.tenants import hash_key, key_matches
from tests.celery_workers import CeleryWorker
from tests.conftest import ADMIN_TOKEN, WEBHOOK_RETRY_SCHEDULE_S, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.usefixtures("worker")

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Served without a key on purpose: liveness, readiness and the API's own documentation. The
# metrics are not on this port (services.api.metrics_port).
OPEN_PATHS = {"/healthz", "/readyz"}
# The test's own HTTP client logs the URLs it calls, one with a key in it on purpose.
CLIENT_LOGGERS = {"httpx", "httpx2", "httpcore"}
DOCUMENTATION_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def near_miss(api_key: str) -> str:
    """The same public prefix, one character of the secret changed."""
    last = "A" if api_key[-1] != "A" else "B"
    return api_key[:-1] + last


def secret_part(api_key: str) -> str:
    return api_key.split("_", 2)[2]


# Every route needs a key


def app_routes(routes: list[Any]) -> Iterator[tuple[str, str]]:
    """(method, path template) of every route. FastAPI keeps an included router as one entry
    that holds the router (``original_router``); its routes carry their full paths."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from app_routes(included.routes)
            continue
        for method in sorted(set(route.methods or {"GET"}) - {"HEAD", "OPTIONS"}):
            yield method, route.path


def every_route(client: TestClient) -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every route of the app, path parameters filled in."""
    app = client.app
    templates = list(app_routes(app.routes))  # type: ignore[attr-defined]
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in operations
    }
    assert documented <= {(m, re.sub(r":\w+\}", "}", p)) for m, p in templates}
    for method, template in templates:
        yield method, re.sub(r"\{(\w+)(:\w+)?\}", lambda _: str(uuid.uuid4()), template)


def revoked_key(client: TestClient, tenant: TenantApi) -> str:
    issued = client.post(f"/v1/admin/tenants/{tenant.tenant_id}/keys", headers=ADMIN).json()
    revoked = client.delete(
        f"/v1/admin/tenants/{tenant.tenant_id}/keys/{issued['id']}", headers=ADMIN
    )
    assert revoked.status_code == 200, revoked.text
    return str(issued["api_key"])


def test_every_route_but_health_and_docs_refuses_a_missing_or_bad_key(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant()
    bad_keys = {
        "none": None,
        "garbage": "garbage",
        "near_miss": near_miss(tenant.api_key),
        "revoked": revoked_key(client, tenant),
    }
    open_paths = set()
    routes = list(every_route(client))
    assert len(routes) > 30
    for method, path in routes:
        for name, key in bad_keys.items():
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            body = {} if method in {"POST", "PUT", "PATCH"} else None
            response = client.request(method, path, headers=headers, json=body)
            if response.status_code != 401:
                open_paths.add(path)
                assert 200 <= response.status_code < 300, (method, path, name, response.text)
                continue
            error = response.json()["error"]
            expected = {"unauthenticated"} if key is None else {"invalid_api_key"}
            assert error["code"] in expected | {"admin_token_required"}, error
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert open_paths == OPEN_PATHS | DOCUMENTATION_PATHS


def test_the_revoked_key_stops_working_and_the_other_key_keeps_working(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant()
    revoked = revoked_key(client, tenant)
    response = client.get("/v1/queries", headers={"Authorization": f"Bearer {revoked}"})
    assert response.status_code == 401
    assert client.get("/v1/queries", headers=tenant.headers).status_code == 200


def test_admin_routes_refuse_tenant_keys_and_the_admin_token_is_no_tenant(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant()
    admin_routes = [(m, p) for m, p in every_route(client) if p.startswith("/v1/admin")]
    assert len(admin_routes) >= 10
    for method, path in admin_routes:
        response = client.request(
            method, path, headers=tenant.headers, json={} if method in {"PUT", "PATCH"} else None
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "admin_token_required"
    tenant_routes = [
        (m, p)
        for m, p in every_route(client)
        if p.startswith("/v1/") and not p.startswith("/v1/admin")
    ]
    for method, path in tenant_routes:
        response = client.request(
            method, path, headers=ADMIN, json={} if method in {"POST", "PATCH"} else None
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"


# One tenant's things are 404 to another


def finished_query_with_a_dead_letter(
    tenant: TenantApi,
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A finished query of ``tenant``, its endpoint, and that endpoint's dead letter (the
    receiver refused every attempt)."""
    path = f"/hooks/{uuid.uuid4().hex[:8]}"
    created = tenant.client.post(
        "/v1/webhooks", json={"url": receiver.url + path}, headers=tenant.headers
    )
    assert created.status_code == 201, created.text
    receiver.answer_next(path, *[503] * len(WEBHOOK_RETRY_SCHEDULE_S))
    prompt = unique("Whose is this?")
    small_tgi.script(prompt, answer="Mine", margin=0.9)
    query = tenant.wait_finished(tenant.submit(prompt, metadata={"owner": "a"})["id"])
    [dead] = wait_for(
        lambda: tenant.client.get("/v1/webhooks/dead-letters", headers=tenant.headers).json()[
            "data"
        ],
        timeout=20,
        what="a dead letter",
    )
    return query, created.json(), dead


def test_another_tenant_gets_404_for_queries_webhooks_and_dead_letters(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    owner, other = make_tenant(), make_tenant()
    query, endpoint, dead = finished_query_with_a_dead_letter(owner, receiver, small_tgi, unique)
    client = other.client
    for method, path in [
        ("GET", f"/v1/queries/{query['id']}"),
        ("GET", f"/v1/queries/{query['id']}?wait=30"),
        ("DELETE", f"/v1/queries/{query['id']}"),
        ("GET", f"/v1/webhooks/{endpoint['id']}"),
        ("PATCH", f"/v1/webhooks/{endpoint['id']}"),
        ("DELETE", f"/v1/webhooks/{endpoint['id']}"),
        ("GET", f"/v1/webhooks/{endpoint['id']}/secret"),
        ("POST", f"/v1/webhooks/{endpoint['id']}/secret/rotate"),
        ("GET", f"/v1/webhooks/{endpoint['id']}/attempts"),
        ("POST", f"/v1/webhooks/dead-letters/{dead['id']}/replay"),
    ]:
        started = time.monotonic()
        response = client.request(
            method, path, headers=other.headers, json={} if method == "PATCH" else None
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
        assert time.monotonic() - started < 10  # `wait` does not wait on a 404
    assert client.get("/v1/queries", headers=other.headers).json()["data"] == []
    assert client.get("/v1/webhooks", headers=other.headers).json()["data"] == []
    listed = client.get(
        f"/v1/webhooks/dead-letters?endpoint_id={endpoint['id']}", headers=other.headers
    )
    assert listed.json()["data"] == []

    # The owner's things are untouched, and still the owner's.
    assert owner.get(query["id"])["status"] == "succeeded"
    endpoint_now = client.get(f"/v1/webhooks/{endpoint['id']}", headers=owner.headers).json()
    assert endpoint_now["enabled"] is True
    owner_dead = client.get("/v1/webhooks/dead-letters", headers=owner.headers).json()["data"]
    assert [letter["id"] for letter in owner_dead] == [dead["id"]]


def test_usage_and_idempotency_keys_are_per_tenant(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    owner, other = make_tenant(), make_tenant()
    prompt = unique("Count me")
    small_tgi.script(prompt, margin=0.9)
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    mine = owner.client.post(
        "/v1/queries", json={"prompt": prompt}, headers={**owner.headers, **key}
    ).json()
    owner.wait_finished(mine["id"])
    owner_usage = owner.client.get("/v1/usage", headers=owner.headers).json()
    other_usage = other.client.get("/v1/usage", headers=other.headers).json()
    assert owner_usage["buckets"]
    assert other_usage["buckets"] == []
    assert "succeeded" not in json.dumps(other_usage["queries"])

    theirs = other.client.post(
        "/v1/queries", json={"prompt": "another body"}, headers={**other.headers, **key}
    )
    assert theirs.status_code == 202, theirs.text  # not 409: the key is the owner's only
    assert theirs.json()["id"] != mine["id"]
    assert owner.get(mine["id"])["status"] == "succeeded"


# Secrets stay out of logs and error bodies


@pytest.fixture
def api_log(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What the api in this process logs, as JSON lines, while the test runs (read with the
    returned function). Loggers write to the real stderr, which stays valid after the test."""
    configure_logging(level="DEBUG", json=True, stream=sys.__stderr__)
    capfd.readouterr()
    captured: list[str] = []

    def read() -> str:
        out, err = capfd.readouterr()
        captured.append(out + err)
        return "".join(captured)

    yield read
    structlog.reset_defaults()


def test_keys_and_webhook_secrets_never_reach_logs_or_error_bodies(
    client: TestClient,
    worker: CeleryWorker,
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    api_log: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [ADMIN_TOKEN]
    error_bodies: list[str] = []

    def call(method: str, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = client.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            error_bodies.append(response.text)
        return response

    created = call("POST", "/v1/admin/tenants", ADMIN_TOKEN, json={"name": unique("secretive")})
    assert created.status_code == 201, created.text
    api_key = created.json()["api_key"]
    tenant_id = created.json()["tenant"]["id"]
    second_key = call("POST", f"/v1/admin/tenants/{tenant_id}/keys", ADMIN_TOKEN).json()
    secrets += [api_key, secret_part(api_key), second_key["api_key"]]

    # Failed authentication, in every way that sends something secret-looking.
    call("GET", "/v1/queries", near_miss(api_key))
    call("GET", "/v1/queries", api_key + "x")
    call("GET", "/v1/queries", ADMIN_TOKEN)
    call("GET", "/v1/admin/tenants", api_key)
    call("GET", "/v1/admin/tenants", near_miss(ADMIN_TOKEN))
    call("POST", "/v1/queries", api_key, json={"prompt": "", "stray": api_key})
    call("GET", f"/v1/queries?cursor={api_key}", api_key)
    secrets += [secret_part(near_miss(api_key)), near_miss(ADMIN_TOKEN)]

    # Webhook endpoints: created, secret read and rotated, the callback secret rotated.
    path = f"/hooks/{uuid.uuid4().hex[:8]}"
    endpoint = call("POST", "/v1/webhooks", api_key, json={"url": receiver.url + path}).json()
    first_secret = endpoint["secret"]
    rotated = call("POST", f"/v1/webhooks/{endpoint['id']}/secret/rotate", api_key).json()
    callback = call("POST", "/v1/webhooks/callback-secret/rotate", api_key).json()
    secrets += [first_secret, rotated["secret"], callback["secret"]]
    for secret in (first_secret, rotated["secret"], callback["secret"]):
        secrets.append(secret.removeprefix("whsec_"))

    # A query finishes on the worker and its event is delivered, signed by both secrets.
    prompt = unique("Tell no one")
    small_tgi.script(prompt, answer="Sealed", margin=0.9)
    submitted = call("POST", "/v1/queries", api_key, json={"prompt": prompt}).json()
    [delivery] = receiver.wait_for(path)
    assert delivery.verified(rotated["secret"])["data"]["query_id"] == submitted["id"]
    assert len(delivery.headers["webhook-signature"].split()) == 2

    call("DELETE", f"/v1/admin/tenants/{tenant_id}/keys/{second_key['id']}", ADMIN_TOKEN)
    call("GET", "/v1/queries", second_key["api_key"])  # revoked

    logs = {
        "api (structlog)": api_log(),
        "api (logging)": "\n".join(
            record.getMessage()
            for record in caplog.records
            if record.name.split(".")[0] not in CLIENT_LOGGERS
        ),
        "worker": wait_for(
            lambda: (text := worker.log_path.read_text()) and "webhook_attempt" in text and text,
            timeout=10,
            what="the worker to log the delivery",
        ),
    }
    assert "api_key_refused" in logs["api (structlog)"]  # the log was really captured
    assert "webhook_endpoint_created" in logs["api (structlog)"]
    assert len(error_bodies) >= 8
    for where, text in [*logs.items(), *(("error body", body) for body in error_bodies)]:
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {where}"
        assert "whsec_" not in text, f"a webhook secret appears in the {where}"


def test_a_logged_exception_shows_no_local_variables(capfd: pytest.CaptureFixture[str]) -> None:
    """An unexpected error inside authentication must not print the key it was checking."""
    api_key = f"tt_{'a' * 16}_{'s' * 43}"
    for json_lines in (True, False):
        configure_logging(json=json_lines, stream=sys.__stderr__)
        try:
            key_matches(api_key, None)  # type: ignore[arg-type]
        except AttributeError:
            structlog.get_logger("test").exception("unhandled_error")
        out, err = capfd.readouterr()
        assert "unhandled_error" in err
        assert "AttributeError" in err
        assert "s" * 43 not in out + err
    structlog.reset_defaults()


# Keys are compared in constant time


def test_keys_are_compared_in_constant_time_by_hash() -> None:
    api_key = f"tt_{'0' * 16}_{'k' * 43}"
    assert key_matches(api_key, hash_key(api_key))
    assert not key_matches(near_miss(api_key), hash_key(api_key))
    assert not key_matches(api_key, tenants.UNKNOWN_KEY_HASH)
    # The comparison is hmac.compare_digest, and authentication goes through it, also for a
    # prefix that matches no key; the admin token is compared the same way.
    assert {"hmac", "compare_digest"} <= set(key_matches.__code__.co_names)
    assert {"key_matches", "UNKNOWN_KEY_HASH"} <= set(tenants.authenticate.__code__.co_names)
    assert {"hmac", "compare_digest"} <= set(deps.require_admin.__code__.co_names)


def test_a_wrong_secret_with_a_right_prefix_is_refused(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant()
    for wrong in (near_miss(tenant.api_key), tenant.api_key[:-1] + "-"):
        response = client.get("/v1/queries", headers={"Authorization": f"Bearer {wrong}"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
