"""Webhook egress that cannot be turned inward: every IPv4-in-IPv6 form is judged by where it
leads, and a delivery connects to the very address it checked, keeping Host and TLS SNI."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from services.api.deps import current_settings
from services.db import session_scope
from services.models import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookMessage,
    utcnow,
)
from services.settings import Settings, get_settings
from services.webhooks import egress
from services.webhooks.delivery import attempt_delivery
from services.webhooks.urls import is_allowed
from tests.conftest import TenantApi
from tests.webhook_receiver import WebhookReceiver

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
    client.app.dependency_overrides[current_settings] = lambda: settings  # type: ignore[attr-defined]
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


def pending_delivery(tenant: TenantApi, url: str) -> uuid.UUID:
    """A delivery to ``url`` as the outbox writes it, not queued: the test attempts it."""
    with session_scope() as session:
        message = WebhookMessage(
            id=f"msg_{uuid.uuid4().hex}",
            tenant_id=tenant.tenant_id,
            event_type="query.succeeded",
            payload={"type": "query.succeeded", "timestamp": utcnow().isoformat(), "data": {}},
        )
        session.add(message)
        session.flush()
        delivery = WebhookDelivery(
            id=uuid.uuid4(), message_id=message.id, tenant_id=tenant.tenant_id, url=url,
            status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=utcnow(),
        )  # fmt: skip
        session.add(delivery)
        return delivery.id


def test_a_name_rebound_to_loopback_after_the_check_still_reaches_only_the_checked_address(
    make_tenant: Callable[..., TenantApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = WebhookReceiver(host="127.0.0.2").start()  # stands for a public address
    inside = WebhookReceiver(host="127.0.0.1", port=outside.port).start()
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return resolve(host, port, *args, **kwargs)
        lookups.append(host)  # the first answer passes the check, the later ones lead inside
        address = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings = get_settings().model_copy(
        update={"webhook_allowed_networks": [ipaddress.IPv4Network("127.0.0.2/32")]}
    )
    try:
        delivery_id = pending_delivery(make_tenant(), f"http://rebind.test:{outside.port}/hook")
        assert attempt_delivery(delivery_id, settings=settings) is None
        [received] = outside.at("/hook")
        assert inside.at("/hook") == []
    finally:
        outside.stop()
        inside.stop()
    assert received.headers["host"] == f"rebind.test:{outside.port}"
    assert lookups == ["rebind.test"]  # resolved once, by the check
    with session_scope() as session:
        assert session.get_one(WebhookDelivery, delivery_id).status == DeliveryStatus.SUCCEEDED


def self_signed_certificate(folder: Path, host_name: str) -> tuple[Path, Path]:
    """A certificate for ``host_name`` alone (no IP address), and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = folder / "receiver.pem", folder / "receiver-key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_file, key_file


def test_https_to_the_pinned_address_verifies_the_certificate_for_the_host_name(
    make_tenant: Callable[..., TenantApi], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    certificate, key = self_signed_certificate(tmp_path, "rebind.test")
    receiver = WebhookReceiver(host="127.0.0.2", tls=(certificate, key)).start()
    resolve = socket.getaddrinfo

    def pointing_at_the_receiver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.2", port))]

    monkeypatch.setattr(socket, "getaddrinfo", pointing_at_the_receiver)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # trust the receiver's certificate
    egress._tls_context.cache_clear()
    settings = get_settings().model_copy(
        update={"webhook_allowed_networks": [ipaddress.IPv4Network("127.0.0.2/32")]}
    )
    try:
        tenant = make_tenant()
        delivery_id = pending_delivery(tenant, f"https://rebind.test:{receiver.port}/hook")
        assert attempt_delivery(delivery_id, settings=settings) is None
        # The same receiver by its address: the certificate does not name it, so it fails.
        by_address = pending_delivery(tenant, f"https://127.0.0.2:{receiver.port}/hook")
        attempt_delivery(by_address, settings=settings)
    finally:
        receiver.stop()
        egress._tls_context.cache_clear()
    [received] = receiver.at("/hook")
    assert received.headers["host"] == f"rebind.test:{receiver.port}"
    with session_scope() as session:
        assert session.get_one(WebhookDelivery, delivery_id).status == DeliveryStatus.SUCCEEDED
        refused = session.get_one(WebhookDelivery, by_address)
        assert "CERTIFICATE_VERIFY_FAILED" in (refused.last_error or "")
