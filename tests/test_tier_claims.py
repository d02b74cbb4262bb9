"""services.tier_claims: which deliveries of a tier's task may take a query, what the others
are told (skipped, busy, failed), and the lease that a claim takes and gives back."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.db import session_scope
from services.models import BudgetPeriod, Query, QueryStatus, Tier, utcnow
from services.settings import Settings, get_settings
from services.tier_claims import (
    CLAIMABLE,
    Claim,
    Outcome,
    TierResult,
    claim_for_tier,
    hold_lease_until,
    release_lease,
)
from tests.factories import add_query, new_tenant

MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def tenant_id() -> uuid.UUID:
    return new_tenant()


def claim_settings() -> Settings:
    return get_settings().model_copy(
        update={"max_delivery_attempts": MAX_ATTEMPTS, "task_lease_s": 30.0}
    )


def make_query(tenant_id: uuid.UUID, **columns: Any) -> uuid.UUID:
    with session_scope() as session:
        return add_query(session, tenant_id, **columns).id


def stored(query_id: uuid.UUID) -> Query:
    with session_scope() as session:
        query = session.get_one(Query, query_id)
        session.expunge(query)
        return query


def test_a_queued_query_is_claimed_for_the_small_tier(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id, prompt="What is 2+2?", choices=["3", "4"])
    before = utcnow()
    claim = claim_for_tier(query_id, Tier.SMALL, claim_settings())
    assert claim == Claim(
        prompt="What is 2+2?", max_new_tokens=16, choices=["3", "4"], tenant_id=tenant_id
    )
    query = stored(query_id)
    assert query.status == QueryStatus.RUNNING
    assert query.delivery_attempts == 1
    assert query.small_started_at is not None
    assert query.small_started_at >= before
    assert query.lease_expires_at is not None
    lease = (query.lease_expires_at - before).total_seconds()
    assert 29 < lease < 35


def test_an_escalated_query_is_claimed_for_the_large_tier_and_stays_escalated(
    tenant_id: uuid.UUID,
) -> None:
    query_id = make_query(tenant_id, status=QueryStatus.ESCALATED)
    assert isinstance(claim_for_tier(query_id, Tier.LARGE, claim_settings()), Claim)
    query = stored(query_id)
    assert query.status == QueryStatus.ESCALATED
    assert query.large_started_at is not None
    assert query.lease_expires_at is not None


def test_a_missing_query_is_skipped() -> None:
    assert claim_for_tier(uuid.uuid4(), Tier.SMALL, claim_settings()) == TierResult(Outcome.SKIPPED)


@pytest.mark.parametrize(
    ("status", "tier"),
    [
        (QueryStatus.SUCCEEDED, Tier.SMALL),
        (QueryStatus.FAILED, Tier.LARGE),
        (QueryStatus.CANCELLED, Tier.SMALL),
        (QueryStatus.ESCALATED, Tier.SMALL),  # the small tier is done with it
        (QueryStatus.QUEUED, Tier.LARGE),  # not escalated (yet)
        (QueryStatus.RUNNING, Tier.LARGE),
    ],
)
def test_a_query_not_at_the_tier_is_skipped_and_left_alone(
    tenant_id: uuid.UUID, status: QueryStatus, tier: Tier
) -> None:
    query_id = make_query(tenant_id, status=status)
    assert claim_for_tier(query_id, tier, claim_settings()) == TierResult(Outcome.SKIPPED)
    query = stored(query_id)
    assert (query.status, query.delivery_attempts, query.lease_expires_at) == (status, 0, None)


def test_a_live_lease_makes_another_delivery_busy_until_it_runs_out(
    tenant_id: uuid.UUID,
) -> None:
    query_id = make_query(
        tenant_id, status=QueryStatus.RUNNING, lease_expires_at=utcnow() + timedelta(seconds=12)
    )
    result = claim_for_tier(query_id, Tier.SMALL, claim_settings())
    assert isinstance(result, TierResult)
    assert result.outcome is Outcome.BUSY
    assert 10 < result.retry_in_s <= 12
    assert stored(query_id).delivery_attempts == 0  # a busy delivery is no attempt


def test_a_lease_that_ran_out_is_taken_over(tenant_id: uuid.UUID) -> None:
    query_id = make_query(
        tenant_id,
        status=QueryStatus.RUNNING,
        delivery_attempts=1,
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    assert isinstance(claim_for_tier(query_id, Tier.SMALL, claim_settings()), Claim)
    query = stored(query_id)
    assert query.delivery_attempts == 2
    assert query.lease_expires_at is not None
    assert query.lease_expires_at > utcnow()


def test_the_delivery_past_the_last_attempt_fails_the_query(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id, status=QueryStatus.RUNNING, delivery_attempts=MAX_ATTEMPTS)
    result = claim_for_tier(query_id, Tier.SMALL, claim_settings())
    assert result == TierResult(Outcome.FAILED)
    query = stored(query_id)
    assert query.status == QueryStatus.FAILED
    assert query.error_code == "delivery_attempts_exhausted"
    assert f"delivered {MAX_ATTEMPTS} times" in (query.error_message or "")
    assert query.finished_at is not None
    assert query.lease_expires_at is None


def test_the_last_allowed_attempt_still_claims(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id, delivery_attempts=MAX_ATTEMPTS - 1)
    assert isinstance(claim_for_tier(query_id, Tier.SMALL, claim_settings()), Claim)
    assert stored(query_id).delivery_attempts == MAX_ATTEMPTS


@given(
    status=st.sampled_from(list(QueryStatus)),
    tier=st.sampled_from(list(Tier)),
    lease_in_s=st.one_of(st.none(), st.sampled_from([-5.0, 20.0])),
    attempts=st.integers(0, MAX_ATTEMPTS + 1),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_claim_follows_the_rules(
    status: QueryStatus, tier: Tier, lease_in_s: float | None, attempts: int
) -> None:
    tenant = new_tenant()
    lease = None if lease_in_s is None else utcnow() + timedelta(seconds=lease_in_s)
    query_id = make_query(tenant, status=status, lease_expires_at=lease, delivery_attempts=attempts)
    result = claim_for_tier(query_id, tier, claim_settings())
    query = stored(query_id)
    if status not in CLAIMABLE[tier]:
        assert result == TierResult(Outcome.SKIPPED)
        assert query.status == status
        assert query.delivery_attempts == attempts
    elif lease_in_s is not None and lease_in_s > 0:
        assert isinstance(result, TierResult)
        assert result.outcome is Outcome.BUSY
        assert query.delivery_attempts == attempts
    elif attempts + 1 > MAX_ATTEMPTS:
        assert result == TierResult(Outcome.FAILED)
        assert query.status == QueryStatus.FAILED
    else:
        assert isinstance(result, Claim)
        assert query.delivery_attempts == attempts + 1
        assert query.status == (QueryStatus.RUNNING if tier is Tier.SMALL else status)


def cancelled_with_reservation(tenant_id: uuid.UUID, lease_in_s: float) -> tuple[uuid.UUID, int]:
    with session_scope() as session:
        period = BudgetPeriod(
            tenant_id=tenant_id, period_start=utcnow(), reserved=Decimal("1.5"), spent=Decimal(0)
        )
        session.add(period)
        session.flush()
        query = add_query(
            session,
            tenant_id,
            status=QueryStatus.CANCELLED,
            budget_period_id=period.id,
            reserved_small=Decimal("1.0"),
            reserved_large=Decimal("0.5"),
            lease_expires_at=utcnow() + timedelta(seconds=lease_in_s),
        )
        return query.id, period.id


def reserved(period_id: int) -> Decimal:
    with session_scope() as session:
        return session.get_one(BudgetPeriod, period_id).reserved


def test_a_cancelled_query_whose_call_is_over_gives_back_its_reservation() -> None:
    query_id, period_id = cancelled_with_reservation(new_tenant(), lease_in_s=-1)
    assert claim_for_tier(query_id, Tier.SMALL, claim_settings()) == TierResult(Outcome.SKIPPED)
    assert reserved(period_id) == 0
    query = stored(query_id)
    assert (query.reserved_small, query.reserved_large) == (0, 0)


def test_a_cancelled_query_whose_call_may_still_run_keeps_its_reservation() -> None:
    query_id, period_id = cancelled_with_reservation(new_tenant(), lease_in_s=20)
    assert claim_for_tier(query_id, Tier.SMALL, claim_settings()) == TierResult(Outcome.SKIPPED)
    assert reserved(period_id) == Decimal("1.5")


def test_releasing_the_lease_frees_the_query_for_the_next_delivery(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id)
    assert isinstance(claim_for_tier(query_id, Tier.SMALL, claim_settings()), Claim)
    release_lease(query_id)
    query = stored(query_id)
    assert query.lease_expires_at is None
    assert query.delivery_attempts == 1  # a delivered attempt still counts
    assert isinstance(claim_for_tier(query_id, Tier.SMALL, claim_settings()), Claim)


def test_an_undelivered_call_does_not_count_as_an_attempt(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id)
    for _ in range(MAX_ATTEMPTS + 2):  # a long overload: never exhausts the attempts
        assert isinstance(claim_for_tier(query_id, Tier.SMALL, claim_settings()), Claim)
        release_lease(query_id, delivered=False)
    assert stored(query_id).delivery_attempts == 0
    release_lease(query_id, delivered=False)
    assert stored(query_id).delivery_attempts == 0  # never below zero


def test_holding_the_lease_keeps_other_deliveries_busy_until_the_retry(
    tenant_id: uuid.UUID,
) -> None:
    query_id = make_query(tenant_id, status=QueryStatus.RUNNING)
    hold_lease_until(query_id, 15)
    result = claim_for_tier(query_id, Tier.SMALL, claim_settings())
    assert isinstance(result, TierResult)
    assert result.outcome is Outcome.BUSY
    assert 13 < result.retry_in_s <= 15


def test_a_finished_query_gets_no_lease_held(tenant_id: uuid.UUID) -> None:
    query_id = make_query(tenant_id, status=QueryStatus.SUCCEEDED)
    hold_lease_until(query_id, 15)
    assert stored(query_id).lease_expires_at is None
