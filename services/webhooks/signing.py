"""Secrets and signatures of the Standard Webhooks specification.

A secret is ``whsec_`` + base64 of 24 random bytes. The signature of one attempt is
``v1,`` + base64(HMAC-SHA256(secret, "{webhook-id}.{webhook-timestamp}.{body}")); the header
carries one signature per live secret, separated by spaces.

A rotation issues a new secret; the one it replaces keeps signing for the grace period,
counted from that rotation. Rotating again within a grace period keeps every earlier secret
whose own grace period still runs (up to ``MAX_PREVIOUS_SECRETS`` of them, the oldest dropped
first), so a receiver that has not switched yet keeps verifying whichever it holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypedDict

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MAX_PREVIOUS_SECRETS = 10


class PreviousSecret(TypedDict):
    secret: str
    expires_at: str  # ISO 8601, UTC


class SecretHolder(Protocol):
    """A row that owns a signing secret: a webhook endpoint, or a tenant for its queries'
    own callback URLs."""

    webhook_secret: str
    webhook_previous_secrets: list[PreviousSecret]
    webhook_previous_secret_expires_at: datetime | None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def rotate_secret(holder: SecretHolder, *, grace_s: float) -> str:
    """Give ``holder`` a new secret; the old one keeps signing for ``grace_s`` seconds, and
    so do the earlier ones still inside their own grace periods."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=grace_s)
    still_live = _live_previous(holder, now=now)
    replaced = PreviousSecret(secret=holder.webhook_secret, expires_at=expires.isoformat())
    holder.webhook_previous_secrets = [*still_live, replaced][-MAX_PREVIOUS_SECRETS:]
    holder.webhook_previous_secret_expires_at = expires
    holder.webhook_secret = new_secret()
    return holder.webhook_secret


def live_secrets(holder: SecretHolder, *, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, then the replaced ones whose
    grace periods still run, newest first."""
    previous = [entry["secret"] for entry in reversed(_live_previous(holder, now=now))]
    return [holder.webhook_secret, *previous]


def _live_previous(holder: SecretHolder, *, now: datetime) -> list[PreviousSecret]:
    return [
        entry
        for entry in holder.webhook_previous_secrets or []
        if datetime.fromisoformat(entry["expires_at"]) > now
    ]


def signature_header(*, message_id: str, timestamp: int, body: bytes, keys: list[str]) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(_key_bytes(key), signed, hashlib.sha256)).decode()
        for key in keys
    )


def _key_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))
