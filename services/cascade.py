"""One tier's work on one query: claim it, call the model, record the answer and the cost.

Each step is its own short transaction around the query's row lock, and the model call runs
outside any transaction. A redelivered task therefore finds the query already answered (and
does nothing), or finds it mid-call under another worker's lease (and waits), or takes it over
once that lease has expired. The ledger keeps one row per query and tier, so a call is charged
at most once however often the task runs.
"""

from __future__ import annotations

import functools
import random
import time
import uuid

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from services import budgets, cancellation, lifecycle, metrics, policy
from services.accounting import Price, price_of
from services.db import session_scope
from services.dispatch import Dispatcher
from services.llm import labels
from services.llm.base import (
    CallContext,
    Generation,
    ModelError,
    ModelOverloaded,
    TransientModelError,
)
from services.llm.margin import MarginUnavailable, candidates_for, margin_and_answer
from services.models import (
    TERMINAL_STATUSES,
    ModelPrice,
    Query,
    Tenant,
    Tier,
    utcnow,
)
from services.runtime import Runtime
from services.settings import Settings, TierSettings
from services.tier_claims import (
    CLAIMABLE,
    Claim,
    Outcome,
    TierResult,
    claim_for_tier,
    hold_lease_until,
    locked_query,
    mark_failed,
    release_lease,
)

# Outcome and TierResult are what callers read of a delivery (they live with the claim).
__all__ = [
    "OVERLOAD_REQUEUE_S",
    "Outcome",
    "TierResult",
    "answer_on_tier",
    "deliver",
    "fail_query",
    "fall_back",
]

log = structlog.get_logger(__name__)


# How long a query waits in the queue after the model server stayed full for a whole call,
# when it did not say (Retry-After).
OVERLOAD_REQUEUE_S = 5.0


def deliver(
    query_id: uuid.UUID,
    tier: Tier,
    *,
    runtime: Runtime,
    dispatcher: Dispatcher,
    retries_so_far: int,
) -> float | None:
    """Handle one delivery of a tier's task and hand on what follows.

    Returns the delay after which the caller should deliver again (a transient model error
    with retries left), or None when this delivery is done.
    """
    structlog.contextvars.bind_contextvars(query_id=str(query_id), tier=tier.value)
    try:
        result = answer_on_tier(query_id, tier, runtime)
    except ModelOverloaded as exc:
        # Back-pressure, not failure: the query waits in the queue with its retries untouched,
        # and is never failed or handed to a fallback for it.
        wait_s = exc.retry_after_s if exc.retry_after_s is not None else OVERLOAD_REQUEUE_S
        result = TierResult(Outcome.OVERLOADED, wait_s * random.uniform(1.0, 1.2))
    except TransientModelError as exc:
        if retries_so_far < runtime.settings.task_retries:
            retry_in_s = float(min(2**retries_so_far, 300))
            hold_lease_until(query_id, retry_in_s)
            return retry_in_s
        result = fall_back(query_id, tier, reason=str(exc), settings=runtime.settings)
    finally:
        structlog.contextvars.unbind_contextvars("query_id", "tier")
    if result.outcome is Outcome.ESCALATE:
        dispatcher.enqueue(Tier.LARGE, query_id)
    elif result.outcome is Outcome.BUSY:
        # Another delivery of this query is mid-call; look again when its lease runs out.
        dispatcher.enqueue(tier, query_id, delay_s=result.retry_in_s + 0.5)
    elif result.outcome is Outcome.OVERLOADED:
        dispatcher.enqueue(tier, query_id, delay_s=result.retry_in_s)
    return None


def answer_on_tier(query_id: uuid.UUID, tier: Tier, runtime: Runtime) -> TierResult:
    """Run ``tier`` for the query. Raises TransientModelError when the caller should retry.

    The call takes turns with other tenants' by the query's tenant, and a cancel of the query
    that commits after the watch begins (so, any after the claim) stops a call that can stop.
    """
    with cancellation.signals.watching(query_id) as cancelled:
        claim = claim_for_tier(query_id, tier, runtime.settings)
        if isinstance(claim, TierResult):
            return claim
        context = CallContext(fairness_key=str(claim.tenant_id), cancelled=cancelled)
        return _call_and_record(query_id, tier, runtime, claim, context)


def _call_and_record(
    query_id: uuid.UUID, tier: Tier, runtime: Runtime, claim: Claim, context: CallContext
) -> TierResult:
    settings = runtime.settings
    started = time.perf_counter()
    tier_settings = runtime.tier_settings(tier)
    model = tier_settings.model
    try:
        with runtime.leases.held(query_id):
            generation = runtime.breaker(tier).call(
                functools.partial(
                    labels.generate,
                    runtime.backend(tier),
                    claim.prompt,
                    choices=claim.choices,
                    max_new_tokens=claim.max_new_tokens,
                    top_n_tokens=candidates_for(
                        claim.choices, default=settings.top_n_tokens, most=settings.max_top_n_tokens
                    ),
                    context=context,
                )
            )
    except ModelOverloaded:
        _observe_call(tier, model, "overloaded", started)
        release_lease(query_id, delivered=False)  # a refused call is no delivery attempt
        raise
    except TransientModelError:
        _observe_call(tier, model, "transient_error", started)
        release_lease(query_id)  # so that the task's retry is not kept waiting
        raise
    except ModelError as exc:
        _observe_call(tier, model, "error", started)
        fail_query(query_id, code="model_error", message=str(exc))
        return TierResult(Outcome.FAILED)
    latency_ms = round(_observe_call(tier, model, "ok", started) * 1000)
    with session_scope() as session:
        query, tenant, price = _locked_for_answer(session, query_id, tier_settings)
        cost = lifecycle.charge(
            session,
            query,
            tenant=tenant,
            tier=tier,
            tier_settings=tier_settings,
            generation=generation,
            latency_ms=latency_ms,
            price=price,
        )
        log.info("model_call", tier=tier, charged=cost is not None, latency_ms=latency_ms)
        if query.status not in CLAIMABLE[tier]:
            return TierResult(Outcome.SKIPPED)
        if tier is Tier.SMALL:
            return _decide(session, query, generation, settings)
        _, answer = margin_and_answer(
            generation.first_token_candidates,
            generation.text,
            query.choices,
            label_logprobs=generation.label_logprobs,
        )
        lifecycle.succeed(session, query, answer=answer, tier=Tier.LARGE)
        return TierResult(Outcome.ANSWERED)


