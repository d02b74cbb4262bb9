"""The escalation policy: its one entry point on PostgreSQL, and properties of the rule it runs
(the quantile threshold, the warm-up, p(B), the tenants that never escalate, the fallbacks)."""

from __future__ import annotations

import dataclasses
import math
import uuid
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from services import policy, threshold
from services.db import session_scope
from services.llm.base import Generation, TokenCandidate
from services.llm.margin import MarginUnavailable
from services.models import Query, QueryStatus, Tenant
from services.policy.offline import OFFLINE_POLICIES, policies_scored_by, streaming_escalations
from services.settings import get_settings
from services.tenants import create_tenant
from tests.conftest import WARMUP

margins_st = st.lists(
    st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=1, max_size=60
)
rates_st = st.floats(min_value=0.0, max_value=1.0)
money_st = st.decimals(min_value=0, max_value=10, places=6)


def generation(*candidates: tuple[str, float], text: str = "an answer") -> Generation:
    """A small model's output whose first token had these (text, probability) candidates."""
    return Generation(
        text=text,
        first_token_candidates=tuple(
            TokenCandidate(token_id=i, text=word, logprob=math.log(p))
            for i, (word, p) in enumerate(candidates)
        ),
        input_tokens=5,
        output_tokens=3,
        finish_reason="length",
    )


def new_tenant(session: Session, *, target_escalation_rate: float) -> Tenant:
    name = f"policy-{uuid.uuid4().hex[:10]}"
    return create_tenant(session, name=name, target_escalation_rate=target_escalation_rate).tenant


def new_query(
    session: Session, tenant: Tenant, *, task: str, choices: list[str] | None = None
) -> Query:
    query = Query(
        tenant_id=tenant.id,
        status=QueryStatus.RUNNING,
        prompt="Is this fine?",
        max_new_tokens=16,
        task_label=task,
        choices=choices,
        delivery_attempts=1,
    )
    session.add(query)
    session.flush()
    return query


def test_decide_warms_up_then_escalates_below_the_running_quantile() -> None:
    settings = get_settings()
    task = f"task-{uuid.uuid4().hex[:8]}"  # a fresh scope
    margins = [0.9, 0.2, 0.7, 0.4, 0.8, 0.1, 0.6, 0.95, 0.5]
    with session_scope() as session:
        tenant = new_tenant(session, target_escalation_rate=0.5)
        decisions = []
        for margin in margins:
            query = new_query(session, tenant, task=task)
            top = (1 + margin) / 2  # p1 - p2 = margin with p2 = 1 - p1
            small = generation(("yes", top), ("no", 1 - top), text="yes")
            decisions.append(
                policy.decide(
                    session, query=query, tenant=tenant, generation=small, settings=settings
                )
            )
    assert [d.threshold_version for d in decisions] == list(range(1, len(margins) + 1))
    assert len({d.scope_id for d in decisions}) == 1
    for seen, (margin, decision) in enumerate(zip(margins, decisions, strict=True), 1):
        assert decision.margin == pytest.approx(margin)
        assert decision.answer == "yes"
        assert decision.target_escalation_rate == 0.5
        if seen <= WARMUP:
            assert (decision.reason, decision.escalate, decision.threshold) == (
                "warmup", False, None,
            )  # fmt: skip
            continue
        history = [d.margin for d in decisions[:seen]]
        expected = threshold.exact_threshold(history, 0.5)
        assert decision.threshold == expected
        assert decision.rank_error == 0.0
        assert decision.escalate is (decision.margin < expected)
        assert decision.reason == (
            "below_threshold" if decision.escalate else "at_or_above_threshold"
        )
    assert any(d.escalate for d in decisions)


def test_decide_over_choices_answers_the_winning_class() -> None:
    with session_scope() as session:
        tenant = new_tenant(session, target_escalation_rate=0.3)
        query = new_query(session, tenant, task="sentiment", choices=["positive", "negative"])
        small = generation((" Positive", 0.7), ("negative", 0.2), text=" Positive!")
        decision = policy.decide(
            session, query=query, tenant=tenant, generation=small, settings=get_settings()
        )
    assert decision.answer == "positive"
    assert decision.margin == pytest.approx(0.5)
    assert decision.reason == "warmup"


def test_decide_over_choices_answers_a_label_when_the_first_token_starts_none() -> None:
    labels = ["Positive", "Negative"]
    prose = generation((" The", 0.7), (" It", 0.2), text="The film is negative overall")
    scored = dataclasses.replace(prose, label_logprobs=(math.log(0.2), math.log(0.05)))
    with session_scope() as session:
        tenant = new_tenant(session, target_escalation_rate=0.3)
        decisions = [
            policy.decide(
                session,
                query=new_query(session, tenant, task="sentiment", choices=labels),
                tenant=tenant,
                generation=small,
                settings=get_settings(),
            )
            for small in (scored, prose)
        ]
    assert [(d.answer, d.margin) for d in decisions] == [
        ("Positive", pytest.approx(0.8 - 0.2)),  # over the labels' normalised probabilities
        ("Negative", 0.0),  # unscored: the label the text names, with no margin
    ]


