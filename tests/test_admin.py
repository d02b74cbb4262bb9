"""The admin API: tenants, keys and budgets, behind a separate admin token."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, TenantApi

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def new_tenant(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post(
        "/v1/admin/tenants", json={"name": f"acme-{uuid.uuid4().hex[:8]}", **body}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_admin_endpoints_refuse_tenant_keys_and_wrong_tokens(
    client: TestClient, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant()
    for headers in ({}, tenant.headers, {"Authorization": "Bearer wrong-token-wrong-token"}):
        response = client.get("/v1/admin/tenants", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "admin_token_required"
        assert ADMIN_TOKEN not in response.text


def test_create_a_tenant_issue_and_revoke_keys_without_downtime(client: TestClient) -> None:
    created = new_tenant(client, target_escalation_rate=0.2)
    tenant = created["tenant"]
    assert isinstance(tenant, dict)
    assert tenant["target_escalation_rate"] == 0.2
    first = {"Authorization": f"Bearer {created['api_key']}"}
    assert client.get("/v1/queries", headers=first).status_code == 200

    issued = client.post(f"/v1/admin/tenants/{tenant['id']}/keys", headers=ADMIN).json()
    second = {"Authorization": f"Bearer {issued['api_key']}"}
    keys = client.get(f"/v1/admin/tenants/{tenant['id']}/keys", headers=ADMIN).json()
    assert len(keys) == 2
    assert all("api_key" not in key and "key_hash" not in key for key in keys)

    first_id = next(key["id"] for key in keys if key["id"] != issued["id"])
    revoked = client.delete(f"/v1/admin/tenants/{tenant['id']}/keys/{first_id}", headers=ADMIN)
    assert revoked.json()["revoked_at"] is not None
    refused = client.get("/v1/queries", headers=first)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/queries", headers=second).status_code == 200


def test_disable_a_tenant_and_set_its_budget(client: TestClient) -> None:
    created = new_tenant(client)
    tenant = created["tenant"]
    assert isinstance(tenant, dict)
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    url = f"/v1/admin/tenants/{tenant['id']}"

    assert client.patch(url, json={"disabled": True}, headers=ADMIN).json()["disabled"] is True
    disabled = client.get("/v1/queries", headers=headers)
    assert disabled.status_code == 403
    assert disabled.json()["error"]["code"] == "tenant_disabled"
    client.patch(url, json={"disabled": False}, headers=ADMIN)

    budget = client.patch(
        url, json={"budget_period": "daily", "budget_hard_limit": "0"}, headers=ADMIN
    ).json()
    assert (budget["budget_period"], budget["budget_hard_limit"]) == ("daily", "0.0000000000")
    refused = client.post("/v1/queries", json={"prompt": "hello"}, headers=headers)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    cleared = client.patch(url, json={"budget_hard_limit": None}, headers=ADMIN).json()
    assert cleared["budget_hard_limit"] is None
    assert client.post("/v1/queries", json={"prompt": "hello"}, headers=headers).status_code == 202

    bad = client.patch(url, json={"target_escalation_rate": 2}, headers=ADMIN)
    assert bad.status_code == 422
    missing = client.get(f"/v1/admin/tenants/{uuid.uuid4()}", headers=ADMIN)
    assert missing.status_code == 404


def test_rate_limit_and_unfinished_query_limit_answer_429_with_retry_after(
    client: TestClient,
) -> None:
    created = new_tenant(client)
    tenant = created["tenant"]
    assert isinstance(tenant, dict)
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    url = f"/v1/admin/tenants/{tenant['id']}"

    client.patch(url, json={"max_concurrent_queries": 2}, headers=ADMIN)
    statuses = [
        client.post("/v1/queries", json={"prompt": f"q{i}"}, headers=headers).status_code
        for i in range(2)
    ]
    assert statuses == [202, 202]  # no worker runs here: both stay unfinished
    third = client.post("/v1/queries", json={"prompt": "q2"}, headers=headers)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "too_many_unfinished_queries"
    assert int(third.headers["Retry-After"]) > 0

    listed = client.get("/v1/queries", headers=headers).json()["data"]
    client.delete(f"/v1/queries/{listed[0]['id']}", headers=headers)
    assert client.post("/v1/queries", json={"prompt": "q3"}, headers=headers).status_code == 202

    limits = {"max_concurrent_queries": None, "rate_limit_per_minute": 3}
    assert client.patch(url, json=limits, headers=ADMIN).json()["rate_limit_per_minute"] == 3
    limited = client.post("/v1/queries", json={"prompt": "q4"}, headers=headers)
    assert limited.status_code == 429  # three accepted in the last minute (the 429 wrote none)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