def _observe_call(tier: Tier, model: str, outcome: str, started: float) -> float:
    """Record a model call's duration in seconds, and return it."""
    seconds = time.perf_counter() - started
    metrics.observe_model_call(tier=tier, model=model, outcome=outcome, seconds=seconds)
    return seconds


def fall_back(query_id: uuid.UUID, tier: Tier, *, reason: str, settings: Settings) -> TierResult:
    """The tier's model server kept failing: do what the settings say instead."""
    with session_scope() as session:
        query = locked_query(session, query_id)
        if query.status not in CLAIMABLE[tier]:
            return TierResult(Outcome.SKIPPED)
        log.warning("tier_unavailable", error=reason)
        if tier is Tier.SMALL and policy.on_small_unavailable(settings) == "escalate":
            tenant = session.get_one(Tenant, query.tenant_id)
            if lifecycle.escalate(
                session, query, tenant=tenant, settings=settings, small_called=False
            ):
                query.decision = "small_unavailable"
                return TierResult(Outcome.ESCALATE)
            reason += "; the budget cannot pay for the large tier instead"
        if tier is Tier.LARGE and policy.on_large_unavailable(settings, query) == "small_answer":
            assert query.small_answer is not None  # the policy answers so only when there is one
            query.decision = "large_unavailable"
            lifecycle.succeed(session, query, answer=query.small_answer, tier=Tier.SMALL)
            return TierResult(Outcome.ANSWERED)
        message = f"the {tier.value} model server kept failing: {reason}"
        return mark_failed(session, query, "model_unavailable", message)


def fail_query(query_id: uuid.UUID, *, code: str, message: str) -> None:
    with session_scope() as session:
        query = locked_query(session, query_id)
        if query.status not in TERMINAL_STATUSES:
            mark_failed(session, query, code, message)


def _decide(
    session: Session, query: Query, generation: Generation, settings: Settings
) -> TierResult:
    query.small_finished_at = utcnow()
    tenant = session.get_one(Tenant, query.tenant_id)
    worst_case = budgets.lazy_worst_case(session, settings, query=query)
    try:
        decision = policy.decide(
            session,
            query=query,
            tenant=tenant,
            generation=generation,
            settings=settings,
            worst_case=worst_case,
        )
    except MarginUnavailable as exc:
        message = f"{exc}; is the server's --max-top-n-tokens at least 2?"
        return mark_failed(session, query, "margin_unavailable", message)
    margin, answer, pair = decision.margin, decision.answer, decision.model_pair
    query.small_answer = answer  # the answer should the large tier be unavailable
    metrics.observe_margin(margin, model_pair=pair, kind=settings.margin_kind)
    query.margin = margin
    query.scope_id = decision.scope_id
    query.threshold = decision.threshold
    query.threshold_version = decision.threshold_version
    query.threshold_rank_error = decision.rank_error
    query.threshold_window = decision.window
    query.target_escalation_rate = decision.target_escalation_rate
    query.decision = decision.reason
    escalate = decision.escalate and lifecycle.escalate(
        session, query, tenant=tenant, settings=settings, worst_case=worst_case
    )
    if decision.escalate and not escalate:
        query.decision = "budget_guard"  # below the threshold, but the budget cannot pay L
    log.info("decision", margin=margin, threshold=decision.threshold, reason=query.decision)
    metrics.observe_decision(
        tenant_id=str(query.tenant_id),
        model_pair=pair,
        task=query.task_label,
        decision=query.decision,
        escalated=escalate,
        threshold=decision.threshold,
        threshold_version=decision.threshold_version,
        target_escalation_rate=decision.target_escalation_rate,
    )
    metrics.observe_drift(
        tenant_id=str(query.tenant_id),
        model_pair=pair,
        task=query.task_label,
        reading=decision.drift,
        drifting=decision.drift_state == "drift",
        detected=decision.drift_detected,
    )
    if escalate:
        return TierResult(Outcome.ESCALATE)  # the caller enqueues the large tier
    lifecycle.succeed(session, query, answer=answer, tier=Tier.SMALL)
    return TierResult(Outcome.ANSWERED)


def _locked_for_answer(
    session: Session, query_id: uuid.UUID, tier_settings: TierSettings
) -> tuple[Query, Tenant, Price]:
    """The query (locked), its tenant and the tier's price in force, in one statement."""
    query, tenant, override = session.execute(
        select(Query, Tenant, ModelPrice)
        .join(Tenant, Tenant.id == Query.tenant_id)
        .outerjoin(ModelPrice, ModelPrice.model == tier_settings.model)
        .where(Query.id == query_id)
        .with_for_update(of=Query)
        .execution_options(populate_existing=True)
    ).one()
    return query, tenant, price_of(override, tier_settings)
