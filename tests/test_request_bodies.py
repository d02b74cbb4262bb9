"""What curl users send: a JSON body under curl's default Content-Type, a body that is no JSON,
no Authorization header at all."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantApi


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8"],
)
def test_a_json_body_is_read_as_json_whatever_its_content_type(
    make_tenant: Callable[..., TenantApi], unique: Callable[[str], str], content_type: str | None
) -> None:
    tenant = make_tenant()
    body = f'{{"prompt": "{unique("curl")}", "max_new_tokens": 4}}'.encode()
    headers = dict(tenant.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = tenant.client.post("/v1/queries", content=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["max_new_tokens"] == 4


@pytest.mark.parametrize("body", [b'{"prompt": ', b"prompt=hello", b"{'prompt': 'single quotes'}"])
def test_a_body_that_is_not_json_is_400_bad_request(
    make_tenant: Callable[..., TenantApi], body: bytes
) -> None:
    tenant = make_tenant()
    headers = {**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"}
    response = tenant.client.post("/v1/queries", content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("the request body is not valid JSON: ")


def test_no_authorization_header_is_unauthenticated_and_a_bad_one_an_invalid_key(
    client: TestClient,
) -> None:
    missing = client.get("/v1/queries")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.get("/v1/queries", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
