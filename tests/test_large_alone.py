"""The large-alone step: a tenant whose budget per query pays the large model (or whose target
rate is 1) gets its queries answered by the large model alone, billed for that call only; a
tenant whose budget per query does not keeps the cascade."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import numpy as np
import pytest

from services import budgets
from services.db import session_scope
from services.evaluation.simulate import BudgetGrid, CostScheme, Stream
from services.models import Tenant
from services.policy import pacing
from services.settings import get_settings
from tests.conftest import TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.test_budgets import (
    MAX_NEW_TOKENS,
    give_budget,
    ledger_total,
    periods_of,
    worst_case,
)
from tests.test_cascade import ledger


def worst_case_of(prompt: str) -> tuple[Decimal, Decimal]:
    with session_scope() as session:
        return budgets.worst_case_costs(
            session, get_settings(), prompt=prompt, max_new_tokens=MAX_NEW_TOKENS
        )


def set_budget_per_query(tenant: TenantApi, budget_per_query: Decimal) -> None:
    with session_scope() as session:
        session.get_one(Tenant, tenant.tenant_id).budget_per_query = budget_per_query


@pytest.mark.usefixtures("worker")
class TestService:
    def test_a_budget_per_query_that_pays_the_large_model_skips_the_small_one(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant()
        small, large = worst_case()
        give_budget(tenant, hard=20 * (small + large))
        set_budget_per_query(tenant, large)  # B = c_l: L alone is affordable on average
        prompts = [unique(f"rich {i}") for i in range(3)]
        for prompt in prompts:
            small_tgi.script(prompt, answer="Small answer", margin=0.01)
            large_tgi.script(prompt, answer="Large answer")
        finished = [
            tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])
            for prompt in prompts
        ]
        for prompt, query in zip(prompts, finished, strict=True):
            assert (query["status"], query["tier"], query["answer"]) == (
                "succeeded", "large", "Large answer",
            )  # fmt: skip
            assert query["decision"] == "large_alone"
            assert query["margin"] is None
            assert (small_tgi.calls[prompt], large_tgi.calls[prompt]) == (0, 1)
            assert [call.tier for call in ledger(query["id"])] == ["large"]
            assert Decimal(query["cost"]["small"]) == 0
        [period] = periods_of(tenant)
        assert period.reserved == 0  # the small reservation was given back, the large settled
        assert period.spent == ledger_total(tenant)

    def test_a_budget_per_query_below_the_large_model_keeps_the_cascade(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant()
        prompt = unique("frugal")
        small, large = worst_case_of(prompt)  # what the costs are taken to be before any call
        set_budget_per_query(tenant, small + large / 4)  # B < c_l
        small_tgi.script(prompt, answer="Small answer", margin=0.01)
        large_tgi.script(prompt, answer="Large answer")
        query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])
        assert (query["tier"], query["decision"]) == ("small", "warmup")
        assert (small_tgi.calls[prompt], large_tgi.calls[prompt]) == (1, 0)
        assert [call.tier for call in ledger(query["id"])] == ["small"]

    def test_a_target_rate_of_one_skips_the_small_model(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant(target_escalation_rate=1.0)
        prompt = unique("escalate everything")
        small_tgi.script(prompt, answer="Small answer", margin=0.9)
        large_tgi.script(prompt, answer="Large answer")
        query = tenant.wait_finished(tenant.submit(prompt)["id"])
        assert (query["tier"], query["decision"]) == ("large", "large_alone")
        assert (small_tgi.calls[prompt], large_tgi.calls[prompt]) == (0, 1)
        assert [call.tier for call in ledger(query["id"])] == ["large"]


def test_the_surplus_pays_the_large_call_exactly_when_the_allowance_covers_it() -> None:
    # B = 5, c_l = 10: three answered queries that spent 8 leave 5 * 4 - 8 = 12 >= 10.
    assert pacing.covers_large(budget_per_query=5.0, answered=3, spent=8.0, large_cost=10.0)
    assert not pacing.covers_large(budget_per_query=5.0, answered=3, spent=10.5, large_cost=10.0)
    assert pacing.covers_large(
        budget_per_query=Decimal(10), answered=0, spent=Decimal(0), large_cost=Decimal(10)
    )


def stream(n: int = 400) -> Stream:
    rng = np.random.default_rng(3)
    scheme = CostScheme("c_l/c_s=10", np.ones(n), np.full(n, 10.0))
    return Stream(
        small_correct=rng.random(n) < 0.6,
        large_correct=rng.random(n) < 0.9,
        grids=[BudgetGrid(scheme, "c_l")],
        seeds=[0, 1],
        warmup=20,
    )


def test_offline_large_alone_answers_everything_with_l_once_b_reaches_c_l() -> None:
    simulated = stream()
    never = np.zeros((len(simulated.seed_of), simulated.n), dtype=bool)
    curves = simulated.run(never, "cascade", large_alone=True)
    assert curves.large_share[0, -1] == 1.0  # B = c_l: every query to L alone
    assert curves.accuracy[0, -1] == pytest.approx(simulated.large_correct.mean())
    assert curves.spend[0, -1] == pytest.approx(10.0)
    cascade_only = simulated.run(never, "cascade")
    assert cascade_only.large_share[0].max() == 0.0


def test_offline_large_alone_spends_the_cascades_surplus_and_never_more() -> None:
    simulated = stream()
    never = np.zeros((len(simulated.seed_of), simulated.n), dtype=bool)
    curves = simulated.run(never, "cascade", large_alone=True)
    budgets = simulated.grids[0].budgets
    assert (curves.spend[0] <= budgets + 1e-9).all()
    # A cascade that never escalates spends c_s; the surplus goes to L alone instead.
    middle = len(budgets) // 2
    assert curves.large_share[0, middle] > 0.3
    assert curves.spend[0, middle] > budgets[middle] - 10
