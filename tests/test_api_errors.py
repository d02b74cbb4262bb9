"""The API's one error shape (services/api/error_responses.py): each domain error's status and
stable code, and the shape of validation errors, unknown routes, wrong methods, a database that is
down and anything unexpected, as a client sees them through a small app."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services import errors
from services.api.error_responses import HTTP_STATUS, RequestTooLarge, install_error_handlers

DOMAIN_ERRORS: dict[str, errors.TwotierError] = {
    "invalid_request": errors.InvalidRequest("bad", details={"field": "prompt"}),
    "not_found": errors.NotFound("no such query"),
    "tenant_name_taken": errors.TenantNameTaken("taken"),
    "idempotency_key_reused": errors.IdempotencyConflict("reused"),
    "query_already_finished": errors.QueryAlreadyFinished("finished"),
    "batch_already_finished": errors.BatchAlreadyFinished("finished"),
    "unauthenticated": errors.Unauthenticated("no key"),
    "invalid_api_key": errors.InvalidApiKey("unknown key"),
    "tenant_disabled": errors.TenantDisabled("disabled"),
    "budget_exceeded": errors.BudgetExceeded("over", period_start=datetime(2025, 1, 1, tzinfo=UTC)),
    "admin_token_required": errors.AdminOnly("admin only"),
    "rate_limited": errors.RateLimited("slow down", retry_after_s=7),
    "webhook_url_refused": errors.WebhookUrlRefused("private"),
    "webhook_url_unresolvable": errors.WebhookUrlUnresolvable("no such host"),
    "webhook_not_replayable": errors.WebhookNotReplayable("pending"),
    "overloaded": errors.ServiceOverloaded("busy", retry_after_s=3),
    "unsupported_value": errors.InvalidParameter(
        "n must be 1", param="n", code="unsupported_value"
    ),
    "model_not_found": errors.ModelNotFound("no such model", details={"param": "model"}),
    "model_error": errors.QueryFailed("it failed", code="model_error", query_id="q-1"),
    "query_cancelled": errors.QueryCancelled("cancelled", query_id="q-1"),
    "query_not_finished": errors.AnswerNotReady("still running", query_id="q-1"),
}
EXPECTED_STATUS = {
    "invalid_request": 422,
    "not_found": 404,
    "tenant_name_taken": 409,
    "idempotency_key_reused": 409,
    "query_already_finished": 409,
    "batch_already_finished": 409,
    "unauthenticated": 401,
    "invalid_api_key": 401,
    "tenant_disabled": 403,
    "budget_exceeded": 402,
    "admin_token_required": 401,
    "rate_limited": 429,
    "webhook_url_refused": 422,
    "webhook_url_unresolvable": 422,
    "webhook_not_replayable": 409,
    "overloaded": 503,
    "unsupported_value": 400,
    "model_not_found": 404,
    "model_error": 502,
    "query_cancelled": 409,
    "query_not_finished": 504,
}
# On the OpenAI-compatible routes (docs/openai.md): OpenAI's statuses and codes where they differ.
OPENAI_STATUS = {
    **{code: 400 if status == 422 else status for code, status in EXPECTED_STATUS.items()},
    "budget_exceeded": 429,
}
OPENAI_CODES = {"budget_exceeded": "insufficient_quota", "rate_limited": "rate_limit_exceeded"}
RETRIED_BY_THE_SDK = {"rate_limited", "overloaded"}


class UnmappedError(errors.TwotierError):
    code = "something_else"


class Item(BaseModel):
    count: int = Field(ge=1, strict=True)
    name: str


def small_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/domain/{code}")
    def domain(code: str) -> None:
        raise DOMAIN_ERRORS[code]

    @app.get("/v1/models/{code}")
    def on_an_openai_route(code: str) -> None:
        raise DOMAIN_ERRORS[code]

    @app.post("/v1/completions")
    def create_completion(item: Item) -> Item:
        return item

    @app.get("/unmapped")
    def unmapped() -> None:
        raise UnmappedError("a new error", details=[1, 2])

    @app.post("/items")
    def create_item(item: Item) -> Item:
        return item

    @app.delete("/items")
    def delete_items() -> None:
        return None

    @app.get("/database-down")
    def database_down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    @app.get("/pool-empty")
    def pool_empty() -> None:
        raise PoolTimeout("QueuePool limit reached")

    @app.get("/too-large")
    def too_large() -> None:
        raise RequestTooLarge(1024)

    @app.get("/bug")
    def bug() -> None:
        raise ZeroDivisionError("a bug")

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(small_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def error_of(response: Any) -> dict[str, Any]:
    """The error object, after checking that the body has the one shape and nothing else."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_every_domain_error_class_has_a_status() -> None:
    domain_classes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.TwotierError) and cls is not errors.TwotierError
    }
    assert domain_classes == set(HTTP_STATUS)
    assert {type(error) for error in DOMAIN_ERRORS.values()} == domain_classes


