"""Budget pacing (TWOTIER_BUDGET_PACING_QUERIES): a tenant with a budget per query escalates at
p(B) plus what its answered queries left unspent, spread over the next N queries, and skips the
small model only when B pays the large one for every query. The service reads the tenant's
ledger, the offline evaluation the simulated spend; both ask services.policy.pacing, and both
are pinned here on streams worked by hand."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from services import policy
from services.db import session_scope
from services.evaluation.simulate import BudgetGrid, CostScheme, Stream
from services.models import ModelCall, QueryStatus, Tenant, Tier
from services.policy import pacing
from services.policy.rates import expected_costs
from services.settings import Settings, get_settings
from services.tenants import create_tenant
from tests.conftest import TenantApi
from tests.factories import add_query, new_tenant
from tests.scripted_tgi import ScriptedTGI
from tests.three_tiers import embedded_api

WINDOW = 4


def paced_settings(window: int | None = WINDOW) -> Settings:
    return get_settings().model_copy(update={"budget_pacing_queries": window})


def test_the_paced_rate_adds_what_was_left_unspent_spread_over_the_window() -> None:
    # p(B) = 0.4 with B = 5, c_l = 10: three answered queries that spent 13 of 15 left 2,
    # spread over 4 queries at c_l each: 0.4 + 2 / 40.
    paced = pacing.paced_rate(
        0.4, budget_per_query=5.0, answered=3, spent=13.0, large_cost=10.0, window=WINDOW
    )
    assert paced == pytest.approx(0.45)
    overspent = pacing.paced_rate(
        0.4, budget_per_query=5.0, answered=3, spent=19.0, large_cost=10.0, window=WINDOW
    )
    assert overspent == pytest.approx(0.3)  # 15 - 19 = -4: 0.4 - 4 / 40
    assert pacing.paced_rate(
        0.4, budget_per_query=5.0, answered=30, spent=0.0, large_cost=10.0, window=WINDOW
    ) == 1.0  # fmt: skip
    assert pacing.paced_rate(
        0.4, budget_per_query=5.0, answered=3, spent=100.0, large_cost=10.0, window=WINDOW
    ) == 0.0  # fmt: skip


def answered(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    small: str,
    large: str | None = None,
    status: QueryStatus = QueryStatus.SUCCEEDED,
) -> None:
    """A query of the tenant in ``status`` with its ledger rows: a small call costing
    ``small`` and, if given, a large one costing ``large``."""
    query = add_query(session, tenant_id, status=status)
    for tier, cost in ((Tier.SMALL, small), (Tier.LARGE, large)):
        if cost is not None:
            session.add(
                ModelCall(
                    query_id=query.id, tenant_id=tenant_id, tier=tier, model=f"{tier}-model",
                    input_tokens=10, output_tokens=5, cost=Decimal(cost), latency_ms=1,
                )
            )  # fmt: skip
    session.flush()


def rate_and_large_alone(tenant_id: uuid.UUID, settings: Settings) -> tuple[float, bool]:
    with session_scope() as session:
        tenant = session.get_one(Tenant, tenant_id)
        query = add_query(session, tenant_id)

        def worst_case() -> tuple[Decimal, Decimal]:
            return Decimal(1), Decimal(10)

        rate = policy.target_escalation_rate(
            session, tenant=tenant, settings=settings, worst_case=worst_case, query_id=query.id
        )
        alone = policy.goes_large_alone(
            session, query=query, tenant=tenant, settings=settings, worst_case=worst_case
        )
        session.rollback()
        return rate, alone


def tenant_with_history(budget_per_query: str) -> uuid.UUID:
    """Three answered queries: small only, escalated, small only (c_s = 1, c_l = 10): 13 spent."""
    tenant_id = new_tenant(budget_per_query=Decimal(budget_per_query))
    with session_scope() as session:
        answered(session, tenant_id, small="1")
        answered(session, tenant_id, small="1", large="10")
        answered(session, tenant_id, small="1")
    return tenant_id


def test_the_service_paces_a_budget_per_query_by_the_tenants_ledger() -> None:
    tenant_id = tenant_with_history("5")  # p(B) = (5 - 1) / 10 = 0.4
    assert rate_and_large_alone(tenant_id, paced_settings(None)) == (pytest.approx(0.4), False)
    # 3 * 5 - 13 = 2 left unspent: 0.4 + 2 / (10 * 4)
    assert rate_and_large_alone(tenant_id, paced_settings()) == (pytest.approx(0.45), False)
    with session_scope() as session:  # waiting for its large call: c_l counted as spent
        answered(session, tenant_id, small="1", status=QueryStatus.ESCALATED)
    # 4 * 5 - (13 + 1 + 10) = -4: 0.4 - 4 / 40
    assert rate_and_large_alone(tenant_id, paced_settings()) == (pytest.approx(0.3), False)


def test_under_pacing_only_a_budget_that_pays_the_large_model_skips_the_small_one() -> None:
    rich = tenant_with_history("8")  # surplus 8 * 4 - 13 = 19 pays c_l = 10
    assert rate_and_large_alone(rich, paced_settings(None))[1] is True
    rate, alone = rate_and_large_alone(rich, paced_settings())
    assert alone is False  # the surplus goes to the threshold instead
    assert rate == pytest.approx(0.7 + (3 * 8 - 13) / 40)
    assert rate_and_large_alone(tenant_with_history("10"), paced_settings())[1] is True


def hand_worked_stream(small_correct: list[bool]) -> Stream:
    """Margins 0.9, 0.8, 0.7, 0.6 in this order, c_s = 1, c_l = 4, no warm-up; the large
    model always right."""
    n = len(small_correct)
    return Stream(
        small_correct=np.array(small_correct),
        large_correct=np.ones(n, dtype=bool),
        grids=[BudgetGrid(CostScheme("c_l/c_s=4", np.ones(n), np.full(n, 4.0)), "c_l")],
        seeds=[0],
        warmup=0,
        orders=np.arange(n)[None, :],
    )


MARGINS = np.array([0.9, 0.8, 0.7, 0.6])
B_IS_2 = 33  # linspace(1, 4, 100)[33] == 2.0: p(B) = 0.25, B * n = 8


def test_offline_pacing_escalates_what_the_hand_worked_stream_says() -> None:
    """B = 2, p(B) = 0.25, N = 2. Paced: query 0 spends 1; query 1 has 1 unspent, rate
    0.25 + 1/8, threshold H[floor(2 * 0.375)] = 0.8, not below; query 2 has 2 unspent, rate
    0.5, threshold H[1] = 0.8 > 0.7: escalates (8 - 2 - 5 = 1 still pays query 3's small call);
    query 3 has -1 unspent, rate 0.125, threshold H[0] = 0.6, not below. Unpaced (0.25):
    only query 3 is below its threshold H[1] = 0.7, and 8 - 3 - 5 = 0 pays it."""
    stream = hand_worked_stream([True, True, False, True])
    assert stream.grids[0].budgets[B_IS_2] == 2.0
    paced = stream.run(stream.paced_threshold(MARGINS, 2), "cascade", large_alone=True)
    assert paced.accuracy[0, B_IS_2] == 1.0  # query 2 escalated, the rest right on S
    assert paced.spend[0, B_IS_2] == 2.0
    assert paced.large_share[0, B_IS_2] == 0.25
    unpaced = stream.run(stream.threshold_wants(MARGINS, "cascade"), "cascade")
    assert unpaced.accuracy[0, B_IS_2] == 0.75  # query 3 escalated, query 2 left wrong
    assert unpaced.large_share[0, B_IS_2] == 0.25


def test_offline_pacing_asks_the_services_rate_at_every_step() -> None:
    stream = hand_worked_stream([True, True, False, True])
    rule = stream.paced_threshold(MARGINS, 2)
    budgets = stream.grids[0].budgets
    spent = np.zeros(len(budgets))
    for t in range(3):
        rule.wants(t, spent)
        spent = spent + 1.0
    rates = pacing.paced_rate(
        stream.rates("cascade"), budget_per_query=budgets, answered=3, spent=spent,
        large_cost=np.full(len(budgets), 4.0), window=2,
    )  # fmt: skip
    wants = rule.wants(3, spent)  # H = 0.6, 0.7, 0.8, 0.9: below H[floor(4 * rate)]
    history = np.sort(MARGINS)
    expected = history[np.minimum(np.floor(4 * rates).astype(int), 3)] > 0.6
    assert (wants == expected).all()
    assert wants.any()
    assert not wants.all()
    assert not rule.large_alone(3, spent)[:-1].any()  # only B = c_l sends L alone
    assert rule.large_alone(3, spent)[-1]


@pytest.fixture(scope="module")
def paced_client() -> Iterator[TestClient]:
    """The API with the embedded queue's workers, under budget pacing over WINDOW queries."""
    with embedded_api({"TWOTIER_BUDGET_PACING_QUERIES": str(WINDOW)}) as client:
        yield client


def test_through_the_api_a_paced_tenant_escalates_at_a_rate_that_grows_with_its_surplus(
    paced_client: TestClient, small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    """Every answer is confident, so each query spends c_s < B and the surplus grows: each
    decision's rate is above the last (unpaced, all would be p(B)); nothing escalates."""
    with session_scope() as session:
        created = create_tenant(session, name=unique("paced"), target_escalation_rate=0.3)
    tenant = TenantApi(paced_client, created.tenant.id, created.api_key)
    prompts = [unique(f"paced question {i:02d}") for i in range(7)]  # one length: one c_s
    for prompt in prompts:
        small_tgi.script(prompt, answer="sure", margin=0.9)
    tenant.wait_finished(tenant.submit(prompts.pop(0), max_new_tokens=8)["id"])
    with session_scope() as session:  # c_s and c_l as the service now takes them: p(B) = 0.2
        settings, row = get_settings(), session.get_one(Tenant, tenant.tenant_id)
        small, large = expected_costs(
            session, tenant=row, settings=settings, worst_case=lambda: (Decimal(0), Decimal(0))
        )
        row.budget_per_query = small + large / 5
    rates = []
    for prompt in prompts:
        query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=8)["id"])
        assert (query["status"], query["tier"]) == ("succeeded", "small")
        rates.append(query["target_escalation_rate"])
    assert rates[0] > 0.2  # the first query's own surplus already counts
    assert all(later > earlier for earlier, later in itertools.pairwise(rates)), rates
    assert rates[-1] < 1
