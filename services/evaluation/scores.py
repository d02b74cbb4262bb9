"""What users ask of a router, read off an accuracy-cost curve, and how well a signal ranks
the small model's right answers above its wrong ones."""

from __future__ import annotations

import numpy as np

from services.evaluation.data import BoolArray, FloatArray


def normalised_auc(budgets: FloatArray, accuracy: FloatArray) -> float:
    """(1 / (B_max - B_min)) * integral of Acc(B) dB, by the trapezoid rule: mean accuracy."""
    return float(np.trapezoid(accuracy, budgets) / (budgets[-1] - budgets[0]))


def apgr(auc: float, accuracy_small: float, accuracy_large: float) -> float | None:
    """Average performance gap recovered: (AUC - AUC_S) / (AUC_L - AUC_S)."""
    gap = accuracy_large - accuracy_small
    return None if gap <= 0 else (auc - accuracy_small) / gap


def large_share_to_recover(
    accuracy: FloatArray,
    large_share: FloatArray,
    *,
    accuracy_small: float,
    accuracy_large: float,
    fraction: float,
) -> float | None:
    """The smallest share of large-model calls at which ``fraction`` of the S->L gap is won."""
    gap = accuracy_large - accuracy_small
    if gap <= 0:
        return None
    reached = np.flatnonzero(accuracy >= accuracy_small + fraction * gap)
    return float(large_share[reached].min()) if reached.size else None


def cost_saved_at(
    accuracy: FloatArray,
    spend: FloatArray,
    *,
    accuracy_large: float,
    large_cost: float,
    fraction: float = 0.95,
) -> float | None:
    """1 - (cheapest spend per query reaching ``fraction`` of L's accuracy) / (L's cost)."""
    reached = np.flatnonzero(accuracy >= fraction * accuracy_large)
    return float(1 - spend[reached].min() / large_cost) if reached.size else None


def normalised_gain(margin_auc: float, random_auc: float, oracle_auc: float) -> float | None:
    """How much of the oracle's lead over random routing margin sampling wins:
    (AUC_margin - AUC_random) / (AUC_oracle - AUC_random); None where the oracle has no lead."""
    lead = oracle_auc - random_auc
    return None if lead <= 0 else (margin_auc - random_auc) / lead


def auroc(scores: FloatArray, positive: BoolArray) -> float | None:
    """The chance that a random positive scores above a random negative (ties count half):
    the Mann-Whitney U over the product of the class sizes. None without both classes."""
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # tied scores share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[positive].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))
