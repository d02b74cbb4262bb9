"""Budgets: atomic check-and-reserve under a burst of concurrent submits, settlement to the
actual cost, release of what is unused, period reset, the soft-limit alert and the budget guard
at escalation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from services import budgets
from services.db import session_scope
from services.errors import BudgetExceeded
from services.models import BudgetPeriod, ModelCall, Query, QueryStatus, Tenant
from services.recovery import release_abandoned_reservations
from services.settings import get_settings
from services.tenants import set_budget
from tests.conftest import ADMIN_TOKEN, WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread

PROMPT = "How much does this cost?"
MAX_NEW_TOKENS = 16


def worst_case() -> tuple[Decimal, Decimal]:
    with session_scope() as session:
        return budgets.worst_case_costs(
            session, get_settings(), prompt=PROMPT, max_new_tokens=MAX_NEW_TOKENS
        )


def give_budget(tenant: TenantApi, *, hard: Decimal | None, soft: Decimal | None = None,
                period: str = "monthly") -> None:  # fmt: skip
    with session_scope() as session:
        name = session.get_one(Tenant, tenant.tenant_id).name
        set_budget(session, name=name, period=period, hard_limit=hard, soft_limit=soft)


def periods_of(tenant: TenantApi) -> list[BudgetPeriod]:
    with session_scope() as session:
        return list(
            session.scalars(select(BudgetPeriod).where(BudgetPeriod.tenant_id == tenant.tenant_id))
        )


def ledger_total(tenant: TenantApi) -> Decimal:
    with session_scope() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(ModelCall.cost), 0)).where(
                ModelCall.tenant_id == tenant.tenant_id
            )
        )
    return Decimal(total)


def test_periods_start_on_utc_boundaries() -> None:
    now = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
    assert budgets.period_start("daily", now) == datetime(2026, 11, 25, tzinfo=UTC)
    assert budgets.period_start("monthly", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert budgets.period_start("none", now) == budgets.NO_PERIOD


def test_500_concurrent_submits_accept_exactly_what_the_budget_covers(
    api_server: ServerThread, make_tenant: Callable[..., TenantApi]
) -> None:
    tenant = make_tenant(target_escalation_rate=0.3)
    small, large = worst_case()
    # Room for 40 queries with their escalation reserved, then small-only reservations.
    hard = 40 * (small + large) + 7 * small + small / 2
    give_budget(tenant, hard=hard)
    full = int(hard // (small + large))
    expected = full + int((hard - full * (small + large)) // small)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=api_server.url, limits=limits, timeout=60) as client:
            body = {"prompt": PROMPT, "max_new_tokens": MAX_NEW_TOKENS}
            return await asyncio.gather(
                *(client.post("/v1/queries", json=body, headers=tenant.headers) for _ in range(500))
            )

    responses = asyncio.run(burst())
    statuses = [response.status_code for response in responses]
    assert statuses.count(202) == expected
    assert statuses.count(402) == 500 - expected
    refused = next(r for r in responses if r.status_code == 402).json()["error"]
    assert refused["code"] == "budget_exceeded"
    assert "budget" in refused["message"]
    [period] = periods_of(tenant)
    with session_scope() as session:
        stored = session.scalars(select(Query).where(Query.tenant_id == tenant.tenant_id)).all()
    assert len(stored) == expected  # a refused submit writes nothing
    assert sum(q.reserved_small + q.reserved_large for q in stored) == period.reserved
    assert period.reserved + period.spent <= hard
    assert sum(q.reserved_large > 0 for q in stored) == full


def test_a_new_period_starts_from_zero() -> None:
    with session_scope() as session:
        tenant = Tenant(name=f"daily-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.0,
                        budget_period="daily", budget_hard_limit=Decimal("1.0"))  # fmt: skip
        session.add(tenant)
        session.flush()
        day_one = datetime(2026, 11, 24, 23, 59, tzinfo=UTC)
        budgets.reserve(session, tenant=tenant, small=Decimal("0.6"), large=Decimal(0), now=day_one)
        with pytest.raises(BudgetExceeded, match="daily budget of 1"):
            budgets.reserve(session, tenant=tenant, small=Decimal("0.6"), large=Decimal(0),
                            now=day_one)  # fmt: skip
        day_two = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
        reservation = budgets.reserve(
            session, tenant=tenant, small=Decimal("0.6"), large=Decimal(0), now=day_two
        )
        assert reservation.small == Decimal("0.6")
        session.rollback()


@pytest.mark.usefixtures("worker")
class TestSettlement:
    def test_calls_settle_to_their_cost_and_unused_reservations_come_back(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant(target_escalation_rate=0.5)
        small, _ = worst_case()
        give_budget(tenant, hard=Decimal(100), soft=small / 10)
        ids = []
        for i in range(WARMUP + 6):
            prompt = unique(f"settle {i}")
            small_tgi.script(prompt, margin=0.9 - i / 20)  # later ones less sure: escalate
            ids.append(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])
        cancelled = tenant.submit(unique("cancel before it runs"), max_new_tokens=MAX_NEW_TOKENS)
        tenant.client.delete(f"/v1/queries/{cancelled['id']}", headers=tenant.headers)
        finished = [tenant.wait_finished(query_id) for query_id in ids]
        assert any(q["tier"] == "large" for q in finished)
        [period] = periods_of(tenant)
        assert period.reserved == 0
        assert period.spent == ledger_total(tenant) > 0
        assert period.soft_limit_alerted_at is not None
        # Spending on past the soft limit does not alert again in the same period.
        tenant.wait_finished(tenant.submit(unique("one more"), max_new_tokens=MAX_NEW_TOKENS)["id"])
        [again] = periods_of(tenant)
        assert again.spent > period.spent
        assert again.soft_limit_alerted_at == period.soft_limit_alerted_at

    def test_escalation_needs_budget_for_the_large_call(
        self,
        make_tenant: Callable[..., TenantApi],
        small_tgi: ScriptedTGI,
        large_tgi: ScriptedTGI,
        unique: Callable[[str], str],
    ) -> None:
        tenant = make_tenant(target_escalation_rate=0.99)  # at 1 the small model is skipped
        small, _ = worst_case()
        give_budget(tenant, hard=(WARMUP + 1) * small + small / 2)  # never room for L
        for i in range(WARMUP):
            prompt = unique(f"guard warm-up {i}")
            small_tgi.script(prompt, margin=0.9)
            tenant.wait_finished(tenant.submit(prompt, max_new_tokens=MAX_NEW_TOKENS)["id"])
        unsure = unique("unsure but poor")
        small_tgi.script(unsure, margin=0.01)
        query = tenant.wait_finished(tenant.submit(unsure, max_new_tokens=MAX_NEW_TOKENS)["id"])
        assert query["tier"] == "small"
        assert query["decision"] == "budget_guard"
        assert query["margin"] < query["threshold"]
        assert large_tgi.calls[unsure] == 0
        [period] = periods_of(tenant)
        assert period.reserved == 0
        assert period.spent == ledger_total(tenant)


@pytest.mark.usefixtures("worker")
def test_usage_shows_where_the_money_went_and_only_to_its_tenant(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant, stranger = make_tenant(target_escalation_rate=0.5), make_tenant()
    give_budget(tenant, hard=Decimal(50), soft=Decimal(40))
    for i in range(WARMUP + 6):  # the last two in a scope of their own (still warming up)
        prompt = unique(f"usage {i}")
        small_tgi.script(prompt, margin=0.9 - i / 12)
        task = "billing" if i >= WARMUP + 4 else "support"
        tenant.wait_finished(tenant.submit(prompt, task=task, max_new_tokens=8)["id"])
    usage = tenant.client.get("/v1/usage", params={"granularity": "month"},
                              headers=tenant.headers).json()  # fmt: skip
    [month] = usage["buckets"]
    assert month["start"] == datetime.now(UTC).strftime("%Y-%m-01")
    assert Decimal(month["cost"]) == ledger_total(tenant)
    assert set(month["by_task"]) == {"billing", "support"}
    tiers = month["by_tier"]
    assert tiers["small"]["calls"] == WARMUP + 6
    assert tiers["large"]["calls"] == usage["queries"]["escalated"] > 0
    assert Decimal(tiers["small"]["cost"]) + Decimal(tiers["large"]["cost"]) == ledger_total(tenant)
    queries = usage["queries"]
    assert queries["total"] == queries["by_status"]["succeeded"] == WARMUP + 6
    assert queries["decided_after_warmup"] == 4
    assert queries["escalation_rate"] == queries["escalated"] / queries["decided_after_warmup"]
    assert queries["target_escalation_rate"] == 0.5
    assert Decimal(usage["budget"]["spent"]) == ledger_total(tenant)
    assert Decimal(usage["budget"]["available"]) == Decimal(50) - ledger_total(tenant)

    theirs = stranger.client.get("/v1/usage", headers=stranger.headers).json()
    assert theirs["buckets"] == []
    assert theirs["queries"]["total"] == 0
    assert theirs["budget"] is None
    assert tenant.client.get("/v1/usage", params={"granularity": "year"},
                             headers=tenant.headers).status_code == 422  # fmt: skip


@pytest.mark.usefixtures("worker")
def test_a_budget_per_query_converges_to_the_matching_escalation_rate(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    """Every call here costs the same, so B = c_s + 0.25 c_l should escalate a quarter."""
    settings = get_settings()
    tenant = make_tenant(target_escalation_rate=0.9)  # overridden by the budget per query
    prompts = [unique(f"per-query {i}") for i in range(120)]
    words = len(prompts[0].split())
    small_cost = (words * Decimal("0.1") + Decimal("0.1")) / 10**6  # 1 output token
    large_cost = (words * Decimal(str(settings.large.price_input_per_mtok))
                  + Decimal(str(settings.large.price_output_per_mtok))) / 10**6  # fmt: skip
    with session_scope() as session:
        session.get_one(Tenant, tenant.tenant_id).budget_per_query = small_cost + large_cost / 4
    rng = np.random.default_rng(11)
    for prompt in prompts:
        small_tgi.script(prompt, answer="Yes", margin=float(rng.random()))
        large_tgi.script(prompt, answer="Sure")
    finished = [
        tenant.wait_finished(tenant.submit(prompt, max_new_tokens=1)["id"]) for prompt in prompts
    ]
    late = finished[40:]
    decided = [q for q in late if q["decision"] != "large_alone"]  # the surplus's, if any
    assert len(decided) >= len(late) - 5
    assert all(q["target_escalation_rate"] == pytest.approx(0.25) for q in decided)
    realised = sum(q["escalated"] for q in late) / len(late)
    assert realised == pytest.approx(0.25, abs=0.1)
    # The warm-up's unspent budget went to the large model alone: B is spent per query.
    assert any(q["decision"] == "large_alone" for q in finished[:40])
    spent_per_query = ledger_total(tenant) / len(prompts)
    assert spent_per_query == pytest.approx(small_cost + large_cost / 4, rel=Decimal("0.1"))


@pytest.mark.usefixtures("worker")
def test_prices_set_through_the_admin_api_price_new_calls(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tenant = make_tenant()
    model = get_settings().small.model
    priced = tenant.client.put(
        f"/v1/admin/prices/{model}",
        json={"price_input_per_mtok": "1000", "price_output_per_mtok": "2000"},
        headers=admin,
    )
    assert priced.status_code == 200
    try:
        listed = {
            p["model"]: p for p in tenant.client.get("/v1/admin/prices", headers=admin).json()
        }
        assert listed[model]["source"] == "admin"
        prompt = unique("priced by the admin")  # 4 words in, 1 word out
        small_tgi.script(prompt, answer="Yes")
        query = tenant.wait_finished(tenant.submit(prompt)["id"])
        words = len(prompt.split())
        assert Decimal(query["cost"]["small"]) == (words * 1000 + 2000) / Decimal(10**6)
    finally:
        cleared = tenant.client.delete(f"/v1/admin/prices/{model}", headers=admin)
        assert cleared.status_code == 204
    listed = {p["model"]: p for p in tenant.client.get("/v1/admin/prices", headers=admin).json()}
    assert listed[model]["source"] == "settings"


def test_the_sweep_gives_back_reservations_no_call_will_settle() -> None:
    with session_scope() as session:
        tenant = Tenant(name=f"abandoned-{uuid.uuid4().hex[:8]}", target_escalation_rate=0.3,
                        budget_period="none", budget_hard_limit=Decimal(1))  # fmt: skip
        session.add(tenant)
        session.flush()
        now = datetime.now(UTC)
        queries = []
        for lease in (now - timedelta(seconds=1), now + timedelta(hours=1)):
            reservation = budgets.reserve(
                session, tenant=tenant, small=Decimal("0.1"), large=Decimal("0.2")
            )
            query = Query(
                tenant_id=tenant.id, status=QueryStatus.CANCELLED, prompt="p", max_new_tokens=1,
                delivery_attempts=1, budget_period_id=reservation.period_id,
                reserved_small=reservation.small, reserved_large=reservation.large,
                lease_expires_at=lease,
            )  # fmt: skip
            session.add(query)
            queries.append(query)
        session.flush()
        assert release_abandoned_reservations(session) >= 1
        period = session.get_one(BudgetPeriod, queries[0].budget_period_id)
        assert queries[0].reserved_small == queries[0].reserved_large == 0
        assert queries[1].reserved_small == Decimal("0.1")  # its call may still settle
        assert period.reserved == Decimal("0.3")


@pytest.mark.usefixtures("worker")
def test_a_price_raised_tenfold_mid_flight_never_takes_spend_past_the_hard_limit(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    model = get_settings().small.model
    tenant = make_tenant(target_escalation_rate=0)

    def set_price(output_per_mtok: str) -> None:
        priced = tenant.client.put(
            f"/v1/admin/prices/{model}",
            json={"price_input_per_mtok": "0", "price_output_per_mtok": output_per_mtok},
            headers=admin,
        )
        assert priced.status_code == 200, priced.text

    set_price("1000")  # 4 output tokens cost 0.004: 50 such queries fill the 0.2 limit
    try:
        budget = {"budget_period": "monthly", "budget_hard_limit": "0.2"}
        patched = tenant.client.patch(
            f"/v1/admin/tenants/{tenant.tenant_id}", json=budget, headers=admin
        )
        assert patched.status_code == 200, patched.text
        prompts = [unique(f"price rise {i}") for i in range(50)]
        for prompt in prompts:  # every call waits until the price has risen
            small_tgi.script(prompt, answer="one two three four", margin=0.9, hold=True)
        accepted = []
        for prompt in prompts:
            response = tenant.client.post(
                "/v1/queries", json={"prompt": prompt, "max_new_tokens": 4}, headers=tenant.headers
            )
            assert response.status_code in (202, 402), response.text
            if response.status_code == 202:
                accepted.append(response.json()["id"])
        assert len(accepted) >= 40
        set_price("10000")
        for prompt in prompts:
            small_tgi.release(prompt)
        finished = [tenant.wait_finished(query_id) for query_id in accepted]
    finally:
        cleared = tenant.client.delete(f"/v1/admin/prices/{model}", headers=admin)
        assert cleared.status_code == 204
    assert {q["status"] for q in finished} == {"succeeded"}
    [period] = periods_of(tenant)
    assert period.reserved == 0
    assert period.spent == ledger_total(tenant)
    # At the new price the accepted queries would cost about 1.8; the limit caps the charge.
    assert Decimal("0.19") < period.spent <= Decimal("0.2")
