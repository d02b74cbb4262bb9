"""services.usage: a tenant's spend and calls per UTC day or month, grouped by tier, model and
task label; its queries by status with the realised escalation rate after warm-up; and its
budget in the current period."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.budgets import period_start
from services.db import session_scope
from services.models import BudgetPeriod, ModelCall, QueryStatus, Tier, utcnow
from services.usage import Granularity, tenant_usage
from tests.factories import add_query, get_tenant, new_tenant

DAY_ONE = datetime(2030, 3, 30, 12, 0, tzinfo=UTC)


def add_call(
    tenant_id: uuid.UUID,
    *,
    at: datetime,
    tier: str = Tier.SMALL,
    model: str = "small-4bit",
    task: str | None = None,
    cost: str = "0.01",
    tokens: tuple[int, int] = (10, 2),
) -> None:
    """A query of the tenant and its ledger row for one tier's call."""
    with session_scope() as session:
        query = add_query(session, tenant_id, status=QueryStatus.SUCCEEDED, task_label=task)
        session.add(
            ModelCall(
                query_id=query.id, tenant_id=tenant_id, tier=tier, model=model,
                input_tokens=tokens[0], output_tokens=tokens[1], cost=Decimal(cost),
                latency_ms=10, created_at=at,
            )
        )  # fmt: skip