def test_decide_without_candidates_raises_margin_unavailable() -> None:
    with session_scope() as session:
        tenant = new_tenant(session, target_escalation_rate=0.3)
        query = new_query(session, tenant, task="any")
        with pytest.raises(MarginUnavailable):
            policy.decide(
                session, query=query, tenant=tenant, generation=generation(),
                settings=get_settings(),
            )  # fmt: skip
        session.rollback()


def test_a_budget_per_query_sets_p_of_b_from_the_worst_case_before_any_call() -> None:
    with session_scope() as session:
        tenant = new_tenant(session, target_escalation_rate=0.3)
        tenant.budget_per_query = Decimal("0.5")
        query = new_query(session, tenant, task="priced")
        decision = policy.decide(
            session,
            query=query,
            tenant=tenant,
            generation=generation(("a", 0.6), ("b", 0.3)),
            settings=get_settings(),
            worst_case=lambda: (Decimal("0.1"), Decimal("2")),
        )
    assert decision.target_escalation_rate == pytest.approx((0.5 - 0.1) / 2)


def test_fallbacks_follow_the_settings_and_need_a_small_answer() -> None:
    settings = get_settings()
    fail = settings.model_copy(
        update={"small_unavailable_fallback": "fail", "large_unavailable_fallback": "fail"}
    )
    escalate = settings.model_copy(
        update={
            "small_unavailable_fallback": "escalate",
            "large_unavailable_fallback": "small_answer",
        }
    )
    answered, unanswered = Query(small_answer="yes"), Query(small_answer=None)
    assert policy.on_small_unavailable(escalate) == "escalate"
    assert policy.on_small_unavailable(fail) == "fail"
    assert policy.on_large_unavailable(escalate, answered) == "small_answer"
    assert policy.on_large_unavailable(escalate, unanswered) == "fail"
    assert policy.on_large_unavailable(fail, answered) == "fail"


def test_the_evaluation_finds_its_policies_by_name() -> None:
    assert policies_scored_by("trained") == ["frugalgpt", "routing", "hybridllm"]
    assert policies_scored_by(None) == ["random", "oracle"]
    assert {name: p.mode for name, p in OFFLINE_POLICIES.items()} == {
        "threshold": "cascade", "threshold+large_alone": "cascade", "random": "route",
        "oracle": "cascade", "frugalgpt": "cascade", "routing": "route", "hybridllm": "route",
    }  # fmt: skip
    assert [name for name, p in OFFLINE_POLICIES.items() if p.large_alone] == [
        "threshold+large_alone"
    ]


# -- properties of the rule --------------------------------------------------------------------


@given(margins_st, rates_st)
def test_at_most_a_p_share_of_a_history_is_below_its_own_p_quantile(
    margins: list[float], rate: float
) -> None:
    tau = threshold.exact_threshold(margins, rate)
    below = sum(margin < tau for margin in margins)
    assert below <= math.floor(len(margins) * rate)
    assert below <= len(margins) * rate
    # and the quantile is a margin of the history with more than floor(n * p) at or below it
    assert tau in margins
    at_or_below = sum(margin <= tau for margin in margins)
    assert at_or_below >= min(math.floor(len(margins) * rate) + 1, len(margins))


@given(
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=0, max_value=1000),
)
def test_nothing_escalates_during_the_warm_up(
    margin: float, tau: float, history_size: int, warmup: int
) -> None:
    decision = bool(threshold.escalates(margin, tau, history_size=history_size, warmup=warmup))
    if history_size <= warmup:
        assert not decision
    else:
        assert decision is (margin < tau)


@given(margins_st, rates_st, st.integers(min_value=0, max_value=10))
def test_the_offline_rule_is_the_exact_rule_at_every_step(
    margins: list[float], rate: float, warmup: int
) -> None:
    wants = streaming_escalations(np.array(margins), np.array([rate]), warmup)[0]
    for t, margin in enumerate(margins):
        history = margins[: t + 1]
        expected = len(history) > warmup and margin < threshold.exact_threshold(history, rate)
        assert bool(wants[t]) is expected


@given(money_st, money_st, money_st, money_st)
def test_p_of_b_is_a_rate_and_grows_with_the_budget(
    budget: Decimal, more: Decimal, small_cost: Decimal, large_cost: Decimal
) -> None:
    lower = policy.budget_rate(budget, small_cost=small_cost, large_cost=large_cost)
    higher = policy.budget_rate(budget + more, small_cost=small_cost, large_cost=large_cost)
    assert 0.0 <= lower <= higher <= 1.0
    if large_cost > 0 and small_cost <= budget <= small_cost + large_cost:
        assert lower == pytest.approx(float((budget - small_cost) / large_cost))


@given(
    rates_st,
    st.one_of(st.none(), money_st),
    st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=30),
)
def test_a_tenant_that_never_escalates_has_a_zero_rate_and_escalates_nothing(
    rate: float, budget_per_query: Decimal | None, margins: list[float]
) -> None:
    tenant = Tenant(target_escalation_rate=rate, budget_per_query=budget_per_query)
    never = policy.never_escalates(tenant)
    assert never is (budget_per_query is None and rate == 0)
    if never:
        with session_scope() as session:  # a fixed rate reads nothing from the database
            target = policy.target_escalation_rate(
                session,
                tenant=tenant,
                settings=get_settings(),
                worst_case=lambda: (Decimal(1), Decimal(1)),
            )
        assert target == 0
        assert not streaming_escalations(np.array(margins), np.array([target]), 0).any()
