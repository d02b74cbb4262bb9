"""The ``paper`` protocol: the original code's evaluation, step for step.

The paper's public code (github guillemram97/margin_llms: ``utils_method.make_cascade`` and
``plots.py`` in cost mode ``fix``) scores a pair in ways the service's own rule does not: it knows
the stream's length (so it sends queries to L alone once the budget covers L for all of them),
fixes p when L is no better than S, and credits chance where nothing can be paid. PAPER.md's
section "Reproducing the original code's numbers exactly" lists the ten steps; the comments
below cite them by number. Every (seed, c_l, budget) is one column, and all columns run along
the stream together.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.evaluation.data import BoolArray, FloatArray, PairData
from services.evaluation.scores import normalised_gain

PROTOCOL = "paper"
COST_RATIOS = (10, 20, 50)  # c_l, with c_s = 1 (step 2)
SEEDS = (0, 1, 2)
BUDGET_POINTS = 100
WARMUP = 20  # the threshold applies once |H| > 20 (step 7)
MULTIPLE_CHOICE_CLASSES = 4
OPEN_QA_CLASSES = 40_000  # the original code's chance credit for open questions
CHANCE_CLASSES = {
    "mmlu": MULTIPLE_CHOICE_CLASSES,
    "medmcqa": MULTIPLE_CHOICE_CLASSES,
    "triviaqa": OPEN_QA_CLASSES,
    "truthfulqa": OPEN_QA_CLASSES,
    "gsm8k": OPEN_QA_CLASSES,
}
SIGNAL = "the small model's p_conf as recorded (6 significant digits, -inf as 0)"
SETTINGS = {
    "source": "github guillemram97/margin_llms: utils_method.make_cascade, plots.py mode fix",
    "seeds": list(SEEDS),
    "order": "numpy.random.RandomState(seed).permutation(n)",
    "warmup": f"the threshold applies once |H| > {WARMUP}",
    "cost_ratios": list(COST_RATIOS),
    "budgets": "numpy.linspace(1, c_l, 100)",
    "budget_points": BUDGET_POINTS,
    "stream": "the test rows in file order (all rows of a file without any), duplicates kept",
    "signal": SIGNAL,
    "rate": "p(B) = min((B - 1) / c_l, 1); if acc_L <= acc_S, p = min((1 - acc_S) / 2, 0.6) "
    "and no query goes to L alone",
    "guards": "R = B * n; R < 1: chance credit 1 / classes; R <= r: S only; R >= r * c_l: "
    "L alone (its signal stays out of H); else the cascade escalates iff u < tau and, "
    "after paying S, R >= c_l",
    "random": "the first int(n * (c_l - B) / (c_l - 1)) shuffled queries to S alone, the rest "
    "to L alone",
    "oracle": "acc_S + min(floor(n * (B - 1) / c_l), #{S wrong, L right}) / n",
    "last_budget": "at B = c_l every policy scores acc_L",
    "auc": "trapezoid(accuracy, B) / (c_l - 1), as sklearn.metrics.auc",
    "chance_classes": CHANCE_CLASSES,
}


def grid_name(cost_ratio: int) -> str:
    return f"c_l/c_s={cost_ratio}, B in [c_s, c_l]"


REFERENCE_GRID = grid_name(COST_RATIOS[0])


@dataclass(frozen=True)
class Steps:
    """Which of the original code's steps apply: all of them in the protocol. Turning one off
    (to what the service protocol does instead) measures how far that step moves the result
    (bench/eval_protocols.py)."""

    large_alone: bool = True  # step 6's "L alone"; off: every paid query is a cascade step
    quirk: bool = True  # step 4's fixed p where L is no better than S; off: p(B) always
    rounded_signal: bool = True  # step 3's p_conf as written; off: exp(conf_raw), unrounded
    legacy_orders: bool = True  # step 2's RandomState; off: numpy.random.default_rng


ALL_STEPS = Steps()


@dataclass(frozen=True)
class PaperStream:
    """One pair's stream in file order (step 1): its signal (step 3) and 0/1 correctness."""

    signal: FloatArray
    small_correct: FloatArray
    large_correct: FloatArray
    classes: int  # chance credit is 1 / classes (step 5)
    steps: Steps = ALL_STEPS

    @property
    def n(self) -> int:
        return len(self.signal)

    @property
    def quirk(self) -> bool:
        """L no better than S on the stream: p is fixed and L alone is off (step 4)."""
        return self.steps.quirk and bool(self.large_correct.sum() <= self.small_correct.sum())


