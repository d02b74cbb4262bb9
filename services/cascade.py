"""One tier's work on one query: claim it, call the model, record the answer and the cost.

Each step is its own short transaction around the query's row lock, and the model call runs
outside any transaction. A redelivered task therefore finds the query already answered (and
does nothing), or finds it mid-call under another worker's lease (and waits), or takes it over
once that lease has expired. The ledger keeps one row per query and tier, so a call is charged
at most once however often the task runs.

A cascade is the settings' tiers in order (``Settings.tier_names``): small, any middle tiers,
large. Every tier but the last decides on its own answer, as the policy says, whether the query
climbs to the next; the last tier's answer is final. Each tier that answers adds an entry to the
query's ``path``: its model and its decision with what it was made from.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Sequence

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
from services.policy import PolicyDecision
from services.runtime import Runtime
from services.settings import Settings, TierSettings
from services.tier_claims import (
    Claim,
    Outcome,
    TierResult,
    claim_for_tier,
    claimable,
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
    tier: str,
    *,
    runtime: Runtime,
    dispatcher: Dispatcher,
    retries_so_far: int,
) -> float | None:
    """Handle one delivery of a tier's task and hand on what follows.

    Returns the delay after which the caller should deliver again (a transient model error
    with retries left), or None when this delivery is done.
    """
    structlog.contextvars.bind_contextvars(query_id=str(query_id), tier=str(tier))
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
        dispatcher.enqueue(result.to_tier, query_id)
    elif result.outcome is Outcome.BUSY:
        # Another delivery of this query is mid-call; look again when its lease runs out.
        dispatcher.enqueue(tier, query_id, delay_s=result.retry_in_s + 0.5)
    elif result.outcome is Outcome.OVERLOADED:
        dispatcher.enqueue(tier, query_id, delay_s=result.retry_in_s)
    return None


def answer_on_tier(query_id: uuid.UUID, tier: str, runtime: Runtime) -> TierResult:
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
    query_id: uuid.UUID, tier: str, runtime: Runtime, claim: Claim, context: CallContext
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
        fail_query(query_id, code="model_error", message=str(exc), tier_names=settings.tier_names)
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
        if not claimable(query, tier, settings):
            return TierResult(Outcome.SKIPPED)
        if tier != settings.tier_names[-1]:
            return _decide(session, query, generation, settings, tier)
        _, answer = margin_and_answer(
            generation.first_token_candidates,
            generation.text,
            query.choices,
            label_logprobs=generation.label_logprobs,
        )
        _add_to_path(query, tier=tier, model=model, decision="last_tier")
        lifecycle.succeed(session, query, answer=answer, tier=tier)
        return TierResult(Outcome.ANSWERED)


def _observe_call(tier: str, model: str, outcome: str, started: float) -> float:
    """Record a model call's duration in seconds, and return it."""
    seconds = time.perf_counter() - started
    metrics.observe_model_call(tier=tier, model=model, outcome=outcome, seconds=seconds)
    return seconds


def fall_back(query_id: uuid.UUID, tier: str, *, reason: str, settings: Settings) -> TierResult:
    """The tier's model server kept failing: do what the settings say instead. The small tier
    and the middle ones hand the query to the next tier (or fail it); the last tier answers
    with the answer of the tier before it (or fails it)."""
    with session_scope() as session:
        query = locked_query(session, query_id)
        if not claimable(query, tier, settings):
            return TierResult(Outcome.SKIPPED)
        log.warning("tier_unavailable", error=reason)
        names = settings.tier_names
        last = tier == names[-1]
        if not last and policy.on_small_unavailable(settings) == "escalate":
            tenant = session.get_one(Tenant, query.tenant_id)
            next_tier = names[names.index(tier) + 1]
            if lifecycle.escalate(
                session, query, tenant=tenant, settings=settings, small_called=False
            ):
                if tier == Tier.SMALL:
                    query.decision = "small_unavailable"
                _add_to_path(
                    query, tier=tier, model=settings.tier(tier).model, decision="unavailable"
                )
                return TierResult(Outcome.ESCALATE, to_tier=next_tier)
            reason += f"; the budget cannot pay for the {next_tier} tier instead"
        if last and policy.on_large_unavailable(settings, query) == "small_answer":
            assert query.small_answer is not None  # the policy answers so only when there is one
            query.decision = "large_unavailable"
            answered = [entry["tier"] for entry in query.path or () if entry["margin"] is not None]
            lifecycle.succeed(
                session,
                query,
                answer=query.small_answer,
                tier=answered[-1] if answered else Tier.SMALL,
            )
            return TierResult(Outcome.ANSWERED)
        message = f"the {tier} model server kept failing: {reason}"
        return mark_failed(session, query, "model_unavailable", message, tier_names=names)


