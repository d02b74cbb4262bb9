"""The query lifecycle (services/lifecycle.py): its table of moves, and the budget invariants
that hold whatever sequence of moves, calls and cancellations a query goes through."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services import lifecycle
from services.accounting import price_of
from services.db import session_factory, session_scope
from services.errors import BudgetExceeded
from services.lifecycle import TRANSITIONS, IllegalTransition
from services.llm.base import Generation
from services.models import (
    TERMINAL_STATUSES,
    BudgetPeriod,
    ModelCall,
    Query,
    QueryStatus,
    Tenant,
    Tier,
)
from services.settings import get_settings

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
    tenant = Tenant(name=f"lifecycle-{uuid.uuid4().hex[:10]}", target_escalation_rate=0.5,
                    budget_period="none", budget_hard_limit=LIMIT)  # fmt: skip
    session.add(tenant)
    session.flush()
    return tenant


def _query(session: Session, tenant: Tenant, prompt: str) -> Query:
    query = Query(tenant_id=tenant.id, prompt=prompt, max_new_tokens=8, delivery_attempts=0)
    lifecycle.admit(session, query, tenant=tenant, settings=get_settings())
    session.flush()
    return query


def test_an_illegal_move_raises_before_it_changes_anything() -> None:
    with session_scope() as session:
        tenant = _tenant(session)
        query = _query(session, tenant, "finished")
        lifecycle.claim(session, query, Tier.SMALL, lease_s=30)
        lifecycle.succeed(session, query, answer="yes", tier=Tier.SMALL)
        before = (query.status, query.answer, query.finished_at, query.reserved_small)
        for move in (
            lambda: lifecycle.cancel(session, query),
            lambda: lifecycle.fail(session, query, code="x", message="y"),
            lambda: lifecycle.succeed(session, query, answer="no", tier=Tier.LARGE),
            lambda: lifecycle.claim(session, query, Tier.SMALL, lease_s=30),
            lambda: lifecycle.escalate(session, query, tenant=tenant, settings=get_settings()),
            lambda: lifecycle.release_after_cancel(session, query),
        ):
            with pytest.raises(IllegalTransition):
                move()
            assert (query.status, query.answer, query.finished_at, query.reserved_small) == before


def _generation(tokens: int) -> Generation:
    return Generation(text="ok", first_token_candidates=(), input_tokens=tokens,
                      output_tokens=tokens, finish_reason="length")  # fmt: skip


def _charge(tier: Tier, tokens: int) -> Callable[[Session, Query, Tenant], object]:
    def charge(session: Session, query: Query, tenant: Tenant) -> object:
        tier_settings = get_settings().small if tier is Tier.SMALL else get_settings().large
        return lifecycle.charge(
            session, query, tenant=tenant, tier=tier, tier_settings=tier_settings,
            generation=_generation(tokens), latency_ms=1, price=price_of(None, tier_settings),
        )  # fmt: skip

    return charge


MOVES: dict[str, Callable[[Session, Query, Tenant], object]] = {
    "claim_small": lambda s, q, t: lifecycle.claim(s, q, Tier.SMALL, lease_s=30),
    "claim_large": lambda s, q, t: lifecycle.claim(s, q, Tier.LARGE, lease_s=30),
    "charge_small": _charge(Tier.SMALL, 40),
    "charge_large": _charge(Tier.LARGE, 40),
    "escalate": lambda s, q, t: lifecycle.escalate(s, q, tenant=t, settings=get_settings()),
    "skip_small": lambda s, q, t: lifecycle.escalate(
        s, q, tenant=t, settings=get_settings(), small_called=False
    ),
    "succeed": lambda s, q, t: lifecycle.succeed(s, q, answer="a", tier=Tier.SMALL),
    "fail": lambda s, q, t: lifecycle.fail(s, q, code="model_error", message="m"),
    "cancel": lambda s, q, t: lifecycle.cancel(s, q),
    "release_after_cancel": lambda s, q, t: lifecycle.release_after_cancel(s, q),
}


def _check_budget(session: Session, tenant: Tenant) -> None:
    queries = session.scalars(select(Query).where(Query.tenant_id == tenant.id)).all()
    period = session.scalar(select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant.id))
    if period is None:
        return
    held = sum((q.reserved_small + q.reserved_large for q in queries), Decimal(0))
    assert period.reserved == held
    assert all(q.reserved_small >= 0 and q.reserved_large >= 0 for q in queries)
    assert period.spent + period.reserved <= LIMIT
    charged = session.scalar(
        select(func.coalesce(func.sum(ModelCall.cost), 0)).where(ModelCall.tenant_id == tenant.id)
    )
    assert period.spent == charged
    for query in queries:
        if query.status in (QueryStatus.SUCCEEDED, QueryStatus.FAILED):
            assert query.reserved_small == query.reserved_large == 0, query.status


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
    with session_scope() as session:
        tenant = _tenant(session)
        ids = []
        for number in range(4):
            with contextlib.suppress(BudgetExceeded), session.begin_nested():
                ids.append(_query(session, tenant, f"q{number}").id)
        tenant_id = tenant.id
    for index, name in steps:
        if not ids:
            break
        query_id = ids[index % len(ids)]
        with session_factory()() as session:
            query = session.get_one(Query, query_id, with_for_update=True)
            tenant = session.get_one(Tenant, tenant_id)
            before = QueryStatus(query.status)
            try:
                MOVES[name](session, query, tenant)
                session.commit()
            except IllegalTransition:
                session.rollback()
            after = QueryStatus(session.get_one(Query, query_id).status)
            assert after == before or lifecycle.can_move(before, after)
        with session_scope() as session:
            _check_budget(session, session.get_one(Tenant, tenant_id))
