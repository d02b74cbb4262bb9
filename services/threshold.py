"""The dynamic threshold of PAPER.md, shared by every worker through the database.

H is every margin seen in a scope (tenant x model pair x task label), the current one
included. While |H| <= W nothing escalates; after that the threshold is the empirical
p-quantile H_sorted[floor(|H| * p)] and a query escalates iff its margin is below it.

Each scope row is locked while a margin is appended, so decisions in one scope are serialised
across processes and every margin gets a unique position ``seq``. The decision stores
``threshold_version = seq``: the threshold is reproducible from the margins with seq <= version.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db import locked_row
from services.models import MarginRecord, ThresholdScope

Reason = Literal["warmup", "below_threshold", "at_or_above_threshold"]
RateLike = float | npt.NDArray[np.floating]
IndexLike = np.int64 | npt.NDArray[np.int64]
BoolLike = np.bool_ | npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Decision:
    escalate: bool
    reason: Reason
    threshold: float | None
    threshold_version: int
    target_escalation_rate: float
    scope_id: int


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


def exact_threshold(margins: Sequence[float], target_escalation_rate: float) -> float:
    """The paper's rule on an in-memory history (the evaluation and audits use this)."""
    ordered = sorted(margins)
    return ordered[int(quantile_index(len(ordered), target_escalation_rate))]


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
) -> Decision:
    """Append ``margin`` to its scope's history and decide whether the query escalates."""
    scope = _lock_scope(session, tenant_id=tenant_id, model_pair=model_pair, task=task_label or "")
    scope.margin_count += 1
    version = scope.margin_count
    session.add(MarginRecord(scope_id=scope.id, seq=version, query_id=query_id, margin=margin))
    session.flush()
    if version <= warmup:
        return Decision(False, "warmup", None, version, target_escalation_rate, scope.id)
    threshold = _threshold_at(session, scope.id, version, target_escalation_rate)
    escalate = bool(escalates(margin, threshold, history_size=version, warmup=warmup))
    reason: Reason = "below_threshold" if escalate else "at_or_above_threshold"
    return Decision(escalate, reason, threshold, version, target_escalation_rate, scope.id)


def replay_threshold(
    session: Session, *, scope_id: int, threshold_version: int, target_escalation_rate: float
) -> float:
    """Recompute a stored decision's threshold from the margins it was made with."""
    margins = session.scalars(
        select(MarginRecord.margin).where(
            MarginRecord.scope_id == scope_id, MarginRecord.seq <= threshold_version
        )
    ).all()
    return exact_threshold(margins, target_escalation_rate)


def _threshold_at(session: Session, scope_id: int, version: int, rate: float) -> float:
    # Under the scope lock no margin with seq > version exists yet, so the whole scope is H.
    threshold = session.scalar(
        select(MarginRecord.margin)
        .where(MarginRecord.scope_id == scope_id)
        .order_by(MarginRecord.margin)
        .offset(int(quantile_index(version, rate)))
        .limit(1)
    )
    assert threshold is not None  # the scope holds `version` >= 1 margins
    return threshold


def _lock_scope(
    session: Session, *, tenant_id: uuid.UUID, model_pair: str, task: str
) -> ThresholdScope:
    return locked_row(
        session, ThresholdScope, tenant_id=tenant_id, model_pair=model_pair, task_label=task
    )
