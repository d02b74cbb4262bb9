"""The cost ledger (services/accounting.py): the price in force (an admin override, else the
tier's settings), cost arithmetic in Decimal, and at most one ledger row per query and tier,
also when two workers charge the same call at once."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from services import accounting
from services.accounting import Price
from services.db import session_factory, session_scope
from services.llm.base import Generation
from services.models import ModelCall, ModelPrice, Query, QueryStatus, Tier
from services.settings import TierSettings
from services.tenants import create_tenant

TOKENS = st.integers(min_value=0, max_value=2**31 - 1)
PRICES = st.decimals(min_value=0, max_value=10**9, places=10, allow_nan=False)


def tier_settings(*, input_price: float = 0.1, output_price: float = 0.3) -> TierSettings:
    """A tier with a model name of its own, so that no other test's price override applies."""
    return TierSettings(
        model=f"model-{uuid.uuid4().hex[:8]}",
        price_input_per_mtok=input_price,
        price_output_per_mtok=output_price,
    )


def generation(input_tokens: int = 1000, output_tokens: int = 500) -> Generation:
    return Generation(
        text="answer",
        first_token_candidates=(),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason="length",
    )


def new_query() -> tuple[uuid.UUID, uuid.UUID]:
    """A committed tenant and query: (tenant id, query id)."""
    with session_scope() as session:
        tenant = create_tenant(
            session, name=f"ledger-{uuid.uuid4().hex[:10]}", target_escalation_rate=0.3
        ).tenant
        query = Query(tenant_id=tenant.id, status=QueryStatus.RUNNING, prompt="p", max_new_tokens=8)
        session.add(query)
        session.flush()
        return tenant.id, query.id


def ledger_rows(query_id: uuid.UUID) -> list[ModelCall]:
    with session_scope() as session:
        return list(session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)))


def test_cost_is_per_million_tokens() -> None:
    price = Price(Decimal("0.1"), Decimal("0.3"))
    assert price.cost(input_tokens=1000, output_tokens=500) == Decimal("0.00025")
    assert price.cost(input_tokens=0, output_tokens=0) == 0


@given(input_tokens=TOKENS, output_tokens=TOKENS, input_price=PRICES, output_price=PRICES)
def test_cost_is_decimal_arithmetic_without_float_rounding(
    input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal
) -> None:
    cost = Price(input_price, output_price).cost(
        input_tokens=input_tokens, output_tokens=output_tokens
    )
    assert isinstance(cost, Decimal)
    exact = (input_tokens * input_price + output_tokens * output_price) / Decimal(10**6)
    assert cost == exact
    assert cost >= 0


@given(tokens=TOKENS, more=TOKENS, price=PRICES)
def test_more_tokens_never_cost_less(tokens: int, more: int, price: Decimal) -> None:
    prices = Price(price, price)
    fewer = prices.cost(input_tokens=tokens, output_tokens=tokens)
    assert prices.cost(input_tokens=tokens + more, output_tokens=tokens) >= fewer
    assert prices.cost(input_tokens=tokens, output_tokens=tokens + more) >= fewer


@pytest.mark.parametrize(("number", "price"), [(0.1, "0.1"), (3.0, "3.0"), (1e-7, "1e-07")])
def test_settings_prices_keep_the_decimal_the_setting_reads_as(number: float, price: str) -> None:
    settings = tier_settings(input_price=number, output_price=number)
    assert accounting.settings_price(settings) == Price(Decimal(price), Decimal(price))


def test_without_an_override_the_settings_price_is_in_force() -> None:
    settings = tier_settings(input_price=0.1, output_price=0.3)
    with session_scope() as session:
        assert accounting.current_price(session, settings) == Price(Decimal("0.1"), Decimal("0.3"))


def test_an_admin_override_replaces_the_settings_price_for_its_model_alone() -> None:
    settings, other = tier_settings(), tier_settings()
    with session_scope() as session:
        session.add(
            ModelPrice(
                model=settings.model,
                price_input_per_mtok=Decimal("2.5"),
                price_output_per_mtok=Decimal("7.0000000001"),
            )
        )
    with session_scope() as session:
        assert accounting.current_price(session, settings) == Price(
            Decimal("2.5"), Decimal("7.0000000001")
        )
        assert accounting.current_price(session, other) == accounting.settings_price(other)


