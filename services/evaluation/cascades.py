"""Cascades of two or more models on the recorded chains, at equal average budgets.

A chain file holds, per query, every model's answer, correctness, confidence and cost, so any
ordered subset of its models (in the chain's order) is a cascade that can be replayed: a query
starts at the first tier and climbs while the tier's confidence is below that tier's threshold.

The rule is the service's, stage by stage: each stage keeps the history of the confidences it
has seen (only the queries that reached it), nothing escalates from it while that history holds
at most W, then a query escalates iff its confidence is below the stage's running p_k-quantile.
The stages' rates come from one budget per query B (p(B) generalised): the expected cost per
query c_1 + p_1 c_2 + p_1 p_2 c_3 + ... equals B with every p_k the same rate q, found by
bisection (``services.policy.equal_rates``, the rule the service runs with middle tiers). Every
cascade spends B * n along the stream under the service's guard: a query escalates only if what
is left still pays the first tier for every later query; a query no tier can be paid for counts
as wrong.

Beside it, the hindsight rule tries every split of the same budget between the stages on a grid and
keeps the best accuracy: an upper bound that looks at the labels, to show what a better split
of B between the stages could win.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.evaluation.data import BoolArray, FloatArray
from services.evaluation.scores import normalised_auc
from services.policy import equal_rates

BUDGET_POINTS = 50
SPLIT_GRID = 6  # rates 0, 0.2, ..., 1 for each stage but the last, in the hindsight split


@dataclass(frozen=True)
class ChainRecords:
    """One task x chain: per model (in chain order) each query's outcome, confidence, cost."""

    task: str
    chain: str
    models: list[str]
    correct: dict[str, BoolArray]
    confidence: dict[str, FloatArray]  # higher = surer; -inf as the file's lowest value
    cost: dict[str, FloatArray]  # USD per call, as recorded

    @property
    def n(self) -> int:
        return len(next(iter(self.correct.values())))

    def cascades(self, tiers: int) -> Iterator[tuple[str, ...]]:
        """Every ordered choice of ``tiers`` models, in the chain's order."""
        return itertools.combinations(self.models, tiers)


def read_chain(path: Path) -> ChainRecords:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    models = [column.removesuffix(".correct") for column in rows[0] if column.endswith(".correct")]

    def column(name: str) -> FloatArray:
        return np.array([float(row[name] or "nan") for row in rows])

    confidence = {}
    for model in models:
        values = column(f"{model}.conf_raw")
        finite = values[np.isfinite(values)]
        confidence[model] = np.where(np.isfinite(values), values, finite.min())
    return ChainRecords(
        task=rows[0]["task"],
        chain=path.stem.split("__", 1)[1],
        models=models,
        correct={model: column(f"{model}.correct") > 0.5 for model in models},
        confidence=confidence,
        cost={model: column(f"{model}.cost_usd") for model in models},
    )


def run_cascade(
    records: ChainRecords,
    tiers: tuple[str, ...],
    *,
    order: npt.NDArray[np.int64],
    rates: list[float],
    budget: float,
    warmup: int,
) -> tuple[float, float]:
    """Accuracy and spend per query of one cascade along one stream order at one budget."""
    n = len(order)
    correct = [records.correct[model][order] for model in tiers]
    confidence = [records.confidence[model][order] for model in tiers]
    cost = [records.cost[model][order] for model in tiers]
    first_cost_after = np.concatenate([np.cumsum(cost[0][::-1])[::-1][1:], [0.0]])
    histories: list[list[float]] = [[] for _ in tiers[:-1]]
    remaining = budget * n
    right = 0
    for t in range(n):
        if remaining < cost[0][t]:
            continue  # no tier can be paid: wrong
        remaining -= cost[0][t]
        stage = 0
        while stage < len(tiers) - 1:
            value = confidence[stage][t]
            history = histories[stage]
            bisect.insort(history, value)
            if len(history) <= warmup:
                break
            threshold = history[min(math.floor(len(history) * rates[stage]), len(history) - 1)]
            next_cost = cost[stage + 1][t]
            if not (value < threshold and remaining - next_cost >= first_cost_after[t]):
                break
            remaining -= next_cost
            stage += 1
        right += bool(correct[stage][t])
    return right / n, (budget * n - remaining) / n