def usage(
    tenant_id: uuid.UUID,
    granularity: Granularity = "day",
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    with session_scope() as session:
        return tenant_usage(
            session,
            tenant=get_tenant(session, tenant_id),
            granularity=granularity,
            since=since,
            until=until,
        )


def test_calls_are_bucketed_by_utc_day_and_sorted() -> None:
    tenant_id = new_tenant()
    add_call(tenant_id, at=DAY_ONE + timedelta(days=2))
    add_call(tenant_id, at=DAY_ONE)
    add_call(tenant_id, at=DAY_ONE.replace(hour=23, minute=59))
    # 01:30 on the 30th in UTC+2 is 23:30 on the 29th in UTC.
    add_call(tenant_id, at=datetime(2030, 3, 30, 1, 30, tzinfo=timezone(timedelta(hours=2))))
    buckets = usage(tenant_id)["buckets"]
    assert [(b["start"], b["calls"]) for b in buckets] == [
        ("2030-03-29", 1),
        ("2030-03-30", 2),
        ("2030-04-01", 1),
    ]


def test_months_bucket_on_the_first_of_the_month() -> None:
    tenant_id = new_tenant()
    for at in (DAY_ONE, DAY_ONE + timedelta(days=1), DAY_ONE + timedelta(days=3)):
        add_call(tenant_id, at=at, cost="0.5")
    buckets = usage(tenant_id, "month")["buckets"]
    assert [(b["start"], b["calls"], b["cost"]) for b in buckets] == [
        ("2030-03-01", 2, Decimal("1.0")),
        ("2030-04-01", 1, Decimal("0.5")),
    ]


def test_a_bucket_groups_calls_by_tier_model_and_task() -> None:
    tenant_id = new_tenant()
    add_call(tenant_id, at=DAY_ONE, task="triage", cost="0.01", tokens=(10, 2))
    add_call(tenant_id, at=DAY_ONE, task="triage", cost="0.02", tokens=(5, 1))
    add_call(tenant_id, at=DAY_ONE, tier=Tier.LARGE, model="large", cost="1.5", tokens=(7, 3))
    [bucket] = usage(tenant_id)["buckets"]
    assert (bucket["calls"], bucket["cost"]) == (3, Decimal("1.53"))
    line = {"calls": 2, "cost": Decimal("0.03"), "input_tokens": 15, "output_tokens": 3}
    large = {"calls": 1, "cost": Decimal("1.5"), "input_tokens": 7, "output_tokens": 3}
    assert dict(bucket["by_tier"]) == {"small": line, "large": large}
    assert dict(bucket["by_model"]) == {"small-4bit": line, "large": large}
    assert dict(bucket["by_task"]) == {"triage": line, "": large}  # no label: ""


def test_since_is_inclusive_and_until_exclusive() -> None:
    tenant_id = new_tenant()
    for day in range(4):
        add_call(tenant_id, at=DAY_ONE + timedelta(days=day))
    buckets = usage(
        tenant_id, since=DAY_ONE + timedelta(days=1), until=DAY_ONE + timedelta(days=3)
    )["buckets"]
    assert [b["start"] for b in buckets] == ["2030-03-31", "2030-04-01"]


def test_another_tenants_calls_and_queries_are_not_counted() -> None:
    mine, other = new_tenant(), new_tenant()
    add_call(other, at=DAY_ONE)
    report = usage(mine)
    assert report["buckets"] == []
    assert report["queries"]["total"] == 0
    assert report["queries"]["by_status"] == {}


def test_the_escalation_rate_counts_decisions_after_warmup_only() -> None:
    tenant_id = new_tenant(target_escalation_rate=0.25)
    now = utcnow()
    with session_scope() as session:
        for decision, escalated in [
            ("warmup", True),  # a warm-up escalation: counted as escalated, not as decided
            ("warmup", False),
            ("escalate", True),
            ("accept", False),
            ("accept", False),
            ("accept", False),
        ]:
            add_query(
                session, tenant_id, status=QueryStatus.SUCCEEDED, decision=decision,
                escalated_at=now if escalated else None,
            )  # fmt: skip
        add_query(session, tenant_id, status=QueryStatus.QUEUED)
        add_query(session, tenant_id, status=QueryStatus.FAILED)
    queries = usage(tenant_id)["queries"]
    assert queries["total"] == 8
    assert queries["by_status"] == {"succeeded": 6, "queued": 1, "failed": 1}
    assert queries["escalated"] == 2
    assert queries["decided_after_warmup"] == 4
    assert queries["escalation_rate"] == 0.5
    assert queries["target_escalation_rate"] == 0.25


def test_no_decision_yet_has_no_escalation_rate() -> None:
    tenant_id = new_tenant()
    with session_scope() as session:
        add_query(session, tenant_id, decision="warmup")
    assert usage(tenant_id)["queries"]["escalation_rate"] is None


def test_the_query_counts_follow_the_period_too() -> None:
    tenant_id = new_tenant()
    with session_scope() as session:
        add_query(session, tenant_id, created_at=DAY_ONE - timedelta(days=1))
        add_query(session, tenant_id, created_at=DAY_ONE)
    assert usage(tenant_id, since=DAY_ONE)["queries"]["total"] == 1
    assert usage(tenant_id, until=DAY_ONE)["queries"]["total"] == 1


def test_a_tenant_without_a_budget_reports_none() -> None:
    assert usage(new_tenant())["budget"] is None


def test_the_budget_is_the_current_periods_and_available_never_goes_below_zero() -> None:
    tenant_id = new_tenant(
        budget_period="daily", budget_hard_limit=Decimal(10), budget_soft_limit=Decimal(8)
    )
    start = period_start("daily", utcnow())
    with session_scope() as session:
        session.add(BudgetPeriod(tenant_id=tenant_id, period_start=start - timedelta(days=1),
                                 spent=Decimal(99), reserved=Decimal(0)))  # fmt: skip
        period = BudgetPeriod(
            tenant_id=tenant_id, period_start=start, spent=Decimal(6), reserved=Decimal("1.5")
        )
        session.add(period)
    budget = usage(tenant_id)["budget"]
    assert budget == {
        "period": "daily",
        "period_start": start.isoformat(),
        "hard_limit": Decimal(10),
        "soft_limit": Decimal(8),
        "spent": Decimal(6),
        "reserved": Decimal("1.5"),
        "available": Decimal("2.5"),
    }
    with session_scope() as session:
        session.get_one(BudgetPeriod, period.id).spent = Decimal(12)
    assert usage(tenant_id)["budget"]["available"] == 0


def test_a_soft_limit_alone_reports_spend_with_nothing_available_to_compute() -> None:
    tenant_id = new_tenant(budget_period="monthly", budget_soft_limit=Decimal(5))
    budget = usage(tenant_id)["budget"]
    assert budget["spent"] == budget["reserved"] == 0
    assert budget["hard_limit"] is None
    assert budget["available"] is None


calls = st.lists(
    st.tuples(
        st.integers(0, 40),  # days after DAY_ONE
        st.sampled_from([Tier.SMALL, Tier.LARGE]),
        st.sampled_from(["m1", "m2"]),
        st.sampled_from([None, "a", "b"]),
        st.integers(1, 10_000),  # cost in 1/10000
    ),
    max_size=8,
)


@given(calls=calls, granularity=st.sampled_from(["day", "month"]))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_grouping_adds_up_to_the_bucket_and_the_buckets_to_the_ledger(
    calls: list[tuple[int, str, str, str | None, int]], granularity: Granularity
) -> None:
    tenant_id = new_tenant()
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for days, tier, model, task, cost in calls:
        at = DAY_ONE + timedelta(days=days)
        add_call(tenant_id, at=at, tier=tier, model=model, task=task, cost=f"{cost / 10_000}")
        start = at.strftime("%Y-%m-%d" if granularity == "day" else "%Y-%m-01")
        expected[start]["calls"] += 1
        expected[start]["cost"] += cost
    buckets = usage(tenant_id, granularity)["buckets"]
    assert [b["start"] for b in buckets] == sorted(expected)
    for bucket in buckets:
        assert bucket["calls"] == expected[bucket["start"]]["calls"]
        assert bucket["cost"] == Decimal(expected[bucket["start"]]["cost"]) / 10_000
        for group in ("by_tier", "by_model", "by_task"):
            lines = bucket[group].values()
            assert sum(line["calls"] for line in lines) == bucket["calls"]
            assert sum(line["cost"] for line in lines) == bucket["cost"]