@pytest.mark.parametrize("code", sorted(DOMAIN_ERRORS))
def test_each_domain_error_maps_to_its_status_and_stable_code(
    client: TestClient, code: str
) -> None:
    response = client.get(f"/domain/{code}")
    assert response.status_code == EXPECTED_STATUS[code]
    error = error_of(response)
    assert error["code"] == code
    assert error["message"] == DOMAIN_ERRORS[code].message


@pytest.mark.parametrize("code", sorted(DOMAIN_ERRORS))
def test_on_the_openai_routes_each_domain_error_has_openais_shape(
    client: TestClient, code: str
) -> None:
    response = client.get(f"/v1/models/{code}")
    assert response.status_code == OPENAI_STATUS[code]
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert (error["code"], error["message"]) == (
        OPENAI_CODES.get(code, code),
        DOMAIN_ERRORS[code].message,
    )
    assert (response.headers.get("x-should-retry") != "false") == (code in RETRIED_BY_THE_SDK)
    if code in {"unsupported_value", "model_not_found"}:
        assert error["param"] in {"n", "model"}


def test_on_the_openai_routes_a_validation_error_is_400_naming_the_parameter(
    client: TestClient,
) -> None:
    response = client.post("/v1/completions", json={"count": 0, "name": "x"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == ("count", "invalid_value")


def test_a_domain_errors_details_reach_the_client(client: TestClient) -> None:
    assert error_of(client.get("/domain/invalid_request"))["details"] == {"field": "prompt"}
    assert error_of(client.get("/domain/not_found"))["details"] is None


@pytest.mark.parametrize("code", ["unauthenticated", "invalid_api_key", "admin_token_required"])
def test_a_401_asks_for_a_bearer_token(client: TestClient, code: str) -> None:
    assert client.get(f"/domain/{code}").headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("code", "seconds"), [("rate_limited", "7"), ("overloaded", "3")])
def test_rate_limited_and_overloaded_say_when_to_retry(
    client: TestClient, code: str, seconds: str
) -> None:
    assert client.get(f"/domain/{code}").headers["Retry-After"] == seconds


def test_a_rate_limit_may_carry_its_own_code() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    def limited() -> None:
        raise errors.RateLimited("too many", retry_after_s=2, code="too_many_unfinished")

    response = TestClient(app).get("/")
    assert response.status_code == 429
    assert error_of(response)["code"] == "too_many_unfinished"


def test_a_domain_error_without_a_status_is_a_400_with_its_own_code(client: TestClient) -> None:
    response = client.get("/unmapped")
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "something_else",
        "message": "a new error",
        "details": [1, 2],
    }


def test_invalid_fields_are_a_422_that_names_each_location(client: TestClient) -> None:
    response = client.post("/items", json={"count": 0})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request"
    locations = [detail["location"] for detail in error["details"]]
    assert ["body", "count"] in locations
    assert ["body", "name"] in locations
    assert "body.count" in error["message"]
    assert "body.name" in error["message"]
    assert all(set(detail) == {"location", "message", "type"} for detail in error["details"])


@given(count=st.integers(max_value=0) | st.text() | st.none())
def test_any_invalid_count_gets_the_same_shape(client: TestClient, count: Any) -> None:
    response = client.post("/items", json={"count": count, "name": "x"})
    assert response.status_code == 422
    assert error_of(response)["details"][0]["location"] == ["body", "count"]


def test_an_unknown_path_is_not_found(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_a_wrong_method_names_every_method_the_path_answers(client: TestClient) -> None:
    response = client.put("/items")
    assert response.status_code == 405
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert error["details"] == {"allowed_methods": ["DELETE", "POST"]}
    assert response.headers["Allow"] == "DELETE, POST"


def test_request_too_large_carries_its_limit(client: TestClient) -> None:
    response = client.get("/too-large")
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert error["details"] == {"limit_bytes": 1024}
    assert "1024 bytes" in error["message"]


def test_a_database_that_is_down_is_a_503_to_retry(client: TestClient) -> None:
    response = client.get("/database-down")
    assert response.status_code == 503
    assert error_of(response)["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"


def test_no_free_database_connection_is_overload_not_an_error(client: TestClient) -> None:
    response = client.get("/pool-empty")
    assert response.status_code == 503
    assert error_of(response)["code"] == "overloaded"
    assert response.headers["Retry-After"] == "1"


def test_anything_unexpected_is_a_500_that_tells_nothing_of_the_bug(client: TestClient) -> None:
    response = client.get("/bug")
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "a bug" not in response.text
    assert "ZeroDivisionError" not in response.text