def test_a_call_is_charged_once_at_the_price_in_force() -> None:
    tenant_id, query_id = new_query()
    settings = tier_settings(input_price=0.1, output_price=0.3)
    with session_scope() as session:
        cost = accounting.record_model_call(
            session,
            query_id=query_id,
            tenant_id=tenant_id,
            tier=Tier.SMALL,
            tier_settings=settings,
            generation=generation(1000, 500),
            latency_ms=12,
        )
    assert cost == Decimal("0.00025")
    (row,) = ledger_rows(query_id)
    assert (row.tier, row.model, row.cost) == (Tier.SMALL, settings.model, Decimal("0.00025"))
    assert (row.input_tokens, row.output_tokens, row.latency_ms) == (1000, 500, 12)
    assert row.tenant_id == tenant_id
    assert row.input_tokens_estimated is False


def charge(
    query_id: uuid.UUID,
    tenant_id: uuid.UUID,
    tier: Tier,
    settings: TierSettings,
    *,
    price: Price | None = None,
    most: Decimal | None = None,
) -> Decimal | None:
    with session_scope() as session:
        return accounting.record_model_call(
            session,
            query_id=query_id,
            tenant_id=tenant_id,
            tier=tier,
            tier_settings=settings,
            generation=generation(),
            latency_ms=5,
            price=price,
            most=most,
        )


def test_a_second_charge_on_the_same_tier_inserts_nothing_and_returns_none() -> None:
    tenant_id, query_id = new_query()
    settings = tier_settings()
    assert charge(query_id, tenant_id, Tier.SMALL, settings) is not None
    assert charge(query_id, tenant_id, Tier.SMALL, settings) is None
    assert len(ledger_rows(query_id)) == 1


def test_each_tier_is_charged_once_and_costs_are_summed_per_tier() -> None:
    tenant_id, query_id = new_query()
    small, large = tier_settings(), tier_settings(input_price=3.0, output_price=15.0)
    small_cost = charge(query_id, tenant_id, Tier.SMALL, small)
    large_cost = charge(query_id, tenant_id, Tier.LARGE, large)
    assert large_cost == Decimal("0.0105")
    _, uncharged = new_query()
    with session_scope() as session:
        costs = accounting.costs_by_query(session, [query_id, uncharged])
    assert costs == {query_id: {"small": small_cost, "large": large_cost}, uncharged: {}}


def test_a_price_the_caller_read_already_is_the_one_charged() -> None:
    tenant_id, query_id = new_query()
    read_before = Price(Decimal(1), Decimal(1))
    cost = charge(query_id, tenant_id, Tier.SMALL, tier_settings(), price=read_before)
    assert cost == Decimal("0.0015")


def test_a_charge_is_capped_at_what_the_hard_limit_leaves() -> None:
    tenant_id, query_id = new_query()
    cost = charge(query_id, tenant_id, Tier.SMALL, tier_settings(), most=Decimal("0.0001"))
    assert cost == Decimal("0.0001")
    assert ledger_rows(query_id)[0].cost == Decimal("0.0001")
    other_tenant, other = new_query()
    uncapped = charge(other, other_tenant, Tier.SMALL, tier_settings(), most=Decimal(1))
    assert uncapped == Decimal("0.00025")


def test_a_rolled_back_charge_leaves_no_row_and_the_call_can_be_charged_again() -> None:
    tenant_id, query_id = new_query()
    settings = tier_settings()
    with session_factory()() as session:
        accounting.record_model_call(
            session,
            query_id=query_id,
            tenant_id=tenant_id,
            tier=Tier.SMALL,
            tier_settings=settings,
            generation=generation(),
            latency_ms=5,
        )
        session.rollback()
    assert ledger_rows(query_id) == []
    assert charge(query_id, tenant_id, Tier.SMALL, settings) is not None


def test_two_workers_charging_the_same_call_at_once_charge_it_once() -> None:
    tenant_id, query_id = new_query()
    settings = tier_settings()
    workers = 6
    start = threading.Barrier(workers)
    costs: list[Decimal | None] = []

    def work() -> None:
        start.wait(timeout=10)
        costs.append(charge(query_id, tenant_id, Tier.LARGE, settings))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(costs) == workers
    assert sum(cost is not None for cost in costs) == 1
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(ModelCall).where(ModelCall.query_id == query_id)
        )
    assert count == 1


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("5E-7"), "0.0000005000"),
        (Decimal(0), "0.0000000000"),
        (Decimal("12.5"), "12.5000000000"),
        (Decimal("1E+3"), "1000.0000000000"),
    ],
)
def test_money_is_fixed_notation_with_ten_places(amount: Decimal, text: str) -> None:
    assert accounting.money_text(amount) == text