def fail_query(query_id: uuid.UUID, *, code: str, message: str, tier_names: Sequence[str]) -> None:
    with session_scope() as session:
        query = locked_query(session, query_id)
        if query.status not in TERMINAL_STATUSES:
            mark_failed(session, query, code, message, tier_names=tier_names)


def _decide(
    session: Session, query: Query, generation: Generation, settings: Settings, tier: str
) -> TierResult:
    """Decide on ``tier``'s answer (any tier but the last): climb to the next tier or finish."""
    stage = settings.stage_of(tier)
    if stage == 0:
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
            stage=stage,
        )
    except MarginUnavailable as exc:
        message = f"{exc}; is the server's --max-top-n-tokens at least 2?"
        return mark_failed(
            session, query, "margin_unavailable", message, tier_names=settings.tier_names
        )
    margin, answer, pair = decision.margin, decision.answer, decision.model_pair
    query.small_answer = answer  # the answer should the later tiers be unavailable
    metrics.observe_margin(margin, model_pair=pair, kind=settings.margin_kind)
    if stage == 0:  # the query's own fields are the first tier's decision; ``path`` has all
        _record_first_decision(query, decision)
    escalate = decision.escalate and lifecycle.escalate(
        session, query, tenant=tenant, settings=settings, worst_case=worst_case
    )
    reason: str = decision.reason
    if decision.escalate and not escalate:
        reason = "budget_guard"  # below the threshold, but the budget cannot pay the next tier
        if stage == 0:
            query.decision = reason
    _add_to_path(
        query, tier=tier, model=settings.tier(tier).model, decision=reason, made_of=decision
    )
    log.info("decision", margin=margin, threshold=decision.threshold, reason=reason)
    metrics.observe_decision(
        tenant_id=str(query.tenant_id),
        model_pair=pair,
        task=query.task_label,
        decision=reason,
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
    if escalate:  # the caller enqueues the next tier
        return TierResult(Outcome.ESCALATE, to_tier=settings.tier_names[stage + 1])
    lifecycle.succeed(session, query, answer=answer, tier=tier)
    return TierResult(Outcome.ANSWERED)


def _record_first_decision(query: Query, decision: PolicyDecision) -> None:
    query.margin = decision.margin
    query.scope_id = decision.scope_id
    query.threshold = decision.threshold
    query.threshold_version = decision.threshold_version
    query.threshold_rank_error = decision.rank_error
    query.threshold_window = decision.window
    query.target_escalation_rate = decision.target_escalation_rate
    query.decision = decision.reason


def _add_to_path(
    query: Query,
    *,
    tier: str,
    model: str,
    decision: str,
    made_of: PolicyDecision | None = None,
) -> None:
    """Append the tier's entry to the query's path: its decision (``last_tier`` for the last
    tier's answer, ``unavailable`` for a tier whose server kept failing) and, for a decision on
    a margin, what it was made from (so that it can be replayed)."""
    entry = {
        "tier": tier,
        "model": model,
        "margin": None if made_of is None else made_of.margin,
        "threshold": None if made_of is None else made_of.threshold,
        "threshold_version": None if made_of is None else made_of.threshold_version,
        "threshold_scope": None if made_of is None else made_of.scope_id,
        "threshold_window": None if made_of is None else made_of.window,
        "target_escalation_rate": None if made_of is None else made_of.target_escalation_rate,
        "decision": decision,
    }
    query.path = [*(query.path or ()), entry]  # a new list, so that the ORM writes it


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
