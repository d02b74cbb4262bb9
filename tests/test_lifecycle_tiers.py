"""The query lifecycle with a middle tier: a query escalates once per tier it leaves (escalated
-> escalated), its stage names the tier it waits for, and whatever sequence of moves, calls and
cancellations it goes through, the budget stays whole and the hard limit holds."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session

from services import budgets, lifecycle
from services.accounting import price_of
from services.db import session_scope
from services.lifecycle import IllegalTransition
from services.models import BudgetPeriod, Query, QueryStatus, Tenant
from services.settings import get_settings
from tests.conftest import settings_in_env
from tests.lifecycle_moves import (
    Move,
    admitted_query,
    budgeted_tenant,
    check_budget_whole,
    generation,
    play_moves,
)

MIDDLE = "medium"
TIERS = ("small", MIDDLE, "large")
# Room for one query's whole worst path and a little: the others reserve their small call only,
# and some escalations are refused.
LIMIT = Decimal("0.0006")


@pytest.fixture(scope="module", autouse=True)
def three_tiers() -> Iterator[None]:
    tier = {"name": MIDDLE, "backend": "tgi", "url": "http://127.0.0.1:1", "model": "m",
            "price_input_per_mtok": 1, "price_output_per_mtok": 5}  # fmt: skip
    with settings_in_env({"TWOTIER_MIDDLE_TIERS": json.dumps([tier])}):
        yield


def _tenant(session: Session) -> Tenant:
    return budgeted_tenant(session, hard_limit=LIMIT, name="tiers")


def test_a_query_climbs_one_stage_per_escalation_and_no_further_than_the_last() -> None:
    settings = get_settings()
    with session_scope() as session:
        tenant = _tenant(session)
        query = admitted_query(session, tenant, "climb")
        # The whole worst path fits the limit: reserved at submit, tier by tier.
        assert budgets.reserved_tiers(query) == list(TIERS)
        lifecycle.claim(session, query, "small", lease_s=30)
        assert lifecycle.waiting_tier(query, settings.tier_names) == "small"
        assert lifecycle.escalate(session, query, tenant=tenant, settings=settings)
        assert (query.status, query.stage) == (QueryStatus.ESCALATED, 1)
        assert lifecycle.waiting_tier(query, settings.tier_names) == MIDDLE
        assert lifecycle.escalate(session, query, tenant=tenant, settings=settings)
        assert (query.status, query.stage) == (QueryStatus.ESCALATED, 2)
        assert lifecycle.waiting_tier(query, settings.tier_names) == "large"
        with pytest.raises(IllegalTransition, match="cannot escalate further"):
            lifecycle.escalate(session, query, tenant=tenant, settings=settings)
        # Nothing charged yet: every tier's reservation waits for its call or the finish.
        assert budgets.reserved_tiers(query) == list(TIERS)
        lifecycle.succeed(session, query, answer="a", tier="large")
        assert budgets.reserved_tiers(query) == []
        assert query.reserved_middle is None


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_query_that_ends_at_the_middle_tier_is_counted_at_the_middle_tier(end: str) -> None:
    def counted() -> float:
        sample = REGISTRY.get_sample_value("twotier_queries_total", {"status": end, "tier": MIDDLE})
        return sample or 0.0

    settings = get_settings()
    before = counted()
    with session_scope() as session:
        tenant = _tenant(session)
        query = admitted_query(session, tenant, f"ends at the middle tier: {end}")
        lifecycle.claim(session, query, "small", lease_s=30)
        assert lifecycle.escalate(session, query, tenant=tenant, settings=settings)
        if end == "failed":
            lifecycle.fail(
                session, query, code="model_error", message="m", tier_names=settings.tier_names
            )
        else:
            lifecycle.cancel(session, query, tier_names=settings.tier_names)
    assert counted() == before + 1  # once the transaction commits


def test_skipping_to_the_large_tier_gives_back_the_tiers_it_jumps_over() -> None:
    settings = get_settings()
    with session_scope() as session:
        tenant = _tenant(session)
        query = admitted_query(session, tenant, "skip")
        assert lifecycle.escalate(
            session, query, tenant=tenant, settings=settings, small_called=False, to_tier="large"
        )
        assert query.stage == 2
        assert budgets.reserved_tiers(query) == ["large"]
        period = session.get_one(BudgetPeriod, query.budget_period_id)
        assert period.reserved == query.reserved_large


def _charge(tier: str) -> Move:
    def charge(session: Session, query: Query, tenant: Tenant) -> object:
        tier_settings = get_settings().tier(tier)
        return lifecycle.charge(
            session, query, tenant=tenant, tier=tier, tier_settings=tier_settings,
            generation=generation(40), latency_ms=1, price=price_of(None, tier_settings),
        )  # fmt: skip

    return charge


def _claim(tier: str) -> Move:
    return lambda session, query, _: lifecycle.claim(session, query, tier, lease_s=30)


MOVES: dict[str, Move] = {
    **{f"claim_{tier}": _claim(tier) for tier in TIERS},
    **{f"charge_{tier}": _charge(tier) for tier in TIERS},
    "escalate": lambda s, q, t: lifecycle.escalate(s, q, tenant=t, settings=get_settings()),
    "skip": lambda s, q, t: lifecycle.escalate(
        s, q, tenant=t, settings=get_settings(), small_called=False
    ),
    "large_alone": lambda s, q, t: lifecycle.escalate(
        s, q, tenant=t, settings=get_settings(), small_called=False, to_tier="large"
    ),
    "succeed": lambda s, q, t: lifecycle.succeed(
        s, q, answer="a", tier=lifecycle.waiting_tier(q, get_settings().tier_names)
    ),
    "fail": lambda s, q, t: lifecycle.fail(
        s, q, code="model_error", message="m", tier_names=get_settings().tier_names
    ),
    "cancel": lambda s, q, t: lifecycle.cancel(s, q, tier_names=get_settings().tier_names),
    "release_after_cancel": lambda s, q, t: lifecycle.release_after_cancel(s, q),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(sorted(MOVES))), min_size=1, max_size=30
    )
)
def test_any_sequence_of_moves_keeps_the_budget_whole_with_a_middle_tier(
    steps: list[tuple[int, str]],
) -> None:
    """Four queries of one budgeted tenant, three tiers; each step one move in its own
    transaction. An illegal move is refused and rolled back; after every step the period's
    reservations are the queries' own (per tier), spend is what the ledger charged, the hard
    limit holds, and a finished query reserves nothing."""
    check = functools.partial(check_budget_whole, tiers=TIERS, limit=LIMIT)
    play_moves(steps, tenant=_tenant, moves=MOVES, check=check)
