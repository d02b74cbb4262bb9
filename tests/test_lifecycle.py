"""The query lifecycle (services/lifecycle.py): its table of moves, and the budget invariants
that hold whatever sequence of moves, calls and cancellations a query goes through."""

from __future__ import annotations

import functools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from services import lifecycle
from services.accounting import price_of
from services.db import session_scope
from services.lifecycle import TRANSITIONS, IllegalTransition
from services.models import (
    TERMINAL_STATUSES,
    Query,
    QueryStatus,
    Tenant,
    Tier,
)
from services.settings import get_settings
from tests.lifecycle_moves import (
    Move,
    admitted_query,
    budgeted_tenant,
    check_budget_whole,
    generation,
    play_moves,
)

LIMIT = Decimal("0.0005")  # a few worst cases: some queries are refused, some escalations too


def test_finished_is_final_and_every_status_is_reachable_from_queued() -> None:
    assert all(not TRANSITIONS[status] for status in TERMINAL_STATUSES)
    reached, frontier = {QueryStatus.QUEUED}, [QueryStatus.QUEUED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()] - reached:
            reached.add(target)
            frontier.append(target)
    assert reached == set(QueryStatus)
    assert not lifecycle.can_move(QueryStatus.QUEUED, QueryStatus.SUCCEEDED)  # S runs first
    assert not lifecycle.can_move(QueryStatus.ESCALATED, QueryStatus.RUNNING)


def _tenant(session: Session) -> Tenant:
    return budgeted_tenant(session, hard_limit=LIMIT, name="lifecycle")


def test_an_illegal_move_raises_before_it_changes_anything() -> None:
    with session_scope() as session:
        tenant = _tenant(session)
        query = admitted_query(session, tenant, "finished")
        lifecycle.claim(session, query, Tier.SMALL, lease_s=30)
        lifecycle.succeed(session, query, answer="yes", tier=Tier.SMALL)
        before = (query.status, query.answer, query.finished_at, query.reserved_small)
        for move in (
            lambda: lifecycle.cancel(session, query, tier_names=get_settings().tier_names),
            lambda: lifecycle.fail(
                session, query, code="x", message="y", tier_names=get_settings().tier_names
            ),
            lambda: lifecycle.succeed(session, query, answer="no", tier=Tier.LARGE),
            lambda: lifecycle.claim(session, query, Tier.SMALL, lease_s=30),
            lambda: lifecycle.escalate(session, query, tenant=tenant, settings=get_settings()),
            lambda: lifecycle.release_after_cancel(session, query),
        ):
            with pytest.raises(IllegalTransition):
                move()
            assert (query.status, query.answer, query.finished_at, query.reserved_small) == before


def _charge(tier: Tier, tokens: int) -> Move:
    def charge(session: Session, query: Query, tenant: Tenant) -> object:
        tier_settings = get_settings().small if tier is Tier.SMALL else get_settings().large
        return lifecycle.charge(
            session, query, tenant=tenant, tier=tier, tier_settings=tier_settings,
            generation=generation(tokens), latency_ms=1, price=price_of(None, tier_settings),
        )  # fmt: skip

    return charge


MOVES: dict[str, Move] = {
    "claim_small": lambda s, q, t: lifecycle.claim(s, q, Tier.SMALL, lease_s=30),
    "claim_large": lambda s, q, t: lifecycle.claim(s, q, Tier.LARGE, lease_s=30),
    "charge_small": _charge(Tier.SMALL, 40),
    "charge_large": _charge(Tier.LARGE, 40),
    "escalate": lambda s, q, t: lifecycle.escalate(s, q, tenant=t, settings=get_settings()),
    "skip_small": lambda s, q, t: lifecycle.escalate(
        s, q, tenant=t, settings=get_settings(), small_called=False
    ),
    "succeed": lambda s, q, t: lifecycle.succeed(s, q, answer="a", tier=Tier.SMALL),
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
def test_any_sequence_of_moves_keeps_the_budget_whole(steps: list[tuple[int, str]]) -> None:
    """Four queries of one budgeted tenant; each step one move in its own transaction. An
    illegal move is refused and rolled back; after every step the period's reservations are
    the queries' own, spend is what the ledger charged, the hard limit holds, a finished query
    reserves nothing, and a finished query stays finished."""
    check = functools.partial(check_budget_whole, tiers=(Tier.SMALL, Tier.LARGE), limit=LIMIT)
    play_moves(steps, tenant=_tenant, moves=MOVES, check=check)
