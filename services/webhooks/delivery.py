"""Attempting webhook deliveries: claim, send outside any transaction, record the outcome.

Like a tier's task, a delivery is claimed under its row lock with a lease, so a duplicate
message waits instead of sending twice at once; a worker killed mid-attempt leaves a lease
that runs out, after which the delivery is attempted again with the same ``webhook-id``
(at least once, as the specification asks receivers to expect). The lease outlasts the
attempt's whole deadline (services/webhooks/egress.py), so a live worker's attempt always ends
before another may start; deliveries to a slow receiver are paced (services/webhooks/pacing.py).
"""

from __future__ import annotations

import functools
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from sqlalchemy.orm import Session, undefer

from services import metrics
from services.db import after_commit, session_scope
from services.errors import WebhookUrlRefused, WebhookUrlUnresolvable
from services.models import (
    DeliveryStatus,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
    utcnow,
)
from services.settings import Settings
from services.webhooks.egress import AttemptTimedOut, send_attempt
from services.webhooks.endpoints import disable_endpoint
from services.webhooks.events import FULL_PAYLOAD_ONLY
from services.webhooks.pacing import lease_s, wait_for_slow_target
from services.webhooks.signing import live_secrets, signature_header

log = structlog.get_logger(__name__)

JITTER = 0.2
EXCERPT_BYTES = 500
USER_AGENT = "twotier-webhooks/0.1"


@dataclass(frozen=True)
class _Attempt:
    delivery_id: uuid.UUID
    number: int
    endpoint_id: uuid.UUID | None
    url: str
    message_id: str
    body: bytes
    keys: list[str]


@dataclass(frozen=True)
class _Answer:
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    excerpt: str | None = None
    duration_ms: int = 0
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def attempt_delivery(delivery_id: uuid.UUID, *, settings: Settings) -> float | None:
    """Attempt the delivery if it is due. Returns when to look again (a retry, or an attempt
    not yet due), or None when there is nothing more to do now."""
    claim = _claim(delivery_id, settings)
    if not isinstance(claim, _Attempt):
        return claim
    answer = _send(claim, settings)
    return _record(claim, answer, settings)


def body_of(payload: dict[str, Any], *, thin: bool) -> bytes:
    if thin:
        data = {k: v for k, v in payload["data"].items() if k not in FULL_PAYLOAD_ONLY}
        payload = {**payload, "data": data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _claim(delivery_id: uuid.UUID, settings: Settings) -> _Attempt | float | None:
    with session_scope() as session:
        delivery = _locked(session, delivery_id)
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None
        now = utcnow()
        if delivery.next_attempt_at > now:
            return (delivery.next_attempt_at - now).total_seconds()
        if delivery.lease_expires_at is not None and delivery.lease_expires_at > now:
            return (delivery.lease_expires_at - now).total_seconds()
        endpoint = (
            session.get(WebhookEndpoint, delivery.endpoint_id) if delivery.endpoint_id else None
        )
        if endpoint is not None and _finished_with_endpoint(delivery, endpoint):
            return None
        wait_s = wait_for_slow_target(
            session, delivery, deadline_s=settings.webhook_timeout_s, now=now
        )
        if wait_s is not None:
            delivery.next_attempt_at = now + timedelta(seconds=wait_s)
            return wait_s
        message = session.get_one(WebhookMessage, delivery.message_id)
        signer = endpoint or session.get_one(
            Tenant,
            delivery.tenant_id,
            options=[undefer(Tenant.webhook_secret), undefer(Tenant.webhook_previous_secrets)],
        )
        delivery.attempts += 1
        delivery.lease_expires_at = now + timedelta(seconds=lease_s(settings.webhook_timeout_s))
        return _Attempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            endpoint_id=delivery.endpoint_id,
            url=delivery.url,
            message_id=message.id,
            body=body_of(message.payload, thin=endpoint is not None and endpoint.thin_payload),
            keys=live_secrets(signer, now=now),
        )


