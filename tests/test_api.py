"""The REST API on its own: no worker runs here, so submitted queries stay queued in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from tests.conftest import TenantApi

SMALL_QUEUE = "small"


def test_submit_returns_202_with_location_and_enqueues_once(
    make_tenant: Callable[..., TenantApi], broker: redis.Redis, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    before = broker.llen(SMALL_QUEUE)
    response = tenant.client.post(
        "/v1/queries",
        json={"prompt": unique("What is 2+2?"), "max_new_tokens": 8, "task": "math"},
        headers=tenant.headers,
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["Location"] == f"/v1/queries/{body['id']}"
    assert body["status"] == "queued"
    assert body["task"] == "math"
    assert body["max_new_tokens"] == 8
    assert body["cost"] == {
        "total": "0.0000000000",
        "small": "0.0000000000",
        "large": "0.0000000000",
    }
    assert broker.llen(SMALL_QUEUE) == before + 1


def test_idempotency_key_replays_the_same_query_without_a_second_enqueue(
    make_tenant: Callable[..., TenantApi], broker: redis.Redis, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    headers = {**tenant.headers, "Idempotency-Key": "order-42"}
    body = {"prompt": unique("Summarise the order"), "metadata": {"order": 42}}
    before = broker.llen(SMALL_QUEUE)
    first = tenant.client.post("/v1/queries", json=body, headers=headers)
    second = tenant.client.post("/v1/queries", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert broker.llen(SMALL_QUEUE) == before + 1

    other_body = tenant.client.post(
        "/v1/queries", json={**body, "prompt": "something else"}, headers=headers
    )
    assert other_body.status_code == 409
    assert other_body.json()["error"]["code"] == "idempotency_key_reused"
    assert broker.llen(SMALL_QUEUE) == before + 1

    # The key belongs to the tenant: another tenant may use the same one.
    stranger = make_tenant()
    theirs = stranger.client.post(
        "/v1/queries", json=body, headers={**stranger.headers, "Idempotency-Key": "order-42"}
    )
    assert theirs.status_code == 202
    assert theirs.json()["id"] != first.json()["id"]


def test_missing_malformed_and_unknown_keys_are_401(client: TestClient) -> None:
    body = {"prompt": "hello"}
    cases = {
        "missing": {},
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "unknown": {"Authorization": f"Bearer tt_{'0' * 16}_{'x' * 43}"},
    }
    for case, headers in cases.items():
        response = client.post("/v1/queries", json=body, headers=headers)
        assert response.status_code == 401, case
        assert response.json()["error"]["code"] in {"unauthenticated", "invalid_api_key"}, case
        assert response.headers["WWW-Authenticate"] == "Bearer", case
    assert client.get("/v1/queries").status_code == 401


def test_invalid_bodies_are_4xx_with_the_error_shape_and_store_nothing(
    make_tenant: Callable[..., TenantApi], broker: redis.Redis
) -> None:
    tenant = make_tenant()
    before = broker.llen(SMALL_QUEUE)
    invalid = [
        {},
        {"prompt": ""},
        {"prompt": 42},
        {"prompt": "hi", "max_new_tokens": 0},
        {"prompt": "hi", "max_new_tokens": 10**9},
        {"prompt": "hi", "task": "has spaces"},
        {"prompt": "hi", "metadata": [1, 2]},
        {"prompt": "hi", "unknown_field": True},
        {"prompt": "x" * 100_001},
    ]
    for body in invalid:
        response = tenant.client.post("/v1/queries", json=body, headers=tenant.headers)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["code"] == "invalid_request", body
        assert error["message"], body
    not_json = tenant.client.post(
        "/v1/queries",
        content=b"{not json",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "bad_request"
    assert broker.llen(SMALL_QUEUE) == before
    assert tenant.client.get("/v1/queries", headers=tenant.headers).json()["data"] == []


def test_tenants_cannot_see_or_cancel_each_others_queries(
    make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    alice, bob = make_tenant(), make_tenant()
    query = alice.submit(unique("alice's secret"))
    for method in ("get", "delete"):
        response = getattr(bob.client, method)(f"/v1/queries/{query['id']}", headers=bob.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert bob.client.get("/v1/queries", headers=bob.headers).json()["data"] == []
    listed = alice.client.get("/v1/queries", headers=alice.headers).json()["data"]
    assert [q["id"] for q in listed] == [query["id"]]
    assert alice.get(query["id"])["status"] == "queued"


def test_unknown_query_is_404_and_bad_id_is_422(make_tenant: Callable[..., TenantApi]) -> None:
    tenant = make_tenant()
    missing = tenant.client.get(f"/v1/queries/{uuid.uuid4()}", headers=tenant.headers)
    assert missing.status_code == 404
    bad = tenant.client.get("/v1/queries/not-a-uuid", headers=tenant.headers)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request"


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(
    make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    ids = [tenant.submit(unique(f"question {i}"))["id"] for i in range(5)]
    cancelled = ids[1]
    assert (
        tenant.client.delete(f"/v1/queries/{cancelled}", headers=tenant.headers).status_code == 200
    )

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = tenant.client.get("/v1/queries", params=params, headers=tenant.headers).json()
        seen += [q["id"] for q in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    only_cancelled = tenant.client.get(
        "/v1/queries", params={"status": "cancelled"}, headers=tenant.headers
    ).json()["data"]
    assert [q["id"] for q in only_cancelled] == [cancelled]
    bad_cursor = tenant.client.get(
        "/v1/queries", params={"cursor": "garbage!"}, headers=tenant.headers
    )
    assert bad_cursor.status_code == 422
    bad_status = tenant.client.get("/v1/queries", params={"status": "done"}, headers=tenant.headers)
    assert bad_status.status_code == 422


def test_cancel_a_queued_query_then_cancel_again_is_409(
    make_tenant: Callable[..., TenantApi], unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    query = tenant.submit(unique("cancel me"))
    cancelled = tenant.client.delete(f"/v1/queries/{query['id']}", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["timestamps"]["finished_at"] is not None
    again = tenant.client.delete(f"/v1/queries/{query['id']}", headers=tenant.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "query_already_finished"


def test_health_readiness_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "broker": True}
    schema = client.get("/openapi.json").json()
    assert {"/v1/queries", "/v1/queries/{query_id}", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "ErrorBody" in schema["components"]["schemas"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    unknown_route = client.get("/v2/nothing")
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["code"] == "not_found"
