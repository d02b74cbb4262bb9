"""services.webhooks.events: which events a query's moves record, where their deliveries go
(the query's own URL, or the tenant's endpoints whose filter takes them), what they carry,
and that deliveries are queued only once the transaction commits."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services import dispatch, lifecycle
from services.db import session_scope
from services.models import (
    DeliveryStatus,
    ModelCall,
    QueryStatus,
    Tier,
    WebhookDelivery,
    WebhookMessage,
    utcnow,
)
from services.settings import get_settings
from services.webhooks.events import EventType, record_event, record_query_event
from tests.factories import (
    RecordingDispatcher,
    add_endpoint,
    add_query,
    get_tenant,
    new_tenant,
)

OWN_URL = "http://127.0.0.1:9/own-hook"


def deliveries_of(session: Session, message: WebhookMessage | None) -> list[WebhookDelivery]:
    assert message is not None
    return list(
        session.scalars(select(WebhookDelivery).where(WebhookDelivery.message_id == message.id))
    )


def never_built() -> dict[str, Any]:
    raise AssertionError("the event's data was built though no one listens")


def test_no_endpoint_and_no_url_records_nothing_and_builds_no_data() -> None:
    tenant_id = new_tenant()
    with session_scope() as session:
        message = record_event(
            session, tenant_id=tenant_id, event_type=EventType.QUERY_SUCCEEDED, data=never_built
        )
        assert message is None
        mine = select(WebhookMessage).where(WebhookMessage.tenant_id == tenant_id)
        assert session.scalars(mine).all() == []


def test_endpoints_get_the_events_their_filter_takes_and_only_while_enabled() -> None:
    tenant_id = new_tenant()
    every = add_endpoint(tenant_id, "every")
    succeeded_only = add_endpoint(tenant_id, "succeeded", [EventType.QUERY_SUCCEEDED])
    add_endpoint(tenant_id, "failed", [EventType.QUERY_FAILED])
    add_endpoint(tenant_id, "disabled", disabled_at=utcnow())
    add_endpoint(tenant_id, "deleted", deleted_at=utcnow())
    with session_scope() as session:
        message = record_event(
            session,
            tenant_id=tenant_id,
            event_type=EventType.QUERY_SUCCEEDED,
            data=lambda: {"n": 1},
        )
        targets = {(d.endpoint_id, d.url) for d in deliveries_of(session, message)}
    assert targets == {
        (every, "http://127.0.0.1:9/every"),
        (succeeded_only, "http://127.0.0.1:9/succeeded"),
    }


def test_an_event_no_filter_takes_records_nothing() -> None:
    tenant_id = new_tenant()
    add_endpoint(tenant_id, "budget", [EventType.BUDGET_EXHAUSTED])
    with session_scope() as session:
        assert (
            record_event(
                session, tenant_id=tenant_id, event_type=EventType.QUERY_FAILED, data=never_built
            )
            is None
        )


def test_to_url_sends_to_that_url_alone() -> None:
    tenant_id = new_tenant()
    add_endpoint(tenant_id, "every")
    with session_scope() as session:
        message = record_event(
            session,
            tenant_id=tenant_id,
            event_type=EventType.QUERY_CANCELLED,
            data=lambda: {"query_id": "q"},
            to_url=OWN_URL,
        )
        [delivery] = deliveries_of(session, message)
    assert (delivery.endpoint_id, delivery.url) == (None, OWN_URL)


def test_the_message_has_the_standard_webhooks_shape_and_a_pending_delivery() -> None:
    tenant_id = new_tenant()
    before = utcnow()
    with session_scope() as session:
        message = record_event(
            session,
            tenant_id=tenant_id,
            event_type=EventType.BUDGET_SOFT_LIMIT_CROSSED,
            data=lambda: {"spent": "1.0"},
            to_url=OWN_URL,
        )
        assert message is not None
        [delivery] = deliveries_of(session, message)
        assert message.id.startswith("msg_")
        assert message.event_type == "budget.soft_limit_crossed"
        assert set(message.payload) == {"type", "timestamp", "data"}
        assert message.payload["type"] == "budget.soft_limit_crossed"
        assert message.payload["data"] == {"spent": "1.0"}
        assert message.payload["timestamp"] == message.created_at.isoformat()
        assert message.created_at >= before
        assert delivery.status == DeliveryStatus.PENDING
        assert delivery.attempts == 0
        assert delivery.next_attempt_at == message.created_at


def test_deliveries_are_queued_after_the_commit_and_not_after_a_rollback() -> None:
    tenant_id = new_tenant()
    dispatcher = RecordingDispatcher()
    with session_scope() as session:
        dispatch.use_in_session(session, dispatcher)
        message = record_event(
            session,
            tenant_id=tenant_id,
            event_type=EventType.QUERY_SUCCEEDED,
            data=dict,
            to_url=OWN_URL,
        )
        [delivery] = deliveries_of(session, message)
        assert dispatcher.webhooks == []  # not before the commit
    assert dispatcher.webhooks == [delivery.id]

    rolled_back = RecordingDispatcher()

    def record_then_fail() -> None:
        with session_scope() as session:
            dispatch.use_in_session(session, rolled_back)
            record_event(
                session,
                tenant_id=tenant_id,
                event_type=EventType.QUERY_FAILED,
                data=dict,
                to_url=OWN_URL,
            )
            raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        record_then_fail()
    assert rolled_back.webhooks == []


def query_event(tenant_id: uuid.UUID, **columns: Any) -> dict[str, Any]:
    """The data of a query's succeeded event, sent to the query's own URL."""
    with session_scope() as session:
        query = add_query(session, tenant_id, webhook_url=OWN_URL, **columns)
        record_query_event(session, query, EventType.QUERY_SUCCEEDED)
        message = session.scalars(
            select(WebhookMessage)
            .join(WebhookDelivery, WebhookDelivery.message_id == WebhookMessage.id)
            .where(WebhookMessage.tenant_id == tenant_id, WebhookDelivery.url == OWN_URL)
            .order_by(WebhookMessage.created_at.desc())
        ).first()
        assert message is not None
        data: dict[str, Any] = message.payload["data"]
        return data


def test_a_query_event_carries_the_decision_and_the_cost_of_both_tiers() -> None:
    tenant_id = new_tenant()
    with session_scope() as session:
        query = add_query(
            session,
            tenant_id,
            status=QueryStatus.SUCCEEDED,
            webhook_url=OWN_URL,
            task_label="triage",
            request_metadata={"ticket": 7},
            margin=0.12,
            threshold=0.3,
            decision="escalate",
            answer="Yes",
            answered_by=Tier.LARGE,
            escalated_at=utcnow(),
        )
        for tier, cost in ((Tier.SMALL, "0.0000010000"), (Tier.LARGE, "0.0020000000")):
            session.add(
                ModelCall(
                    query_id=query.id, tenant_id=tenant_id, tier=tier, model=f"m-{tier}",
                    input_tokens=3, output_tokens=1, cost=Decimal(cost), latency_ms=5,
                )
            )  # fmt: skip
        session.flush()
        record_query_event(session, query, EventType.QUERY_SUCCEEDED)
        [message] = session.scalars(
            select(WebhookMessage).where(WebhookMessage.tenant_id == tenant_id)
        ).all()
    assert message.payload["data"] == {
        "query_id": str(query.id),
        "status": "succeeded",
        "tier": "large",
        "task": "triage",
        "metadata": {"ticket": 7},
        "margin": 0.12,
        "threshold": 0.3,
        "decision": "escalate",
        "cost": "0.0020010000",
        "answer": "Yes",
    }


@pytest.mark.parametrize(
    ("columns", "tier"),
    [
        ({}, "small"),  # not answered, not escalated: waiting at the small tier
        ({"escalated_at": utcnow()}, "large"),
        ({"answered_by": "small", "escalated_at": utcnow()}, "small"),
    ],
)
def test_a_query_events_tier_is_the_answering_one_else_where_it_waits(
    columns: dict[str, Any], tier: str
) -> None:
    assert query_event(new_tenant(), **columns)["tier"] == tier


def test_a_failed_query_event_carries_the_error_and_others_do_not() -> None:
    tenant_id = new_tenant()
    failed = query_event(
        tenant_id, status=QueryStatus.FAILED, error_code="model_error", error_message="boom"
    )
    assert failed["error"] == {"code": "model_error", "message": "boom"}
    assert "error" not in query_event(tenant_id)
    assert query_event(tenant_id)["cost"] == "0.0000000000"


def events_of_moves(moves: list[str]) -> list[str]:
    """The event types recorded, in order, as a query of a fresh tenant makes ``moves``."""
    tenant_id = new_tenant()
    settings = get_settings()
    with session_scope() as session:
        tenant = get_tenant(session, tenant_id)
        query = add_query(session, tenant_id, webhook_url=OWN_URL)
        for move in moves:
            if move == "claim":
                lifecycle.claim(session, query, Tier.SMALL, lease_s=10)
            elif move == "escalate":
                assert lifecycle.escalate(
                    session, query, tenant=tenant, settings=settings,
                    worst_case=lambda: (Decimal(0), Decimal(0)),
                )  # fmt: skip
            elif move == "succeed":
                lifecycle.succeed(session, query, answer="Yes", tier=Tier.SMALL)
            elif move == "fail":
                lifecycle.fail(
                    session, query, code="model_error", message="boom",
                    tier_names=settings.tier_names,
                )  # fmt: skip
            elif move == "cancel":
                lifecycle.cancel(session, query, tier_names=settings.tier_names)
            session.flush()
        return [
            message.event_type
            for message in session.scalars(
                select(WebhookMessage)
                .where(WebhookMessage.tenant_id == tenant_id)
                .order_by(WebhookMessage.created_at)
            )
        ]


@pytest.mark.parametrize(
    ("moves", "events"),
    [
        (["claim"], []),
        (["claim", "succeed"], ["query.succeeded"]),
        (["claim", "escalate"], ["query.escalated"]),
        (["claim", "escalate", "succeed"], ["query.escalated", "query.succeeded"]),
        (["claim", "fail"], ["query.failed"]),
        (["cancel"], ["query.cancelled"]),
        (["claim", "escalate", "cancel"], ["query.escalated", "query.cancelled"]),
    ],
)
def test_each_query_move_records_its_event(moves: list[str], events: list[str]) -> None:
    assert events_of_moves(moves) == events
