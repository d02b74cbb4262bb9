"""Webhook egress that cannot be turned inward: every IPv4-in-IPv6 form is judged by where it
leads, and a delivery connects to the very address it checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.settings import Settings, get_settings
from services.webhooks.urls import is_allowed
from tests.conftest import TenantApi

INWARD_FORMS = [
    "[::127.0.0.1]",  # IPv4-compatible loopback
    "[::a9fe:a9fe]",  # IPv4-compatible 169.254.169.254, the metadata service
    "[64:ff9b::7f00:1]",  # NAT64 (well-known prefix) to loopback
    "[64:ff9b:1::a00:1]",  # local-use NAT64 to 10.0.0.1
    "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
    "[::ffff:0:7f00:1]",  # IPv4-translated loopback
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
    "[::ffff:a9fe:a9fe]",  # IPv4-mapped metadata service
    "192.0.0.8",  # the IPv4 dummy address
    "[fd00::1]",  # unique local
    "[2001:db8::1]",  # documentation
]


@pytest.fixture
def strict(client: TestClient) -> Iterator[Settings]:
    """The API's settings without the tests' loopback allowlist."""
    settings = get_settings().model_copy(update={"webhook_allowed_networks": []})
    client.app.dependency_overrides[get_settings] = lambda: settings  # type: ignore[attr-defined]
    yield settings
    client.app.dependency_overrides.clear()  # type: ignore[attr-defined]


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("host", INWARD_FORMS)
def test_addresses_that_lead_inside_are_refused_at_registration_and_per_query(
    make_tenant: Callable[..., TenantApi], host: str
) -> None:
    tenant = make_tenant()
    url = f"http://{host}/hook"
    for response in (
        tenant.client.post("/v1/webhooks", json={"url": url}, headers=tenant.headers),
        tenant.client.post(
            "/v1/queries", json={"prompt": "hi", "webhook_url": url}, headers=tenant.headers
        ),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "webhook_url_refused"
    assert tenant.client.get("/v1/webhooks", headers=tenant.headers).json()["data"] == []


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:93.184.215.14", True),  # IPv4-mapped public: the same host
        ("64:ff9b::5db8:d70e", True),  # NAT64 to a public host, as DNS64 answers
        ("2002:5db8:d70e::1", True),  # 6to4 around a public host
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:a9fe:a9fe::1", False),
        ("::1", False),
        ("fe80::1", False),
        ("ff02::1", False),
        ("100.64.0.1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
    ],
)
def test_only_global_unicast_is_allowed(address: str, allowed: bool) -> None:
    assert is_allowed(ipaddress.ip_address(address), []) is allowed
