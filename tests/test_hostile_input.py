"""Hostile input: oversize bodies, malformed Authorization headers, enormous numbers, and
SQL-ish or unicode garbage in every field. Each gets a 4xx in the one error shape, or is
accepted and stored exactly as sent; never a 5xx."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.settings import get_settings
from tests.conftest import ADMIN_TOKEN, TenantApi
from tests.server_thread import ServerThread
from workers.celery_dispatcher import CeleryDispatcher

SQLISH = "'; DROP TABLE queries;--"
RTL = "\u202etxt.exe\u202c \u200f\u05e9\u05dc\u05d5\u05dd\u200f"
EMOJI = "\U0001f600\U0001f469\u200d\U0001f4bb\U0001fae0"  # 4-byte UTF-8, one with a ZWJ
STORABLE = [SQLISH, RTL, EMOJI, "\\x00 is spelled, not sent", "\u00a0\ufeff\u2028"]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code


def raw_json(value: dict[str, Any]) -> bytes:
    """JSON as a hostile client writes it: escapes such as \\u0000 and lone \\ud800 kept."""
    return json.dumps(value).encode()


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantApi]) -> TenantApi:
    return make_tenant()


@pytest.fixture(scope="module")
def http_server() -> Iterator[ServerThread]:
    server = ServerThread(create_app(CeleryDispatcher())).start()
    yield server
    server.stop()


def submit_raw(tenant: TenantApi, body: bytes, **headers: str) -> httpx.Response:
    return tenant.client.post(
        "/v1/queries",
        content=body,
        headers={**tenant.headers, "Content-Type": "application/json", **headers},
    )


# Oversize bodies and prompts


def test_a_body_over_the_limit_is_refused_before_it_is_read(tenant: TenantApi) -> None:
    limit = get_settings().request_body_limit
    body = raw_json({"prompt": "x" * (limit + 1)})
    assert_error(submit_raw(tenant, body), 413, "request_too_large")
    assert limit == 4 * get_settings().max_prompt_chars + 256 * 1024


def test_a_streamed_body_without_content_length_is_counted(tenant: TenantApi) -> None:
    limit = get_settings().request_body_limit
    chunk = b" " * 65536

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b'"}'

    response = tenant.client.post(
        "/v1/queries",
        content=chunks(),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")
    assert response.json()["error"]["details"] == {"limit_bytes": limit}


def test_an_oversize_body_over_real_http_gets_413(
    http_server: ServerThread, tenant: TenantApi
) -> None:
    body = raw_json({"prompt": "x" * (get_settings().request_body_limit + 1)})
    response = httpx.post(
        f"{http_server.url}/v1/queries",
        content=body,
        headers={**tenant.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(response, 413, "request_too_large")


def test_a_prompt_over_the_limit_within_the_body_limit_is_422(tenant: TenantApi) -> None:
    prompt = "x" * (get_settings().max_prompt_chars + 1)
    assert_error(submit_raw(tenant, raw_json({"prompt": prompt})), 422, "invalid_request")


@pytest.mark.parametrize("max_new_tokens", [10**12, 2**63, 2**64 + 1, 10**400, -(2**63), 0])
def test_enormous_or_negative_max_new_tokens_is_422(tenant: TenantApi, max_new_tokens: int) -> None:
    body = f'{{"prompt": "hi", "max_new_tokens": {max_new_tokens}}}'.encode()
    assert_error(submit_raw(tenant, body), 422, "invalid_request")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"prompt=hi", "application/x-www-form-urlencoded"),
        (b"hi", "text/plain"),
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"prompt"', "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b'{"prompt": NaN}', "application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_4xx(
    tenant: TenantApi, body: bytes, content_type: str
) -> None:
    response = submit_raw(tenant, body, **{"Content-Type": content_type})
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code)


# Malformed Authorization headers


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "Basic dXNlcjpwYXNz",
        "bearer",
        "Token tt_0123456789abcdef_x",
        "Bearer tt_x_y",
        "Bearer tt__",
        "Bearer tt_0123456789abcdef_",
        "Bearer xx_0123456789abcdef_" + "a" * 43,
        "Bearer tt_" + "f" * 16 + "_" + "a" * 43,
        "Bearer tt_' OR '1'='1_" + "a" * 43,
        "Bearer tt_%00_abc",
        "Bearer " + "a" * 20_000,
        "Bearer tt_" + "0" * 5000 + "_" + "a" * 5000,
        "Bearer tt_0123456789abcdef_\u00e9\u00e8",
        "Bearer " + ADMIN_TOKEN,
    ],
)
def test_a_malformed_authorization_header_is_401(tenant: TenantApi, authorization: str) -> None:
    response = tenant.client.get("/v1/queries", headers={"Authorization": authorization.encode()})
    assert_error(response, 401)
    assert response.json()["error"]["code"] in {"invalid_api_key", "unauthenticated"}


def test_non_ascii_bytes_in_the_header_over_real_http_are_401(http_server: ServerThread) -> None:
    raw = "Bearer tt_0123456789abcdef_\u00e9\U0001f600".encode()
    response = httpx.get(f"{http_server.url}/v1/queries", headers=[(b"Authorization", raw)])
    assert_error(response, 401, "invalid_api_key")


def test_a_near_miss_key_with_the_right_prefix_is_401(tenant: TenantApi) -> None:
    scheme, prefix, secret = tenant.api_key.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    response = tenant.client.get(
        "/v1/queries", headers={"Authorization": f"Bearer {scheme}_{prefix}_{flipped}"}
    )
    assert_error(response, 401, "invalid_api_key")


# Garbage in every field


@pytest.mark.parametrize("text", STORABLE)
def test_hostile_but_storable_text_is_stored_faithfully(tenant: TenantApi, text: str) -> None:
    body = {
        "prompt": text,
        "metadata": {text: text, "nested": [text, {"deeper": text}], "n": 2**70},
        "choices": [f"yes {text}", f"no {text}"],
    }
    response = submit_raw(tenant, raw_json(body), **{"Idempotency-Key": f"k-{uuid.uuid4()}"})
    assert response.status_code == 202, response.text
    stored = tenant.get(response.json()["id"])
    assert stored["metadata"] == body["metadata"]
    assert stored["choices"] == [choice.strip() for choice in body["choices"]]
    listed = tenant.client.get("/v1/queries", headers=tenant.headers).json()["data"]
    assert any(row["id"] == stored["id"] for row in listed)


def test_sqlish_and_unicode_garbage_in_query_parameters_is_4xx(tenant: TenantApi) -> None:
    for path in [
        f"/v1/queries?status={SQLISH}",
        f"/v1/queries?cursor={SQLISH}",
        "/v1/queries?cursor=%00",
        f"/v1/queries?cursor={EMOJI}",
        "/v1/queries?limit=99999999999999999999",
        f"/v1/queries/{SQLISH}",
        "/v1/queries/%00",
        f"/v1/usage?since={SQLISH}",
        "/v1/usage?since=9999-12-31T23:59:59-23:59&until=0001-01-01T00:00:00%2B23:59",
        f"/v1/webhooks/{EMOJI}",
        "/v1/webhooks/dead-letters?endpoint_id=%00",
    ]:
        response = tenant.client.get(path, headers=tenant.headers)
        assert 400 <= response.status_code < 500, (path, response.text)
        assert_error(response, response.status_code)


NUL = "\x00"
LONE_SURROGATE = "\ud800"


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE, f"a{NUL}b", f"x{LONE_SURROGATE}y"])
@pytest.mark.parametrize(
    "field",
    ["prompt", "task", "choices", "webhook_url", "metadata_value", "metadata_key", "metadata_deep"],
)
def test_nul_and_lone_surrogates_in_a_query_are_422(
    tenant: TenantApi, field: str, bad: str
) -> None:
    body: dict[str, Any] = {"prompt": "hi"}
    if field == "prompt":
        body["prompt"] = bad
    elif field == "task":
        body["task"] = f"task{bad}"
    elif field == "choices":
        body["choices"] = ["yes", f"no{bad}"]
    elif field == "webhook_url":
        body["webhook_url"] = f"http://127.0.0.1:9/{bad}"
    elif field == "metadata_value":
        body["metadata"] = {"note": bad}
    elif field == "metadata_key":
        body["metadata"] = {bad: 1}
    else:
        body["metadata"] = {"a": [{"b": [bad]}]}
    assert_error(submit_raw(tenant, raw_json(body)), 422, "invalid_request")


def test_non_finite_or_too_deep_metadata_is_422(tenant: TenantApi) -> None:
    for metadata in ['{"x": NaN}', '{"x": [Infinity]}', '{"x": -Infinity}', '{"x": 1e400}']:
        response = submit_raw(tenant, f'{{"prompt": "hi", "metadata": {metadata}}}'.encode())
        assert_error(response, 422, "invalid_request")
    deep: Any = "leaf"
    for _ in range(200):
        deep = {"d": deep}
    assert_error(submit_raw(tenant, raw_json({"prompt": "hi", "metadata": deep})), 422)


def test_nul_in_an_idempotency_key_or_over_long_one_is_4xx(tenant: TenantApi) -> None:
    response = submit_raw(tenant, raw_json({"prompt": "hi"}), **{"Idempotency-Key": "k" * 201})
    assert_error(response, 422, "invalid_request")
    sqlish = submit_raw(tenant, raw_json({"prompt": "hi"}), **{"Idempotency-Key": SQLISH})
    assert sqlish.status_code == 202, sqlish.text
    again = submit_raw(tenant, raw_json({"prompt": "hi"}), **{"Idempotency-Key": SQLISH})
    assert again.json()["id"] == sqlish.json()["id"]


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE])
def test_nul_and_lone_surrogates_in_webhook_endpoints_are_422(tenant: TenantApi, bad: str) -> None:
    url = "http://127.0.0.1:9/hook"
    for body in [{"url": f"{url}{bad}"}, {"url": url, "description": f"d{bad}"}]:
        response = tenant.client.post(
            "/v1/webhooks",
            content=raw_json(body),
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert_error(response, 422, "invalid_request")
    created = tenant.client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers)
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["id"]
    patched = tenant.client.patch(
        f"/v1/webhooks/{endpoint_id}",
        content=raw_json({"description": f"d{bad}"}),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_error(patched, 422, "invalid_request")
    deleted = tenant.client.delete(f"/v1/webhooks/{endpoint_id}", headers=tenant.headers)
    assert deleted.status_code == 204


def test_storable_garbage_in_a_webhook_description_round_trips(tenant: TenantApi) -> None:
    description = f"{SQLISH} {RTL} {EMOJI}"
    created = tenant.client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "description": description},
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["id"]
    fetched = tenant.client.get(f"/v1/webhooks/{endpoint_id}", headers=tenant.headers).json()
    assert fetched["description"] == description
    tenant.client.delete(f"/v1/webhooks/{endpoint_id}", headers=tenant.headers)


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE])
def test_nul_and_lone_surrogates_in_admin_input_are_422(client: TestClient, bad: str) -> None:
    response = client.post(
        "/v1/admin/tenants",
        content=raw_json({"name": f"tenant{bad}"}),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert_error(response, 422, "invalid_request")
    price = {"price_input_per_mtok": 1, "price_output_per_mtok": 2}
    for model in ["%00", "m%0Aodel", "x" * 201]:
        response = client.put(f"/v1/admin/prices/{model}", json=price, headers=ADMIN)
        assert 400 <= response.status_code < 500, response.text
        assert_error(response, response.status_code)


def test_admin_amounts_and_limits_beyond_their_columns_are_422(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant_id = make_tenant().tenant_id
    for change in [
        {"budget_hard_limit": "1e300"},
        {"budget_soft_limit": 10**11},
        {"budget_per_query": "0.00000000001"},
        {"rate_limit_per_minute": 2**31},
        {"max_concurrent_queries": 10**12},
        {"target_escalation_rate": "NaN"},
    ]:
        response = client.patch(f"/v1/admin/tenants/{tenant_id}", json=change, headers=ADMIN)
        assert_error(response, 422, "invalid_request")
    huge_price = {"price_input_per_mtok": 1e176, "price_output_per_mtok": 1}
    response = client.put("/v1/admin/prices/some-model", json=huge_price, headers=ADMIN)
    assert_error(response, 422, "invalid_request")
    largest = {"budget_hard_limit": "9999999999.9999999999", "rate_limit_per_minute": 2**31 - 1}
    response = client.patch(f"/v1/admin/tenants/{tenant_id}", json=largest, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["budget_hard_limit"] == "9999999999.9999999999"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://a]b/",
        "http://;\u00cck[N\u0082",
        "http://" + "a" * 300 + "/",
        "http://\u0080/",
        "http://127.0.0.1:99999/",
        "https://user:pass@example.com/",
    ],
)
def test_malformed_webhook_urls_are_refused_with_422(tenant: TenantApi, url: str) -> None:
    for response in (
        tenant.client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers),
        tenant.client.post(
            "/v1/queries", json={"prompt": "hi", "webhook_url": url}, headers=tenant.headers
        ),
    ):
        assert_error(response, 422)
        assert response.json()["error"]["code"] in {
            "webhook_url_refused",
            "webhook_url_unresolvable",
            "invalid_request",
        }