def _finished_with_endpoint(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> bool:
    """Finish the delivery if its endpoint was deleted or disabled; whether it was."""
    if endpoint.deleted_at is not None:
        _finish(delivery, DeliveryStatus.DISCARDED, "the endpoint was deleted")
        return True
    if endpoint.disabled_at is not None:
        reason = f"the endpoint is disabled: {endpoint.disabled_reason}"
        _finish(delivery, DeliveryStatus.DEAD, reason)
        return True
    return False


def _send(attempt: _Attempt, settings: Settings) -> _Answer:
    started = time.perf_counter()

    def elapsed_ms() -> int:
        return round((time.perf_counter() - started) * 1000)

    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": attempt.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            message_id=attempt.message_id, timestamp=timestamp, body=attempt.body, keys=attempt.keys
        ),
    }
    try:
        reply = send_attempt(
            attempt.url,
            allowed_networks=settings.webhook_allowed_networks,
            content=attempt.body,
            headers=headers,
            deadline_s=settings.webhook_timeout_s,
            excerpt_bytes=EXCERPT_BYTES,
        )
    except WebhookUrlRefused as exc:
        return _Answer(error=exc.message, refused=True)
    except WebhookUrlUnresolvable as exc:
        return _Answer(error=exc.message, duration_ms=elapsed_ms())
    except AttemptTimedOut as exc:
        return _Answer(error=str(exc), duration_ms=elapsed_ms())
    except httpx.HTTPError as exc:
        return _Answer(error=f"{type(exc).__name__}: {exc}"[:1000], duration_ms=elapsed_ms())
    error = None
    if 300 <= reply.status_code < 400 and reply.location is not None:
        error = f"redirects are not followed (to {reply.location!r})"
    return _Answer(
        status_code=reply.status_code,
        error=error,
        retry_after_s=_retry_after_s(reply.retry_after),
        excerpt=reply.excerpt.decode(errors="replace"),
        duration_ms=elapsed_ms(),
    )


def _record(attempt: _Attempt, answer: _Answer, settings: Settings) -> float | None:
    with session_scope() as session:
        delivery = _locked(session, attempt.delivery_id)
        assert delivery is not None
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                endpoint_id=attempt.endpoint_id,
                attempt=attempt.number,
                status_code=answer.status_code,
                error=answer.error,
                response_excerpt=answer.excerpt,
                duration_ms=answer.duration_ms,
            )
        )
        delivery.lease_expires_at = None
        log.info(
            "webhook_attempt", delivery_id=str(delivery.id), message_id=attempt.message_id,
            attempt=attempt.number, status_code=answer.status_code, error=answer.error,
        )  # fmt: skip
        if delivery.status != DeliveryStatus.PENDING:
            return None
        delay_s = _outcome(session, delivery, answer, settings)
        outcome = (
            "delivered" if answer.delivered else "dead_lettered" if delay_s is None else "retrying"
        )
        after_commit(session, functools.partial(metrics.count_webhook_delivery, outcome))
        return delay_s


def _outcome(
    session: Session, delivery: WebhookDelivery, answer: _Answer, settings: Settings
) -> float | None:
    """Record what the attempt means for the delivery; the delay before a retry, if any."""
    if answer.delivered:
        _finish(delivery, DeliveryStatus.SUCCEEDED, None)
        return None
    reason = answer.error or f"the receiver answered {answer.status_code}"
    if answer.status_code == httpx.codes.GONE:
        _disable_endpoint(session, delivery, "the receiver answered 410 Gone")
        _finish(delivery, DeliveryStatus.DEAD, "the receiver answered 410 Gone")
        return None
    schedule = settings.webhook_retry_schedule_s
    if answer.refused or delivery.attempts >= len(schedule):
        _finish(delivery, DeliveryStatus.DEAD, reason)
        return None
    delay_s = _next_delay_s(schedule, delivery.attempts, answer.retry_after_s)
    delivery.last_error = reason[:1000]
    delivery.next_attempt_at = utcnow() + timedelta(seconds=delay_s)
    return delay_s


def _next_delay_s(schedule: list[float], attempts_made: int, retry_after_s: float | None) -> float:
    """The schedule's delay before the next attempt, jittered so that the retries of many
    deliveries that failed together do not arrive together; the receiver's Retry-After
    wins when it asks for longer (up to the schedule's longest delay)."""
    delay_s = schedule[attempts_made] * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, max(schedule)))
    return delay_s


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - utcnow()).total_seconds(), 0.0)


def _disable_endpoint(session: Session, delivery: WebhookDelivery, reason: str) -> None:
    if delivery.endpoint_id is not None:
        endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id, with_for_update=True)
        disable_endpoint(endpoint, reason=reason)


def _finish(delivery: WebhookDelivery, status: DeliveryStatus, error: str | None) -> None:
    delivery.status = status
    delivery.last_error = error[:1000] if error else None
    delivery.finished_at = utcnow()
    delivery.lease_expires_at = None


def _locked(session: Session, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id, with_for_update=True, populate_existing=True)
