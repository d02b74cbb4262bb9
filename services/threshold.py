"""The dynamic threshold of PAPER.md, shared by every worker through the database.

H is every margin seen in a scope (tenant x model pair x task label), the current one
included. While |H| <= W nothing escalates; after that the threshold is the empirical
p-quantile H_sorted[floor(|H| * p)] and a query escalates iff its margin is below it.

Each scope row is locked while a margin is appended, so decisions in one scope are serialised
across processes and every margin gets a unique position ``seq``. The decision stores
``threshold_version = seq``: the threshold is reproducible from the margins with seq <= version.

The service reads the quantile from a KLL sketch (Apache DataSketches) kept in the scope row and
updated under the same lock, so a decision costs the same at a thousand margins as at millions
and every worker sees the sketch of the last committed decision (no staleness). The sketch holds
every margin until it has more than k of them, and the threshold is then exactly the paper's;
beyond that it is the sketch's estimate, whose rank in H is within the sketch's normalised rank
error of p (about 0.7 % for k = 400, at 99 % confidence). Each decision stores that bound
(0 for an exact one). The full history stays in ``margin_history``: ``replay_threshold`` gives
the paper's exact threshold for any decision and ``replay_rank_error`` how far a stored one was
from it. The offline evaluation runs the exact rule (``quantile_index``, ``escalates``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from datasketches import kll_doubles_sketch
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db import locked_row
from services.models import MarginRecord, ThresholdScope, utcnow
from services.threshold_window import (
    DriftLimits,
    DriftReading,
    DriftState,
    HistoryMode,
    RecentDecisions,
)

Reason = Literal["warmup", "below_threshold", "at_or_above_threshold"]
RateLike = float | npt.NDArray[np.floating]
IndexLike = np.int64 | npt.NDArray[np.int64]
BoolLike = np.bool_ | npt.NDArray[np.bool_]

DEFAULT_SKETCH_K = 400
DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class Decision:
    escalate: bool
    reason: Reason
    threshold: float | None
    threshold_version: int
    target_escalation_rate: float
    scope_id: int
    rank_error: float | None = None  # the threshold's rank-error bound; 0 when exact
    window: int | None = None  # the last N margins the threshold was read from; None: all of H
    drift: DriftReading | None = None  # None until the scope has N decisions after the warm-up
    drift_state: DriftState = "ok"  # the scope's state after this decision
    drift_detected: bool = False  # this decision moved the scope into "drift"


def quantile_index(history_size: int, target_escalation_rate: RateLike) -> IndexLike:
    """Position of the p-quantile in the sorted history: floor(|H| * p), kept inside H.

    ``target_escalation_rate`` may be an array of rates (the offline evaluation asks for many
    budgets at once); the answer then is an array of positions.
    """
    index = np.floor(history_size * np.asarray(target_escalation_rate)).astype(np.int64)
    bounded: IndexLike = np.minimum(index, history_size - 1)
    return bounded


def escalates(margin: RateLike, threshold: RateLike, *, history_size: int, warmup: int) -> BoolLike:
    """The decision: never while |H| <= W, then iff the margin is below the threshold."""
    return np.logical_and(history_size > warmup, np.less(margin, threshold))


def exact_threshold(
    margins: Sequence[float] | npt.NDArray[np.float64], target_escalation_rate: float
) -> float:
    """The paper's rule on an in-memory history (the evaluation and audits use this)."""
    ordered = np.sort(np.asarray(margins, dtype=np.float64))
    return float(ordered[int(quantile_index(len(ordered), target_escalation_rate))])


def sketch_threshold(sketch: kll_doubles_sketch, target_escalation_rate: float) -> float:
    """The p-quantile the paper's rule asks for, read from the sketch.

    Asking for the middle of position floor(|H| * p)'s rank interval makes the answer exactly
    H_sorted[floor(|H| * p)] while the sketch still holds every margin, whatever the float
    rounding of the rank.
    """
    size = sketch.n
    position = int(quantile_index(size, target_escalation_rate))
    return float(sketch.get_quantile((position + 0.5) / size))


def rank_error_bound(sketch: kll_doubles_sketch) -> float:
    """0 while the sketch holds every margin; else its normalised rank error (99 % conf.)."""
    return float(sketch.normalized_rank_error(False)) if sketch.is_estimation_mode() else 0.0


@dataclass(frozen=True)
class HistoryRule:
    """Which margins a scope's threshold is read from, and when its traffic counts as drifted."""

    history: HistoryMode = "all"
    window: int = DEFAULT_WINDOW  # N: the recent decisions kept (and the window, if "window")
    drift: DriftLimits = field(default_factory=DriftLimits)


def decide(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    model_pair: str,
    task_label: str | None,
    query_id: uuid.UUID,
    margin: float,
    target_escalation_rate: float,
    warmup: int,
    sketch_k: int = DEFAULT_SKETCH_K,
    rule: HistoryRule = HistoryRule(),
) -> Decision:
    """Append ``margin`` to its scope's history and decide whether the query escalates.

    ``sketch_k`` sizes a scope's sketch when it is created; a scope keeps the k it began with.
    The scope's recent decisions and drift state are updated under the same lock.
    """
    scope = _lock_scope(session, tenant_id=tenant_id, model_pair=model_pair, task=task_label or "")
    sketch = _sketch_of(session, scope, sketch_k)
    recent = _recent_of(session, scope, rule.window)
    sketch.update(margin)
    scope.margin_count += 1
    scope.sketch = sketch.serialize()
    version = scope.margin_count
    recent.add_margin(version, margin)
    session.add(MarginRecord(scope_id=scope.id, seq=version, query_id=query_id, margin=margin))
    window = rule.window if rule.history == "window" else None
    if version <= warmup:
        decision = Decision(False, "warmup", None, version, target_escalation_rate, scope.id)
    else:
        if window is None:
            threshold = sketch_threshold(sketch, target_escalation_rate)
            rank_error = rank_error_bound(sketch)
        else:
            threshold, rank_error = exact_threshold(recent.window(), target_escalation_rate), 0.0
        escalate = bool(escalates(margin, threshold, history_size=version, warmup=warmup))
        reason: Reason = "below_threshold" if escalate else "at_or_above_threshold"
        decision = Decision(
            escalate, reason, threshold, version, target_escalation_rate, scope.id,
            rank_error, window,
        )  # fmt: skip
    recent.record_decision(
        escalated=decision.escalate, target_escalation_rate=target_escalation_rate
    )
    reading, detected = _update_scope(scope, recent, sketch, decision, rule, warmup)
    return replace(
        decision,
        drift=reading,
        drift_state="drift" if scope.drift_state == "drift" else "ok",
        drift_detected=detected,
    )


