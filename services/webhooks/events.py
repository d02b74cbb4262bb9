"""Events into the outbox: a message and one delivery per target, in the caller's transaction.

Payloads follow the Standard Webhooks shape ``{type, timestamp, data}``. A query's events go
to its own ``webhook_url`` when it has one (the tenant's secret signs them), otherwise to
every enabled endpoint of the tenant whose event filter takes them.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services import dispatch
from services.accounting import costs_by_query, money_text
from services.models import (
    DeliveryStatus,
    Query,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
    utcnow,
)


class EventType(enum.StrEnum):
    QUERY_SUCCEEDED = "query.succeeded"
    QUERY_FAILED = "query.failed"
    QUERY_ESCALATED = "query.escalated"
    QUERY_CANCELLED = "query.cancelled"
    BUDGET_SOFT_LIMIT_CROSSED = "budget.soft_limit_crossed"
    BUDGET_EXHAUSTED = "budget.exhausted"
    THRESHOLD_DRIFT_DETECTED = "threshold.drift_detected"


# Fields left out of the payload for endpoints that ask for thin payloads.
FULL_PAYLOAD_ONLY = ("answer",)


def record_event(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    event_type: EventType,
    data: Callable[[], dict[str, Any]],
    to_url: str | None = None,
) -> WebhookMessage | None:
    """Write the event and its deliveries (to ``to_url`` alone, if given); None when no one
    listens, and then ``data`` is never built. Each delivery is queued once the caller's
    transaction commits."""
    targets: list[tuple[uuid.UUID | None, str]]
    if to_url is not None:
        targets = [(None, to_url)]
    elif session.get_one(Tenant, tenant_id).webhook_endpoint_count == 0:
        targets = []  # the tenant row is at hand already: no query for endpoints
    else:
        targets = [
            (endpoint.id, endpoint.url)
            for endpoint in _enabled_endpoints(session, tenant_id)
            if endpoint.event_types is None or event_type in endpoint.event_types
        ]
    if not targets:
        return None
    now = utcnow()
    message = WebhookMessage(
        id=f"msg_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        event_type=event_type,
        payload={"type": event_type.value, "timestamp": now.isoformat(), "data": data()},
        created_at=now,
    )
    session.add(message)
    session.flush()  # the deliveries refer to the message
    for endpoint_id, url in targets:
        delivery = WebhookDelivery(
            id=uuid.uuid4(),
            message_id=message.id,
            tenant_id=tenant_id,
            endpoint_id=endpoint_id,
            url=url,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        dispatch.enqueue_webhook_after_commit(session, delivery.id)
    return message


def record_query_event(session: Session, query: Query, event_type: EventType) -> None:
    record_event(
        session,
        tenant_id=query.tenant_id,
        event_type=event_type,
        data=functools.partial(query_event_data, session, query),
        to_url=query.webhook_url,
    )


def query_event_data(session: Session, query: Query) -> dict[str, Any]:
    costs = costs_by_query(session, [query.id])[query.id]
    data: dict[str, Any] = {
        "query_id": str(query.id),
        "status": query.status,
        "tier": query.answered_by or ("large" if query.escalated_at else "small"),
        "task": query.task_label,
        "metadata": query.request_metadata,
        "margin": query.margin,
        "threshold": query.threshold,
        "decision": query.decision,
        "cost": money_text(sum(costs.values(), Decimal(0))),
        "answer": query.answer,
    }
    if query.error_code is not None:
        data["error"] = {"code": query.error_code, "message": query.error_message}
    return data


def _enabled_endpoints(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == tenant_id,
                WebhookEndpoint.deleted_at.is_(None),
                WebhookEndpoint.disabled_at.is_(None),
            )
        )
    )