@dataclass(frozen=True)
class CascadeCurve:
    tiers: tuple[str, ...]
    rule: str  # "equal rates" or "best split (hindsight)"
    budgets: FloatArray
    accuracy: FloatArray  # mean over the stream orders
    spend: FloatArray

    @property
    def auc(self) -> float:
        return normalised_auc(self.budgets, self.accuracy)


def budget_range(records: ChainRecords) -> FloatArray:
    """From the chain's cheapest model alone to its dearest alone (mean cost per query)."""
    means = [float(records.cost[model].mean()) for model in records.models]
    budgets: FloatArray = np.linspace(min(means), max(means), BUDGET_POINTS)
    return budgets


def curve(
    records: ChainRecords,
    tiers: tuple[str, ...],
    *,
    seeds: list[int],
    warmup: int,
    rule: str = "equal rates",
) -> CascadeCurve:
    budgets = budget_range(records)
    orders = [np.random.default_rng(seed).permutation(records.n) for seed in seeds]
    costs = [float(records.cost[model].mean()) for model in tiers]
    accuracy, spend = np.zeros(len(budgets)), np.zeros(len(budgets))
    for b, budget in enumerate(budgets):
        splits = [equal_rates(costs, float(budget))]
        if rule != "equal rates":
            splits += _splits_within(costs, float(budget))
        best = (-1.0, 0.0)
        for rates in splits:
            runs = [
                run_cascade(records, tiers, order=order, rates=rates, budget=budget, warmup=warmup)
                for order in orders
            ]
            mean = (float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs])))
            best = max(best, mean)
        accuracy[b], spend[b] = best
    return CascadeCurve(tiers, rule, budgets, accuracy, spend)


def _splits_within(costs: list[float], budget: float) -> list[list[float]]:
    """Every grid split of rates whose expected cost fits ``budget`` (the budget guard spends
    no more in any case)."""
    grid = np.linspace(0, 1, SPLIT_GRID)
    splits = []
    for rates in itertools.product(grid, repeat=len(costs) - 1):
        reach, expected = 1.0, costs[0]
        for rate, cost in zip(rates, costs[1:], strict=True):
            reach *= rate
            expected += reach * cost
        if expected <= budget * (1 + 1e-9):
            splits.append([float(rate) for rate in rates])
    return splits


def compare(records: ChainRecords, *, seeds: list[int], warmup: int) -> dict[str, Any]:
    """Every cascade of 2 or more of the chain's models under the equal-rates rule; the best
    of each length, and for the best three-tier one the best split in hindsight."""
    curves = [
        curve(records, tiers, seeds=seeds, warmup=warmup)
        for size in range(2, len(records.models) + 1)
        for tiers in records.cascades(size)
    ]
    best = {
        size: max((c for c in curves if len(c.tiers) == size), key=lambda c: c.auc)
        for size in range(2, len(records.models) + 1)
    }
    hindsight = curve(records, best[3].tiers, seeds=seeds, warmup=warmup, rule="hindsight")
    singles = {model: float(records.correct[model].mean()) for model in records.models}
    return {
        "task": records.task,
        "chain": records.chain,
        "queries": records.n,
        "accuracy_alone": singles,
        "cost_alone": {model: float(records.cost[model].mean()) for model in records.models},
        "budgets": budget_range(records).tolist(),
        "cascades": [_as_json(c) for c in curves],
        "best_by_tiers": {str(size): " -> ".join(c.tiers) for size, c in best.items()},
        "best_three_tier_split_in_hindsight": _as_json(hindsight),
        "middle_tiers": _middle_tiers(curves, best[2]),
    }


def _middle_tiers(curves: list[CascadeCurve], pair: CascadeCurve) -> list[dict[str, Any]]:
    """For the best pair a -> c: the AUC gained by each a -> b -> c."""
    first, last = pair.tiers
    return [
        {"middle": c.tiers[1], "auc": c.auc, "gain_over_pair": c.auc - pair.auc}
        for c in curves
        if len(c.tiers) == 3 and c.tiers[0] == first and c.tiers[2] == last
    ]


def _as_json(c: CascadeCurve) -> dict[str, Any]:
    return {
        "tiers": list(c.tiers),
        "rule": c.rule,
        "auc": c.auc,
        "accuracy": c.accuracy.round(5).tolist(),
        "spend_per_query": c.spend.tolist(),
    }
