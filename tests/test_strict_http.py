"""HTTP as the schema documents it: a 405 names every method the path allows, values of a type
the schema does not allow are refused even where they could be coerced, bodies that are not
UTF-8 are 400, and a tenant name that exists is a conflict. Every refusal is in the one error
shape and writes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.db import session_scope
from services.models import Query, Tenant
from tests.conftest import ADMIN_TOKEN, TenantApi

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SOME_ID = "00000000-0000-4000-8000-000000000000"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error
    return error


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantApi]) -> TenantApi:
    return make_tenant()


def stored_queries(tenant: TenantApi) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(Query).where(Query.tenant_id == tenant.tenant_id)
        )


# 405 Method Not Allowed


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", f"/v1/queries/{SOME_ID}", "DELETE, GET"),
        ("PATCH", "/v1/queries", "GET, POST"),
        ("DELETE", "/v1/webhooks/dead-letters", "GET"),
        ("PUT", "/v1/webhooks/callback-secret", "GET"),
        ("GET", "/v1/webhooks/callback-secret/rotate", "POST"),
        ("PUT", f"/v1/webhooks/{SOME_ID}", "DELETE, GET, PATCH"),
        ("DELETE", "/v1/admin/tenants", "GET, POST"),
        ("PUT", f"/v1/admin/tenants/{SOME_ID}", "GET, PATCH"),
        ("POST", "/v1/admin/prices/some-model", "DELETE, PUT"),
    ],
)
def test_a_method_the_path_does_not_allow_is_405_naming_every_allowed_method(
    tenant: TenantApi, method: str, path: str, allowed: str
) -> None:
    headers = ADMIN if path.startswith("/v1/admin") else tenant.headers
    response = tenant.client.request(method, path, headers=headers)
    error = assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed
    assert error["details"] == {"allowed_methods": allowed.split(", ")}


def test_a_malformed_id_under_webhooks_is_404_not_a_fixed_path(tenant: TenantApi) -> None:
    for path in ("/v1/webhooks/not-a-uuid", "/v1/webhooks/not-a-uuid/attempts"):
        assert_error(tenant.client.get(path, headers=tenant.headers), 404, "not_found")
    dead_letters = tenant.client.get("/v1/webhooks/dead-letters", headers=tenant.headers)
    assert dead_letters.status_code == 200, dead_letters.text


# Values of the wrong JSON type


@pytest.mark.parametrize(
    "field",
    [
        {"max_new_tokens": True},
        {"max_new_tokens": "12"},
        {"max_new_tokens": 12.5},
        {"max_new_tokens": None, "task": True},
        {"prompt": 5},
        {"task": 7},
        {"choices": ["yes", 1]},
    ],
)
def test_a_query_field_of_another_json_type_is_422_and_stores_nothing(
    tenant: TenantApi, field: dict[str, Any]
) -> None:
    body = {"prompt": "strict types", **field}
    response = tenant.client.post("/v1/queries", json=body, headers=tenant.headers)
    error = assert_error(response, 422, "invalid_request")
    assert next(detail["location"][-1] for detail in error["details"]) in {*field, 1}
    assert stored_queries(tenant) == 0


def test_an_integer_may_be_written_as_json_schema_reads_integers(tenant: TenantApi) -> None:
    body = {"prompt": "twelve tokens", "max_new_tokens": 12.0}
    response = tenant.client.post("/v1/queries", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text
    assert response.json()["max_new_tokens"] == 12


@pytest.mark.parametrize(
    "change",
    [
        {"disabled": 0},
        {"disabled": "false"},
        {"target_escalation_rate": True},
        {"target_escalation_rate": "0.5"},
        {"rate_limit_per_minute": "5"},
        {"max_concurrent_queries": True},
        {"budget_hard_limit": True},
        {"budget_period": 1},
    ],
)
def test_an_admin_update_of_another_json_type_is_422_and_changes_nothing(
    client: TestClient, tenant: TenantApi, change: dict[str, Any]
) -> None:
    url = f"/v1/admin/tenants/{tenant.tenant_id}"
    before = client.get(url, headers=ADMIN).json()
    assert_error(client.patch(url, json=change, headers=ADMIN), 422, "invalid_request")
    assert client.get(url, headers=ADMIN).json() == before


def test_amounts_keep_their_documented_forms_strings_and_numbers(
    client: TestClient, tenant: TenantApi
) -> None:
    url = f"/v1/admin/tenants/{tenant.tenant_id}"
    for amount in ("2.5", 2.5, 3):
        updated = client.patch(url, json={"budget_soft_limit": amount}, headers=ADMIN)
        assert updated.status_code == 200, updated.text
        assert float(updated.json()["budget_soft_limit"]) == float(amount)
    change = {"disabled": False, "target_escalation_rate": 1}
    enabled = client.patch(url, json=change, headers=ADMIN)
    assert enabled.status_code == 200, enabled.text
    price = client.put(
        "/v1/admin/prices/strict-model",
        json={"price_input_per_mtok": "0.5", "price_output_per_mtok": 1},
        headers=ADMIN,
    )
    assert price.status_code == 200, price.text
    assert client.delete("/v1/admin/prices/strict-model", headers=ADMIN).status_code == 204


@pytest.mark.parametrize(
    "body",
    [{"name": 5}, {"name": "strict", "target_escalation_rate": "0.3"}, {"name": ["x"]}],
)
def test_an_admin_create_of_another_json_type_is_422(client: TestClient, body: Any) -> None:
    assert_error(client.post("/v1/admin/tenants", json=body, headers=ADMIN), 422, "invalid_request")


@pytest.mark.parametrize("body", [{"thin_payload": 1}, {"event_types": [1]}])
def test_a_webhook_field_of_another_json_type_is_422(tenant: TenantApi, body: Any) -> None:
    body = {"url": "https://hooks.example.com/x", **body}
    response = tenant.client.post("/v1/webhooks", json=body, headers=tenant.headers)
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("instant", ["0.5", "1700000000", "-1", "now", "2025-13-01T00:00:00Z"])
def test_usage_bounds_are_iso_8601_instants_only(tenant: TenantApi, instant: str) -> None:
    for bound in ("since", "until"):
        response = tenant.client.get("/v1/usage", params={bound: instant}, headers=tenant.headers)
        assert_error(response, 422, "invalid_request")


def test_usage_bounds_take_iso_8601_with_or_without_an_offset(tenant: TenantApi) -> None:
    for instant in ("2025-01-31T00:00:00Z", "2025-01-31T00:00:00", "2025-01-31T02:00:00+02:00"):
        response = tenant.client.get(
            "/v1/usage", params={"since": instant, "until": instant}, headers=tenant.headers
        )
        assert response.status_code == 200, response.text


# Bodies that are not UTF-8 JSON


NOT_UTF8 = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-8-sig"]


@pytest.mark.parametrize("encoding", NOT_UTF8)
def test_a_query_body_not_in_utf8_is_400_and_stores_nothing(
    tenant: TenantApi, encoding: str
) -> None:
    body = json.dumps({"prompt": "encoded \u00e9"}).encode(encoding)
    response = tenant.client.post(
        "/v1/queries",
        content=body,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_error(response, 400, "bad_request")
    assert stored_queries(tenant) == 0


@pytest.mark.parametrize("encoding", [*NOT_UTF8, "latin-1"])
def test_an_admin_body_not_in_utf8_is_400_and_creates_nothing(
    client: TestClient, encoding: str
) -> None:
    name = f"encoded-\u00e9-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name}, ensure_ascii=False).encode(encoding)
    response = client.post(
        "/v1/admin/tenants", content=body, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad_request")
    with session_scope() as session:
        assert session.scalar(select(Tenant.id).where(Tenant.name == name)) is None


# Conflicts


def test_creating_a_tenant_whose_name_exists_is_409(client: TestClient) -> None:
    name = f"taken-{uuid.uuid4().hex[:8]}"
    assert client.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN).status_code == 201
    again = client.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN)
    assert_error(again, 409, "tenant_name_taken")
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Tenant.name == name)) == 1