def paper_stream(pair: PairData, steps: Steps = ALL_STEPS) -> PaperStream:
    """The test rows in file order; a file without test rows streams all of them (step 1)."""
    if pair.p_conf is None:
        raise ValueError(f"{pair.source} has no p_conf column: the paper protocol reads chains")
    if pair.task not in CHANCE_CLASSES:
        raise ValueError(f"the paper protocol has no chance credit for the task {pair.task!r}")
    splits = np.array(pair.splits)
    rows = splits == "test" if (splits == "test").any() else np.ones(len(splits), dtype=bool)
    signal = pair.p_conf[rows] if steps.rounded_signal else np.exp(pair.signals["margin"][rows])
    if np.isnan(signal).any():
        raise ValueError(f"{pair.source}: {pair.small}.p_conf is missing on some rows")
    return PaperStream(
        signal=signal,
        small_correct=pair.small_correct[rows].astype(np.float64),
        large_correct=pair.large_correct[rows].astype(np.float64),
        classes=CHANCE_CLASSES[pair.task],
        steps=steps,
    )


def shuffled_orders(
    n: int, seeds: tuple[int, ...] = SEEDS, *, legacy: bool = True
) -> npt.NDArray[np.int64]:
    """(seeds, n): the legacy RandomState permutations the original code streams in (step 2),
    or ``default_rng``'s, as the service protocol draws them."""
    if legacy:
        return np.stack([np.random.RandomState(seed).permutation(n) for seed in seeds])
    return np.stack([np.random.default_rng(seed).permutation(n) for seed in seeds])


def paper_budgets(cost_ratio: int) -> FloatArray:
    budgets: FloatArray = np.linspace(1, cost_ratio, BUDGET_POINTS)
    return budgets


def escalation_rates(
    stream: PaperStream, budgets: FloatArray, large_cost: FloatArray
) -> FloatArray:
    """p(B) = min((B - 1) / c_l, 1), or the quirk's constant (step 4)."""
    if stream.quirk:
        accuracy_small = stream.small_correct.sum() / stream.n
        return np.full(len(budgets), min((1 - accuracy_small) / 2, 0.6))
    rates: FloatArray = np.minimum((budgets - 1) / large_cost, 1)
    return rates


def threshold_wants(signal: FloatArray, rates: FloatArray) -> BoolArray:
    """(n, rates): whether each query's u is below tau, were it a cascade step (step 7).

    u < sorted(H)[i] exactly when at most i members of H are <= u, so one count per query
    serves every rate. H holds every earlier u: a query sent to L alone keeps its u out of H,
    but L alone lasts (R >= r * c_l still holds after paying c_l), as do S only (R <= r) and
    chance (R < 1), so no cascade step ever follows one and H at a cascade step is the prefix.
    """
    history: list[float] = []
    at_most = np.empty(len(signal))  # members of H (this u included) that are <= u
    for t, value in enumerate(signal.tolist()):
        position = bisect.bisect_right(history, value)
        history.insert(position, value)
        at_most[t] = position + 1
    size = np.arange(1, len(signal) + 1, dtype=np.float64)[:, None]
    index = (size * rates[None, :]).astype(np.int64)  # int(|H| * p); past the end: escalate
    # Until |H| > 20 the original's threshold is -1.
    wants: BoolArray = np.where(size > WARMUP, at_most[:, None] <= index, signal[:, None] < -1)
    return wants


def cascade_accuracy(
    stream: PaperStream,
    orders: npt.NDArray[np.int64],
    budgets: FloatArray,
    large_cost: FloatArray,
) -> FloatArray:
    """(seeds, columns): margin sampling's accuracy for each order and each column's budget B
    and c_l (steps 4 to 7), the budget spent as the original loop spends it.

    The original tests R - r <= 0, R - r * c_l >= 0 and R - c_l >= 0; with doubles these are
    R <= r, R >= r * c_l and R >= c_l, so the two agree to the last bit."""
    n, columns = stream.n, len(budgets)
    rates = escalation_rates(stream, budgets, large_cost)
    wants = np.concatenate(
        [threshold_wants(stream.signal[order], rates) for order in orders], axis=1
    )  # (n, seeds * columns), as are the rest
    seed_of = np.repeat(np.arange(len(orders)), columns)
    small_ok = stream.small_correct[orders].T[:, seed_of]
    large_ok = stream.large_correct[orders].T[:, seed_of]
    cost = np.tile(large_cost, len(orders))
    remaining = np.tile(budgets, len(orders)) * n
    large_alone_allowed = stream.steps.large_alone and not stream.quirk
    chance = 1 / stream.classes
    correct = np.zeros(len(remaining))
    for t in range(n):
        left = n - t  # queries left, this one included
        paid = remaining >= 1
        small_only = paid & (remaining <= left)
        large_alone = paid & ~small_only & (remaining >= left * cost) & large_alone_allowed
        cascade = paid & ~small_only & ~large_alone
        remaining -= np.where(large_alone, cost, paid)  # S only and the cascade pay c_s
        escalate = cascade & wants[t] & (remaining >= cost)
        remaining -= np.where(escalate, cost, 0.0)
        answer = np.where(large_alone | escalate, large_ok[t], small_ok[t])
        correct += np.where(paid, answer, chance)
    accuracy: FloatArray = (correct / n).reshape(len(orders), columns)
    return accuracy


