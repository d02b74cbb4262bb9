"""A tenant's webhook endpoints, secrets, delivery log and dead letters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services import dispatch
from services.errors import InvalidRequest, NotFound, WebhookNotReplayable
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
from services.webhooks.events import EventType
from services.webhooks.signing import rotate_secret
from services.webhooks.urls import check_webhook_url

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EndpointChanges:
    url: str | None = None
    description: str | None = None
    event_types: list[EventType] | None = None
    thin_payload: bool | None = None
    enabled: bool | None = None
    all_events: bool = False  # clear the filter (event_types None means "unchanged")


@dataclass(frozen=True)
class LoggedAttempt:
    attempt: WebhookAttempt
    message_id: str
    event_type: str


@dataclass(frozen=True)
class DeadLetter:
    delivery: WebhookDelivery
    event_type: str


def create_endpoint(
    session: Session,
    *,
    tenant: Tenant,
    url: str,
    description: str | None,
    event_types: list[EventType] | None,
    thin_payload: bool,
    settings: Settings,
) -> WebhookEndpoint:
    check_webhook_url(url, allowed_networks=settings.webhook_allowed_networks)
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        url=url,
        description=description,
        event_types=_distinct(event_types),
        thin_payload=thin_payload,
    )
    session.add(endpoint)
    session.flush()
    _count_endpoints(session, tenant.id, +1)
    log.info("webhook_endpoint_created", tenant_id=str(tenant.id), endpoint_id=str(endpoint.id))
    return endpoint


def list_endpoints(session: Session, *, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def get_endpoint(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, lock: bool = False
) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=lock)
    if endpoint is None or endpoint.tenant_id != tenant_id or endpoint.deleted_at is not None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return endpoint


def update_endpoint(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    changes: EndpointChanges,
    settings: Settings,
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, lock=True)
    if changes.url is not None:
        check_webhook_url(changes.url, allowed_networks=settings.webhook_allowed_networks)
        endpoint.url = changes.url
    if changes.description is not None:
        endpoint.description = changes.description
    if changes.all_events:
        if changes.event_types is not None:
            raise InvalidRequest("give either event_types or all_events, not both")
        endpoint.event_types = None
    elif changes.event_types is not None:
        endpoint.event_types = _distinct(changes.event_types)
    if changes.thin_payload is not None:
        endpoint.thin_payload = changes.thin_payload
    if changes.enabled is True:
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
    elif changes.enabled is False:
        disable_endpoint(endpoint, reason="disabled through the API")
    endpoint.updated_at = utcnow()
    return endpoint


def disable_endpoint(endpoint: WebhookEndpoint, *, reason: str) -> None:
    """Send the endpoint nothing more until it is enabled again; the first reason stays."""
    if endpoint.disabled_at is None:
        endpoint.disabled_at = utcnow()
        endpoint.disabled_reason = reason
        log.warning("webhook_endpoint_disabled", endpoint_id=str(endpoint.id), reason=reason)


def delete_endpoint(session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint; what it still had pending is discarded, its log is kept."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, lock=True)
    now = utcnow()
    endpoint.deleted_at = now
    endpoint.updated_at = now
    _count_endpoints(session, tenant_id, -1)
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEAD]),
        )
        .values(status=DeliveryStatus.DISCARDED, finished_at=now, lease_expires_at=None)
    )


def rotate_endpoint_secret(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, settings: Settings
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, lock=True)
    rotate_secret(endpoint, grace_s=settings.webhook_secret_grace_s)
    endpoint.updated_at = utcnow()
    log.info("webhook_secret_rotated", tenant_id=str(tenant_id), endpoint_id=str(endpoint_id))
    return endpoint


def rotate_tenant_secret(session: Session, *, tenant: Tenant, settings: Settings) -> Tenant:
    session.refresh(tenant, with_for_update=True)
    rotate_secret(tenant, grace_s=settings.webhook_secret_grace_s)
    log.info("webhook_callback_secret_rotated", tenant_id=str(tenant.id))
    return tenant


def delivery_log(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    limit: int,
    before: int | None,
) -> list[LoggedAttempt]:
    """The endpoint's attempts, newest first; ``before`` continues after an attempt id."""
    get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    statement = (
        select(WebhookAttempt, WebhookMessage.id, WebhookMessage.event_type)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(WebhookAttempt.endpoint_id == endpoint_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit)
    )
    if before is not None:
        statement = statement.where(WebhookAttempt.id < before)
    return [LoggedAttempt(*row) for row in session.execute(statement).all()]


def dead_letters(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID | None, limit: int
) -> list[DeadLetter]:
    """The tenant's deliveries that ran out of attempts (or whose endpoint was disabled)."""
    statement = (
        select(WebhookDelivery, WebhookMessage.event_type)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.status == DeliveryStatus.DEAD,
        )
        .order_by(WebhookDelivery.finished_at.desc(), WebhookDelivery.id)
        .limit(limit)
    )
    if endpoint_id is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == endpoint_id)
    return [DeadLetter(*row) for row in session.execute(statement).all()]


def replay_dead_letter(
    session: Session, *, tenant_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """Attempt a dead letter again from the start of the schedule, with its original
    ``webhook-id``; queued once the caller commits."""
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.tenant_id != tenant_id:
        raise NotFound(f"no webhook delivery {delivery_id}")
    if delivery.status != DeliveryStatus.DEAD:
        raise WebhookNotReplayable(f"delivery {delivery_id} is {delivery.status}, not dead")
    if delivery.endpoint_id is not None:
        endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
        if endpoint.disabled_at is not None:
            raise WebhookNotReplayable(
                f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); "
                'enable it first with PATCH {"enabled": true}'
            )
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    delivery.finished_at = None
    delivery.last_error = None
    dispatch.enqueue_webhook_after_commit(session, delivery.id)
    return delivery


def _count_endpoints(session: Session, tenant_id: uuid.UUID, change: int) -> None:
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(webhook_endpoint_count=Tenant.webhook_endpoint_count + change)
    )


def _distinct(event_types: list[EventType] | None) -> list[str] | None:
    return None if event_types is None else sorted({str(kind) for kind in event_types})
