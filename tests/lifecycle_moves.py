"""Random sequences of lifecycle moves on a budgeted tenant's queries (the property tests of
tests/test_lifecycle.py and tests/test_lifecycle_tiers.py): the tenant, its queries, a call's
generation, the loop that plays the moves, and the budget invariants checked after each."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services import budgets, lifecycle
from services.db import session_factory, session_scope
from services.errors import BudgetExceeded
from services.lifecycle import IllegalTransition
from services.llm.base import Generation
from services.models import BudgetPeriod, ModelCall, Query, QueryStatus, Tenant
from services.settings import get_settings

Move = Callable[[Session, Query, Tenant], object]


def budgeted_tenant(session: Session, *, hard_limit: Decimal, name: str) -> Tenant:
    tenant = Tenant(name=f"{name}-{uuid.uuid4().hex[:10]}", target_escalation_rate=0.5,
                    budget_period="none", budget_hard_limit=hard_limit)  # fmt: skip
    session.add(tenant)
    session.flush()
    return tenant


def admitted_query(session: Session, tenant: Tenant, prompt: str) -> Query:
    query = Query(tenant_id=tenant.id, prompt=prompt, max_new_tokens=8, delivery_attempts=0)
    lifecycle.admit(session, query, tenant=tenant, settings=get_settings())
    session.flush()
    return query


def generation(tokens: int) -> Generation:
    return Generation(text="ok", first_token_candidates=(), input_tokens=tokens,
                      output_tokens=tokens, finish_reason="length")  # fmt: skip


def play_moves(
    steps: list[tuple[int, str]],
    *,
    tenant: Callable[[Session], Tenant],
    moves: Mapping[str, Move],
    check: Callable[[Session, uuid.UUID], None],
) -> None:
    """Four queries of one tenant (those its budget admits); each step one move on one of them,
    in its own transaction. An illegal move is refused and rolled back, a legal one is a move
    the lifecycle's table lists; ``check`` runs after every step."""
    with session_scope() as session:
        owner = tenant(session)
        ids = []
        for number in range(4):
            with contextlib.suppress(BudgetExceeded), session.begin_nested():
                ids.append(admitted_query(session, owner, f"q{number}").id)
        tenant_id = owner.id
    for index, name in steps:
        if not ids:
            break
        query_id = ids[index % len(ids)]
        with session_factory()() as session:
            query = session.get_one(Query, query_id, with_for_update=True)
            row = session.get_one(Tenant, tenant_id)
            before = QueryStatus(query.status)
            try:
                moves[name](session, query, row)
                session.commit()
            except IllegalTransition:
                session.rollback()
            after = QueryStatus(session.get_one(Query, query_id).status)
            assert after == before or lifecycle.can_move(before, after)
        with session_scope() as session:
            check(session, tenant_id)


def check_budget_whole(
    session: Session, tenant_id: uuid.UUID, *, tiers: Sequence[str], limit: Decimal
) -> None:
    """The period's reservations are the queries' own (per tier of ``tiers``, none negative),
    spend is what the ledger charged, the hard limit ``limit`` holds, and a finished query
    reserves nothing."""
    queries = session.scalars(select(Query).where(Query.tenant_id == tenant_id)).all()
    period = session.scalar(select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant_id))
    if period is None:
        return

    def held(query: Query) -> Decimal:
        return sum((budgets.reserved_for(query, tier) for tier in tiers), Decimal(0))

    assert period.reserved == sum((held(query) for query in queries), Decimal(0))
    assert all(budgets.reserved_for(q, tier) >= 0 for q in queries for tier in tiers)
    assert period.spent + period.reserved <= limit
    charged = session.scalar(
        select(func.coalesce(func.sum(ModelCall.cost), 0)).where(ModelCall.tenant_id == tenant_id)
    )
    assert period.spent == charged
    for query in queries:
        if query.status in (QueryStatus.SUCCEEDED, QueryStatus.FAILED):
            assert held(query) == 0, query.status
            assert query.reserved_middle is None