def random_accuracy(
    stream: PaperStream, orders: npt.NDArray[np.int64], budgets: FloatArray, large_cost: int
) -> FloatArray:
    """(seeds, budgets): the first int(n * (c_l - B) / (c_l - 1)) queries of each order to S
    alone, the rest to L alone (step 8)."""
    n = stream.n
    on_small = (n * ((budgets - large_cost) / (1 - large_cost))).astype(np.int64)
    small = np.concatenate([np.zeros((len(orders), 1)), stream.small_correct[orders].cumsum(1)], 1)
    large = np.concatenate([np.zeros((len(orders), 1)), stream.large_correct[orders].cumsum(1)], 1)
    accuracy: FloatArray = (small[:, on_small] + (large[:, -1:] - large[:, on_small])) / n
    return accuracy


def oracle_accuracy(stream: PaperStream, budgets: FloatArray, large_cost: int) -> FloatArray:
    """acc_S + min(m_B, G) / n, m_B = floor(n * (B - 1) / c_l), G = #{S wrong, L right} (step 9)."""
    n = stream.n
    gain = int(((stream.small_correct == 0) & (stream.large_correct == 1)).sum())
    escalations = np.floor(n * (budgets - 1) / large_cost)
    accuracy: FloatArray = stream.small_correct.sum() / n + np.minimum(escalations, gain) / n
    return accuracy


def paper_curves(stream: PaperStream) -> dict[int, dict[str, FloatArray]]:
    """Per c_l, each policy's accuracy at each budget, averaged over the seeds; at B = c_l
    every policy scores acc_L (step 10), seed by seed as the original does."""
    orders = shuffled_orders(stream.n, legacy=stream.steps.legacy_orders)
    accuracy_large = stream.large_correct.sum() / stream.n
    budgets = np.concatenate([paper_budgets(k) for k in COST_RATIOS])
    costs = np.repeat(np.array(COST_RATIOS, dtype=np.float64), BUDGET_POINTS)
    margin = cascade_accuracy(stream, orders, budgets, costs).reshape(
        len(orders), -1, BUDGET_POINTS
    )
    curves = {}
    for i, k in enumerate(COST_RATIOS):
        per_seed = {
            "margin": margin[:, i],
            "random": random_accuracy(stream, orders, paper_budgets(k), k),
        }
        for accuracy in per_seed.values():
            accuracy[:, -1] = accuracy_large
        oracle = oracle_accuracy(stream, paper_budgets(k), k)
        oracle[-1] = accuracy_large
        curves[k] = {name: values.mean(axis=0) for name, values in per_seed.items()}
        curves[k]["oracle"] = oracle
    return curves


def paper_auc(budgets: FloatArray, accuracy: FloatArray, cost_ratio: int) -> float:
    """sklearn.metrics.auc(B, accuracy) / (c_l - 1): the same trapezoid rule (step 10)."""
    return float(np.trapezoid(accuracy, budgets) / (cost_ratio - 1))


def evaluate_pair(pair: PairData, steps: Steps = ALL_STEPS) -> dict[str, Any]:
    """One pair's results, shaped as the service protocol's (``services.evaluation.run``)."""
    stream = paper_stream(pair, steps)
    grids = {}
    for k, curves in paper_curves(stream).items():
        budgets = paper_budgets(k)
        policies = {
            name: {
                "mode": "route" if name == "random" else "cascade",
                "auc": paper_auc(budgets, accuracy, k),
                "accuracy": accuracy.round(5).tolist(),
            }
            for name, accuracy in curves.items()
        }
        grids[grid_name(k)] = {
            "budgets": budgets.tolist(),
            "policies": policies,
            "normalised_gain": normalised_gain(
                policies["margin"]["auc"], policies["random"]["auc"], policies["oracle"]["auc"]
            ),
        }
    return {
        "task": pair.task,
        "source": pair.source,
        "small": pair.small,
        "large": pair.large,
        "signal": SIGNAL,
        "signals": {"margin": SIGNAL},
        "queries_scored": stream.n,
        "chance_classes": stream.classes,
        "accuracy_small": float(stream.small_correct.sum() / stream.n),
        "accuracy_large": float(stream.large_correct.sum() / stream.n),
        "large_no_better": stream.quirk,
        "grids": grids,
    }