def _update_scope(
    scope: ThresholdScope,
    recent: RecentDecisions,
    sketch: kll_doubles_sketch,
    decision: Decision,
    rule: HistoryRule,
    warmup: int,
) -> tuple[DriftReading | None, bool]:
    """Store the ring and what the decision read, and move the scope's drift state; the
    reading (None before N decisions after the warm-up), and whether drift was just found."""
    now = utcnow()
    scope.recent = recent.to_bytes()
    scope.threshold = decision.threshold
    scope.target_escalation_rate = decision.target_escalation_rate
    scope.updated_at = now
    if not recent.full_since(warmup):
        return None, False
    reading = recent.reading(sketch)
    scope.realised_escalation_rate = reading.realised_escalation_rate
    scope.margin_psi = reading.psi
    if scope.drift_state != "drift" and rule.drift.drifted(reading):
        scope.drift_state, scope.drift_changed_at = "drift", now
        return reading, True
    if scope.drift_state == "drift" and rule.drift.settled(reading):
        scope.drift_state, scope.drift_changed_at = "ok", now
    return reading, False


def replay_threshold(
    session: Session,
    *,
    scope_id: int,
    threshold_version: int,
    target_escalation_rate: float,
    window: int | None = None,
) -> float:
    """The exact threshold for a stored decision, from the margins it was made with (the last
    ``window`` of them, if the decision was read from a window).

    It equals the stored threshold where the decision's rank-error bound is 0."""
    history = _history(session, scope_id, threshold_version, window)
    return exact_threshold(history, target_escalation_rate)


def replay_rank_error(
    session: Session,
    *,
    scope_id: int,
    threshold_version: int,
    threshold: float,
    target_escalation_rate: float,
) -> float:
    """How far, as a share of |H|, a stored threshold sits from the exact quantile's position;
    at most the decision's stored bound (plus 1/|H| for the rank's rounding)."""
    history = _history(session, scope_id, threshold_version)
    return rank_distance(history, threshold, target_escalation_rate)


def rank_distance(
    margins: Sequence[float], threshold: float, target_escalation_rate: float
) -> float:
    """0 if ``threshold`` is H_sorted[floor(|H| * p)], else the share of H between them."""
    ordered = np.sort(np.asarray(margins, dtype=np.float64))
    target = int(quantile_index(len(ordered), target_escalation_rate))
    first = int(np.searchsorted(ordered, threshold, side="left"))
    last = int(np.searchsorted(ordered, threshold, side="right")) - 1
    if first <= target <= last:
        return 0.0
    return min(abs(target - first), abs(target - last)) / len(ordered)


def _history(
    session: Session, scope_id: int, threshold_version: int, window: int | None = None
) -> list[float]:
    """The scope's margins up to ``threshold_version`` (only the last ``window`` of them)."""
    oldest = 1 if window is None else threshold_version - window + 1
    return list(
        session.scalars(
            select(MarginRecord.margin).where(
                MarginRecord.scope_id == scope_id,
                MarginRecord.seq <= threshold_version,
                MarginRecord.seq >= oldest,
            )
        ).all()
    )


def _recent_of(session: Session, scope: ThresholdScope, size: int) -> RecentDecisions:
    """The scope's ring of recent decisions; rebuilt from the stored history (decisions
    unknown) when it has none of this size or is behind the history, under the scope's lock."""
    if scope.recent is not None:
        recent = RecentDecisions.from_bytes(scope.recent, size)
        if recent is not None and recent.newest_seq == scope.margin_count:
            return recent
    newest = session.execute(
        select(MarginRecord.seq, MarginRecord.margin)
        .where(MarginRecord.scope_id == scope.id)
        .order_by(MarginRecord.seq.desc())
        .limit(size)
    ).all()
    return RecentDecisions.of_history(size, [(seq, margin) for seq, margin in newest])


def _sketch_of(session: Session, scope: ThresholdScope, k: int) -> kll_doubles_sketch:
    """The scope's sketch; built from the stored history if the scope has none that matches
    (a scope from before sketches were kept), once, under the scope's lock."""
    if scope.sketch is not None:
        sketch = kll_doubles_sketch.deserialize(scope.sketch)
        if sketch.n == scope.margin_count:
            return sketch
    sketch = kll_doubles_sketch(k)
    if scope.margin_count:
        for margin in _history(session, scope.id, scope.margin_count):
            sketch.update(margin)
    return sketch


def _lock_scope(
    session: Session, *, tenant_id: uuid.UUID, model_pair: str, task: str
) -> ThresholdScope:
    # No flush first: the caller's pending changes (the query's) go out with the commit, in one
    # UPDATE, rather than twice. Nothing pending can touch the scope row.
    with session.no_autoflush:
        return locked_row(
            session, ThresholdScope, tenant_id=tenant_id, model_pair=model_pair, task_label=task
        )
