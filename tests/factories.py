"""Small factories for rows that tests of the domain modules start from: a tenant with the
columns a test sets, queries in any status, webhook endpoints and deliveries, written straight to
PostgreSQL; and a dispatcher that notes what it is asked to queue."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from services.db import session_scope
from services.models import (
    DeliveryStatus,
    Query,
    QueryStatus,
    Tenant,
    Tier,
    WebhookDelivery,
    WebhookMessage,
    utcnow,
)
from services.settings import get_settings
from services.tenants import create_tenant
from services.webhooks.endpoints import create_endpoint
from services.webhooks.events import EventType


def new_tenant(*, target_escalation_rate: float = 0.3, **columns: Any) -> uuid.UUID:
    """A committed tenant with ``columns`` (limits, budgets) set; its id."""
    with session_scope() as session:
        tenant = create_tenant(
            session,
            name=f"tenant-{uuid.uuid4().hex[:10]}",
            target_escalation_rate=target_escalation_rate,
        ).tenant
        for name, value in columns.items():
            setattr(tenant, name, value)
        return tenant.id


def add_query(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    status: QueryStatus = QueryStatus.QUEUED,
    prompt: str = "Is the sky blue?",
    **columns: Any,
) -> Query:
    """A query row of ``tenant_id`` in ``status``, flushed in ``session``."""
    now = utcnow()
    query = Query(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        status=status,
        prompt=prompt,
        max_new_tokens=16,
        created_at=columns.pop("created_at", now),
        updated_at=now,
        **columns,
    )
    session.add(query)
    session.flush()
    return query


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    return session.get_one(Tenant, tenant_id)


def add_delivery(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    url: str = "http://127.0.0.1:9/hook",
    endpoint_id: uuid.UUID | None = None,
    **columns: Any,
) -> WebhookDelivery:
    """A message and one pending delivery of it (to ``endpoint_id``, or to ``url`` alone when
    it is None, as for a query's own webhook_url), flushed in ``session``."""
    now = utcnow()
    message = WebhookMessage(
        id=f"msg_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        event_type="query.succeeded",
        payload={"type": "query.succeeded", "timestamp": now.isoformat(), "data": {}},
        created_at=now,
    )
    session.add(message)
    session.flush()
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        message_id=message.id,
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        url=url,
        status=columns.pop("status", DeliveryStatus.PENDING),
        attempts=columns.pop("attempts", 0),
        next_attempt_at=columns.pop("next_attempt_at", now),
        created_at=now,
        **columns,
    )
    session.add(delivery)
    session.flush()
    return delivery


def add_endpoint(
    tenant_id: uuid.UUID, path: str, event_types: list[EventType] | None = None, **columns: Any
) -> uuid.UUID:
    """A committed endpoint of the tenant at a loopback URL, with ``columns`` set."""
    with session_scope() as session:
        endpoint = create_endpoint(
            session,
            tenant=get_tenant(session, tenant_id),
            url=f"http://127.0.0.1:9/{path}",
            description=None,
            event_types=event_types,
            thin_payload=False,
            settings=get_settings(),
        )
        for name, value in columns.items():
            setattr(endpoint, name, value)
        return endpoint.id


class RecordingDispatcher:
    """A dispatcher that notes the deliveries it is asked to queue."""

    def __init__(self) -> None:
        self.webhooks: list[uuid.UUID] = []

    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        raise AssertionError("no query is queued here")

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        self.webhooks.append(delivery_id)

    def feed_batches(self) -> None:
        raise AssertionError("no batch is fed here")

    def is_reachable(self) -> bool:
        return True
