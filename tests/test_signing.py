"""Standard Webhooks secrets and signatures (services/webhooks/signing.py), checked with the
specification's own ``standardwebhooks`` package: every live secret's signature verifies, a
changed body or id does not, and rotation keeps replaced secrets for their grace periods."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from services.db import session_scope
from services.models import Tenant
from services.tenants import create_tenant
from services.webhooks import signing
from services.webhooks.signing import PreviousSecret


@dataclass
class Holder:
    """The smallest owner of a signing secret."""

    webhook_secret: str = field(default_factory=signing.new_secret)
    webhook_previous_secrets: list[PreviousSecret] = field(default_factory=list)
    webhook_previous_secret_expires_at: datetime | None = None


def headers(message_id: str, timestamp: int, body: bytes, keys: list[str]) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(
            message_id=message_id, timestamp=timestamp, body=body, keys=keys
        ),
    }


def verifies(secret: str, body: bytes, sent: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, sent, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def test_a_secret_is_whsec_and_base64_of_24_random_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert signing.new_secret() != secret


# Bodies are JSON, so UTF-8 text (the package decodes them before checking).
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=300)


@given(
    body=TEXT.map(str.encode), message_id=st.from_regex(r"msg_[A-Za-z0-9]{1,30}", fullmatch=True)
)
def test_the_signature_verifies_with_the_standard_webhooks_package(
    body: bytes, message_id: str
) -> None:
    secret, now = signing.new_secret(), int(time.time())
    assert verifies(secret, body, headers(message_id, now, body, [secret]))


@given(
    body=TEXT.filter(bool),
    position=st.integers(min_value=0),
    character=st.characters(blacklist_categories=["Cs"]),
)
def test_a_changed_body_does_not_verify(body: str, position: int, character: str) -> None:
    secret, now = signing.new_secret(), int(time.time())
    sent = headers("msg_1", now, body.encode(), [secret])
    at = position % len(body)
    changed = body[:at] + character + body[at + 1 :]
    assume(changed != body)
    assert not verifies(secret, changed.encode(), sent)


def test_a_changed_id_or_timestamp_or_another_secret_does_not_verify() -> None:
    secret, now, body = signing.new_secret(), int(time.time()), b'{"type":"query.finished"}'
    sent = headers("msg_1", now, body, [secret])
    assert verifies(secret, body, sent)
    assert not verifies(secret, body, {**sent, "webhook-id": "msg_2"})
    assert not verifies(secret, body, {**sent, "webhook-timestamp": str(now + 1)})
    assert not verifies(signing.new_secret(), body, sent)


def test_the_header_carries_one_signature_per_key_and_each_verifies() -> None:
    keys = [signing.new_secret() for _ in range(3)]
    body, now = b"{}", int(time.time())
    sent = headers("msg_1", now, body, keys)
    signatures = sent["webhook-signature"].split(" ")
    assert len(signatures) == 3
    assert all(signature.startswith("v1,") for signature in signatures)
    assert all(verifies(key, body, sent) for key in keys)


def test_the_signature_is_the_documented_hmac() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    header = signing.signature_header(
        message_id="msg_1", timestamp=1700000000, body=b"{}", keys=[secret]
    )
    expected = hmac.digest(b"k" * 24, b"msg_1.1700000000.{}", hashlib.sha256)
    assert header == "v1," + base64.b64encode(expected).decode()


def test_a_rotation_keeps_the_replaced_secret_for_the_grace_period() -> None:
    holder = Holder()
    old = holder.webhook_secret
    before = datetime.now(UTC)
    new = signing.rotate_secret(holder, grace_s=3600)
    assert new == holder.webhook_secret != old
    assert holder.webhook_previous_secret_expires_at is not None
    grace_end = holder.webhook_previous_secret_expires_at
    assert before + timedelta(seconds=3600) <= grace_end <= datetime.now(UTC) + timedelta(hours=1)
    assert signing.live_secrets(holder, now=grace_end - timedelta(seconds=1)) == [new, old]
    assert signing.live_secrets(holder, now=grace_end) == [new]  # the grace period has ended


def test_rotating_again_within_the_grace_keeps_every_live_secret_newest_first() -> None:
    holder = Holder()
    secrets_in_order = [holder.webhook_secret]
    for _ in range(3):
        secrets_in_order.append(signing.rotate_secret(holder, grace_s=3600))
    now = datetime.now(UTC)
    assert signing.live_secrets(holder, now=now) == list(reversed(secrets_in_order))
    body, timestamp = b"{}", int(time.time())
    sent = headers("msg_1", timestamp, body, signing.live_secrets(holder, now=now))
    assert all(verifies(secret, body, sent) for secret in secrets_in_order)


def test_a_secret_whose_grace_ended_is_dropped_at_the_next_rotation() -> None:
    holder = Holder()
    first = holder.webhook_secret
    second = signing.rotate_secret(holder, grace_s=0)  # the first stops signing at once
    third = signing.rotate_secret(holder, grace_s=3600)
    assert [entry["secret"] for entry in holder.webhook_previous_secrets] == [second]
    assert signing.live_secrets(holder, now=datetime.now(UTC)) == [third, second]
    assert first not in signing.live_secrets(holder, now=datetime.now(UTC))


def test_at_most_the_newest_previous_secrets_are_kept() -> None:
    holder = Holder()
    replaced = []
    for _ in range(signing.MAX_PREVIOUS_SECRETS + 5):
        replaced.append(holder.webhook_secret)
        signing.rotate_secret(holder, grace_s=3600)
    kept = [entry["secret"] for entry in holder.webhook_previous_secrets]
    assert kept == replaced[-signing.MAX_PREVIOUS_SECRETS :]
    live = signing.live_secrets(holder, now=datetime.now(UTC))
    assert len(live) == signing.MAX_PREVIOUS_SECRETS + 1


@given(grace_s=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=15))
def test_live_secrets_are_the_current_one_and_the_unexpired_replaced_ones(
    grace_s: list[float],
) -> None:
    holder = Holder()
    for grace in grace_s:
        signing.rotate_secret(holder, grace_s=grace)
    now = datetime.now(UTC)
    live = signing.live_secrets(holder, now=now)
    assert live[0] == holder.webhook_secret
    assert len(live) == len(set(live)) <= signing.MAX_PREVIOUS_SECRETS + 1
    for entry in holder.webhook_previous_secrets:
        expired = datetime.fromisoformat(entry["expires_at"]) <= now
        assert (entry["secret"] in live) != expired


def test_a_tenants_secret_rotates_and_survives_the_database() -> None:
    with session_scope() as session:
        tenant = create_tenant(
            session, name=f"signer-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3
        ).tenant
        old = tenant.webhook_secret
        new = signing.rotate_secret(tenant, grace_s=600)
        tenant_id = tenant.id
    with session_scope() as session:
        stored = session.get(Tenant, tenant_id)
        assert stored is not None
        assert signing.live_secrets(stored, now=datetime.now(UTC)) == [new, old]


def test_no_key_gives_an_empty_header() -> None:
    assert signing.signature_header(message_id="m", timestamp=1, body=b"", keys=[]) == ""
