"""Secrets and signatures of the Standard Webhooks specification.

A secret is ``whsec_`` + base64 of 24 random bytes. The signature of one attempt is
``v1,`` + base64(HMAC-SHA256(secret, "{webhook-id}.{webhook-timestamp}.{body}")); during a
rotation the header carries one signature per live secret, separated by spaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Protocol

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


class SecretHolder(Protocol):
    """A row that owns a signing secret: a webhook endpoint, or a tenant for its queries'
    own callback URLs."""

    webhook_secret: str
    webhook_previous_secret: str | None
    webhook_previous_secret_expires_at: datetime | None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def rotate_secret(holder: SecretHolder, *, grace_s: float) -> str:
    """Give ``holder`` a new secret; the old one keeps signing for ``grace_s`` seconds."""
    holder.webhook_previous_secret = holder.webhook_secret
    holder.webhook_previous_secret_expires_at = datetime.now(UTC) + timedelta(seconds=grace_s)
    holder.webhook_secret = new_secret()
    return holder.webhook_secret


def live_secrets(holder: SecretHolder, *, now: datetime) -> list[str]:
    expires = holder.webhook_previous_secret_expires_at
    if holder.webhook_previous_secret is not None and expires is not None and expires > now:
        return [holder.webhook_secret, holder.webhook_previous_secret]
    return [holder.webhook_secret]


def signature_header(*, message_id: str, timestamp: int, body: bytes, keys: list[str]) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(_key_bytes(key), signed, hashlib.sha256)).decode()
        for key in keys
    )


def _key_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
