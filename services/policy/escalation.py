"""Whether a query the small model answered goes on to the large one, and what to do when a
tier's model server is unavailable.

``decide`` is the one place the rule runs: the signal (the first-token margin of the small
answer), the target rate (fixed or p(B)), and the dynamic threshold with its warm-up. Before
the small call, ``goes_large_alone`` says whether the query skips it: under a budget per query
whose unspent surplus pays the large call, or a target rate of 1. The budget guard is the
caller's: it tries to reserve the large call and keeps the small answer (or, before the small
call, the cascade) if it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from services import budgets, threshold
from services.budgets import WorstCase
from services.llm.base import Generation
from services.llm.margin import margin_and_answer
from services.models import Query, Tenant
from services.policy.pacing import answered_and_spent, covers_large, large_alone_when_paced
from services.policy.rates import expected_costs, target_escalation_rate
from services.settings import Settings
from services.threshold import Reason
from services.threshold_window import DriftLimits, DriftReading, DriftState
from services.webhooks import events


@dataclass(frozen=True)
class PolicyDecision:
    """A decision and everything it was made from (stored with the query to replay it)."""

    margin: float
    answer: str  # the small model's answer, kept should the large tier be unavailable
    target_escalation_rate: float
    threshold: float | None  # None during the warm-up
    threshold_version: int
    rank_error: float | None
    window: int | None  # the last N margins the threshold was read from; None: all of H
    drift: DriftReading | None  # the scope's recent traffic against its long run
    drift_state: DriftState
    drift_detected: bool  # this decision moved the scope into "drift"
    scope_id: int
    model_pair: str
    reason: Reason
    escalate: bool  # before the budget guard


def decide(
    session: Session,
    *,
    query: Query,
    tenant: Tenant,
    generation: Generation,
    settings: Settings,
    worst_case: WorstCase | None = None,
    stage: int = 0,
) -> PolicyDecision:
    """Record the query's margin in its scope's history and decide whether it escalates from
    the tier at ``stage`` (0: small; a middle tier's place in the cascade) to the next.

    Each such tier decides in its own scope, the model pair "<its model>-><next model>", with
    its own history and warm-up, and its own target rate (``target_escalation_rate``).
    ``worst_case`` is the query's lazily computed worst-case costs, shared with the caller's
    budget guard so that they are read at most once. Raises MarginUnavailable when the model
    returned no first-token candidates.
    """
    margin, answer = margin_and_answer(
        generation.first_token_candidates,
        generation.text,
        query.choices,
        kind=settings.margin_kind,
        skip_surface_variants=settings.margin_skip_surface_variants,
        label_logprobs=generation.label_logprobs,
    )
    if worst_case is None:
        worst_case = budgets.lazy_worst_case(session, settings, query=query)
    rate = target_escalation_rate(
        session,
        tenant=tenant,
        settings=settings,
        worst_case=worst_case,
        stage=stage,
        middle_worst_case=lambda: budgets.worst_case_middle(session, settings, query=query),
        query_id=query.id,
    )
    pair = settings.model_pair_at(stage)
    decision = threshold.decide(
        session,
        tenant_id=query.tenant_id,
        model_pair=pair,
        task_label=query.task_label,
        query_id=query.id,
        margin=margin,
        target_escalation_rate=rate,
        warmup=settings.warmup_queries,
        sketch_k=settings.threshold_sketch_k,
        rule=history_rule(settings),
    )
    if decision.drift_detected and decision.drift is not None:
        _alert_drift(session, query, settings, decision, decision.drift, pair)
    return PolicyDecision(
        margin=margin,
        answer=answer,
        target_escalation_rate=decision.target_escalation_rate,
        threshold=decision.threshold,
        threshold_version=decision.threshold_version,
        rank_error=decision.rank_error,
        window=decision.window,
        drift=decision.drift,
        drift_state=decision.drift_state,
        drift_detected=decision.drift_detected,
        scope_id=decision.scope_id,
        model_pair=pair,
        reason=decision.reason,
        escalate=decision.escalate,
    )


def _alert_drift(
    session: Session,
    query: Query,
    settings: Settings,
    decision: threshold.Decision,
    reading: DriftReading,
    model_pair: str,
) -> None:
    """Tell the tenant's webhooks that the scope's recent traffic left its long run."""
    events.record_event(
        session,
        tenant_id=query.tenant_id,
        event_type=events.EventType.THRESHOLD_DRIFT_DETECTED,
        data=lambda: {
            "scope_id": decision.scope_id,
            "model_pair": model_pair,
            "task": query.task_label,
            "history": settings.threshold_history,
            "window": settings.threshold_window,
            "threshold": decision.threshold,
            "threshold_version": decision.threshold_version,
            "target_escalation_rate": reading.target_escalation_rate,
            "realised_escalation_rate": reading.realised_escalation_rate,
            "margin_psi": reading.psi,
            "query_id": str(query.id),
        },
    )


def history_rule(settings: Settings) -> threshold.HistoryRule:
    """The margins a threshold is read from and the drift limits, from the settings."""
    return threshold.HistoryRule(
        history=settings.threshold_history,
        window=settings.threshold_window,
        drift=DriftLimits(
            rate_tolerance=settings.threshold_drift_rate_tolerance,
            psi=settings.threshold_drift_psi,
        ),
    )


def may_go_large_alone(tenant: Tenant) -> bool:
    """Whether a query of the tenant may skip the small model: only under a budget per query
    or a target rate of 1 (every other tenant's queries all start on the small tier)."""
    return tenant.budget_per_query is not None or tenant.target_escalation_rate >= 1


def goes_large_alone(
    session: Session,
    *,
    query: Query,
    tenant: Tenant,
    settings: Settings,
    worst_case: WorstCase | None = None,
) -> bool:
    """Before the small call: whether the query goes to the large model alone.

    A target rate of 1 escalates everything, so the small call would be paid for nothing. Under
    a budget per query B, the query goes to L alone when the surplus of B over the tenant's
    recent spend pays the large call (``services.policy.pacing``); with B >= c_l that is every
    query. Under budget pacing (``budget_pacing_queries``) the surplus goes to the threshold
    instead, and only B >= c_l sends a query to L alone. The budget guard is the caller's, as
    for an escalation.
    """
    if tenant.budget_per_query is None:
        return tenant.target_escalation_rate >= 1
    if worst_case is None:
        worst_case = budgets.lazy_worst_case(session, settings, query=query)
    _, large_cost = expected_costs(session, tenant=tenant, settings=settings, worst_case=worst_case)
    if settings.budget_pacing_queries is not None:
        return bool(
            large_alone_when_paced(budget_per_query=tenant.budget_per_query, large_cost=large_cost)
        )
    answered, spent = answered_and_spent(
        session, tenant_id=tenant.id, large_cost=large_cost, exclude=query.id
    )
    return bool(
        covers_large(
            budget_per_query=tenant.budget_per_query,
            answered=answered,
            spent=spent,
            large_cost=large_cost,
        )
    )


def never_escalates(tenant: Tenant) -> bool:
    """Whether no query of the tenant can escalate (so none reserves the large call)."""
    return tenant.budget_per_query is None and tenant.target_escalation_rate == 0


def on_small_unavailable(settings: Settings) -> Literal["escalate", "fail"]:
    """The small model server, or a middle tier's, kept failing: send the query to the next
    tier, or fail it."""
    return settings.small_unavailable_fallback


def on_large_unavailable(settings: Settings, query: Query) -> Literal["small_answer", "fail"]:
    """The large model server kept failing: answer with the small model's answer where the
    settings allow it and there is one, else fail the query."""
    if settings.large_unavailable_fallback == "small_answer" and query.small_answer is not None:
        return "small_answer"
    return "fail"
