"""services.webhooks.relay: pending deliveries overdue past the grace and under no live lease
are claimed (oldest first, stamped due now so the next pass leaves them alone); at start-up
the embedded default reclaims every pending delivery and releases its lease."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from services.db import session_scope
from services.models import DeliveryStatus, WebhookDelivery, utcnow
from services.webhooks.relay import claim_due_deliveries, reclaim_pending_deliveries
from tests.factories import add_delivery, new_tenant

GRACE_S = 30.0


def delivery(**columns: object) -> uuid.UUID:
    with session_scope() as session:
        return add_delivery(session, new_tenant(), **columns).id  # type: ignore[arg-type]


def claim(**kwargs: object) -> list[uuid.UUID]:
    with session_scope() as session:
        return claim_due_deliveries(session, **kwargs)  # type: ignore[arg-type]


def next_attempt_at(delivery_id: uuid.UUID) -> datetime:
    with session_scope() as session:
        return session.get_one(WebhookDelivery, delivery_id).next_attempt_at


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def test_a_delivery_overdue_past_the_grace_is_claimed_and_stamped_due_now() -> None:
    overdue = delivery(next_attempt_at=ago(GRACE_S + 60))
    before = utcnow()
    assert overdue in claim(grace_s=GRACE_S)
    assert next_attempt_at(overdue) >= before


def test_the_next_pass_leaves_a_claimed_delivery_alone() -> None:
    overdue = delivery(next_attempt_at=ago(GRACE_S + 60))
    assert overdue in claim(grace_s=GRACE_S)
    assert overdue not in claim(grace_s=GRACE_S)


def test_a_delivery_due_within_the_grace_or_later_is_left_to_its_message() -> None:
    recent = delivery(next_attempt_at=ago(GRACE_S - 10))
    future = delivery(next_attempt_at=utcnow() + timedelta(hours=1))
    claimed = claim(grace_s=GRACE_S)
    assert recent not in claimed
    assert future not in claimed
    assert recent in claim(grace_s=1)  # the same delivery, past a shorter grace


def test_a_delivery_under_a_live_lease_is_not_claimed_and_one_whose_lease_ran_out_is() -> None:
    leased = delivery(next_attempt_at=ago(600), lease_expires_at=utcnow() + timedelta(seconds=60))
    lapsed = delivery(next_attempt_at=ago(600), lease_expires_at=ago(1))
    claimed = claim(grace_s=GRACE_S)
    assert leased not in claimed
    assert lapsed in claimed


def test_finished_deliveries_are_never_claimed() -> None:
    finished = [
        delivery(next_attempt_at=ago(600), status=status)
        for status in DeliveryStatus
        if status != DeliveryStatus.PENDING
    ]
    claimed = claim(grace_s=GRACE_S)
    assert not set(finished) & set(claimed)


def test_the_oldest_are_claimed_first_up_to_the_limit() -> None:
    long_ago = datetime(1990, 1, 1, tzinfo=UTC)  # older than any other test's delivery
    oldest = [delivery(next_attempt_at=long_ago + timedelta(seconds=i)) for i in range(3)]
    assert claim(grace_s=GRACE_S, limit=2) == oldest[:2]
    assert oldest[2] in claim(grace_s=GRACE_S)


def test_a_delivery_locked_by_another_transaction_is_skipped_not_waited_for() -> None:
    overdue = delivery(next_attempt_at=ago(600))
    other_pass: list[list[uuid.UUID]] = []
    with session_scope() as holder:
        holder.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.id == overdue).with_for_update()
        )
        thread = threading.Thread(target=lambda: other_pass.append(claim(grace_s=GRACE_S)))
        thread.start()
        thread.join(timeout=20)
        assert not thread.is_alive()  # it did not wait for the lock
    assert overdue not in other_pass[0]
    assert overdue in claim(grace_s=GRACE_S)


def test_reclaiming_returns_every_pending_delivery_with_its_lease_released() -> None:
    leased = delivery(lease_expires_at=utcnow() + timedelta(minutes=5))
    future = delivery(next_attempt_at=utcnow() + timedelta(hours=1))
    dead = delivery(status=DeliveryStatus.DEAD)
    with session_scope() as session:
        reclaimed = reclaim_pending_deliveries(session)
    assert {leased, future} <= set(reclaimed)
    assert dead not in reclaimed
    with session_scope() as session:
        assert session.get_one(WebhookDelivery, leased).lease_expires_at is None
        # Its due time is kept: a retry scheduled for later stays later.
        assert session.get_one(WebhookDelivery, future).next_attempt_at > utcnow()
