"""``twotier eval``: every policy on every task x pair, for every cost scheme and budget range."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.evaluation import paper_protocol, scores
from services.evaluation.baselines import EMBEDDING_MODEL, Embedder, baseline_scores
from services.evaluation.data import PairData, read_records
from services.evaluation.progress import (
    SIMULATING,
    EvalProgress,
    NoProgress,
    StageReport,
    ignore_stage,
)
from services.evaluation.simulate import BudgetGrid, CostScheme, Curves, Stream
from services.policy.offline import (
    OFFLINE_POLICIES,
    THRESHOLD,
    FloatArray,
    Mode,
    OfflinePolicy,
    policies_scored_by,
)

REFERENCE_GRID = "c_l/c_s=20, B in [c_s, c_s+c_l]"
BASELINES = tuple(policies_scored_by("trained"))
# service: the service's own rule, guards and stream (train rows left out), PAPER.md's policies;
# paper: the original code's evaluation, step for step (``paper_protocol``).
Protocol = Literal["service", "paper"]
PROTOCOLS: tuple[Protocol, ...] = ("service", "paper")


@dataclass(frozen=True)
class EvalOptions:
    protocol: Protocol = "service"
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup: int = 20
    cost_ratios: tuple[int, ...] = (10, 20, 50)
    baselines: bool = True
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "twotier")


def evaluate(
    paths: list[Path], options: EvalOptions, progress: EvalProgress | None = None
) -> dict[str, Any]:
    progress = progress or NoProgress()
    pairs = [pair for path in paths for pair in read_records(path)]
    if not pairs:
        raise ValueError(f"no per-query records found in {', '.join(map(str, paths))}")
    if options.protocol == "paper":
        return _evaluate_paper(pairs, progress)
    embedder = Embedder(options.cache_dir)
    progress.started(pairs)
    results = []
    for pair in pairs:
        report = _reporter(progress, pair)
        results.append(
            evaluate_pair(pair, options, embedder if options.baselines else None, report)
        )
        progress.finished(pair)
    return {
        "protocol": "service",
        "settings": {
            "seeds": list(options.seeds),
            "warmup": options.warmup,
            "cost_ratios": list(options.cost_ratios),
            "budget_points": 100,
            "reference_grid": REFERENCE_GRID,
            "auxiliary_model": EMBEDDING_MODEL if options.baselines else None,
            "guards": "a cascade escalates (and a router picks L) only if the rest of the budget "
            "still pays the small model for every later query; unpaid queries count as wrong",
        },
        "pairs": results,
        "average_over_tasks": average_over_tasks(results),
        "mean_normalised_gain": mean_normalised_gain(results),
    }


def _evaluate_paper(pairs: list[PairData], progress: EvalProgress) -> dict[str, Any]:
    """The original code's protocol: margin sampling, random routing and the oracle only (it
    trains no router), on every pair."""
    progress.started(pairs)
    results = []
    for pair in pairs:
        progress.stage(pair, SIMULATING, 0, 0)
        results.append(paper_protocol.evaluate_pair(pair))
        progress.finished(pair)
    return {
        "protocol": "paper",
        "settings": {**paper_protocol.SETTINGS, "reference_grid": paper_protocol.REFERENCE_GRID},
        "pairs": results,
        "average_over_tasks": average_over_tasks(results),
        "mean_normalised_gain": mean_normalised_gain(results),
    }


def _reporter(progress: EvalProgress, pair: PairData) -> StageReport:
    def report(stage: str, done: int = 0, total: int = 0) -> None:
        progress.stage(pair, stage, done, total)

    return report


def evaluate_pair(
    pair: PairData,
    options: EvalOptions,
    embedder: Embedder | None,
    report: StageReport = ignore_stage,
) -> dict[str, Any]:
    scored = pair.scored
    small_correct, large_correct = pair.small_correct[scored], pair.large_correct[scored]
    n = int(scored.sum())
    schemes = [
        CostScheme(f"c_l/c_s={ratio}", np.ones(n), np.full(n, float(ratio)))
        for ratio in options.cost_ratios
    ]
    if (
        np.isfinite(pair.small_cost_usd[scored]).all()
        and np.isfinite(pair.large_cost_usd[scored]).all()
    ):
        schemes.append(
            CostScheme("token-priced", pair.small_cost_usd[scored], pair.large_cost_usd[scored])
        )
    grids = [
        grid
        for grid in (
            BudgetGrid(scheme, upper) for scheme in schemes for upper in ("c_l", "c_s+c_l")
        )
        if grid.budgets[-1] > grid.budgets[0]  # equal prices leave no budget range to sweep
    ]
    stream = Stream(
        small_correct=small_correct,
        large_correct=large_correct,
        grids=grids,
        seeds=list(options.seeds),
        warmup=options.warmup,
    )
    # The routers' stages run first, so that the simulation is reported as one stage.
    trained = baseline_scores(pair, embedder, report) if embedder is not None else {}
    report(SIMULATING, 0, 0)
    runs: dict[str, tuple[Curves, Mode]] = {
        name: _run(stream, OFFLINE_POLICIES[THRESHOLD], values[scored])
        for name, values in pair.signals.items()
    }
    for name in policies_scored_by(None):
        runs[name] = _run(stream, OFFLINE_POLICIES[name], None)
    for name in BASELINES if trained else ():
        runs[name] = _run(stream, OFFLINE_POLICIES[name], trained[name])
    accuracy_small, accuracy_large = float(small_correct.mean()), float(large_correct.mean())
    return {
        "task": pair.task,
        "source": pair.source,
        "small": pair.small,
        "large": pair.large,
        "signal": pair.signal_names[next(iter(pair.signals))],
        "signals": pair.signal_names,
        "queries_scored": n,
        "queries_trained_on": int(pair.is_train.sum()),
        "accuracy_small": accuracy_small,
        "accuracy_large": accuracy_large,
        "grids": {
            grid.name: _grid_result(g, grid, runs, accuracy_small, accuracy_large)
            for g, grid in enumerate(grids)
        },
    }


def _run(stream: Stream, policy: OfflinePolicy, signal: FloatArray | None) -> tuple[Curves, Mode]:
    curves = stream.run(policy.wants(stream, signal), policy.mode, large_alone=policy.large_alone)
    return curves, policy.mode


def _grid_result(
    g: int,
    grid: BudgetGrid,
    runs: dict[str, tuple[Curves, Mode]],
    accuracy_small: float,
    accuracy_large: float,
) -> dict[str, Any]:
    budgets = grid.budgets
    policies = {}
    for name, (curves, mode) in runs.items():
        accuracy, share, spend = curves.accuracy[g], curves.large_share[g], curves.spend[g]
        auc = scores.normalised_auc(budgets, accuracy)
        policies[name] = {
            "mode": mode,
            "auc": auc,
            "apgr": scores.apgr(auc, accuracy_small, accuracy_large),
            "large_share_for_50pct_gap": scores.large_share_to_recover(
                accuracy, share, accuracy_small=accuracy_small,
                accuracy_large=accuracy_large, fraction=0.5,
            ),
            "large_share_for_80pct_gap": scores.large_share_to_recover(
                accuracy, share, accuracy_small=accuracy_small,
                accuracy_large=accuracy_large, fraction=0.8,
            ),
            "cost_saved_at_95pct_of_large": scores.cost_saved_at(
                accuracy, spend, accuracy_large=accuracy_large,
                large_cost=float(grid.scheme.large.mean()),
            ),
            "accuracy": accuracy.round(5).tolist(),
            "large_share": share.round(5).tolist(),
            "spend_per_query": spend.tolist(),
        }  # fmt: skip
    return {"budgets": budgets.tolist(), "policies": policies}


def normalised_gains(result: dict[str, Any]) -> dict[str, float | None]:
    """Per grid of one pair's result: margin sampling's normalised gain over random routing."""
    gains = {}
    for grid_name, grid in result["grids"].items():
        policies = grid["policies"]
        if {"margin", "random", "oracle"} <= policies.keys():
            gains[grid_name] = scores.normalised_gain(
                policies["margin"]["auc"], policies["random"]["auc"], policies["oracle"]["auc"]
            )
    return gains


def mean_normalised_gain(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per grid: the mean normalised gain over the pairs where it is defined, and their count."""
    per_grid: dict[str, list[float | None]] = defaultdict(list)
    for result in results:
        for grid_name, gain in normalised_gains(result).items():
            per_grid[grid_name].append(gain)
    summary = {}
    for grid_name, gains in per_grid.items():
        defined = [gain for gain in gains if gain is not None]
        summary[grid_name] = {
            "mean": float(np.mean(defined)) if defined else None,
            "pairs": len(defined),
            "pairs_without_gain": len(gains) - len(defined),
        }
    return summary


def average_over_tasks(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per grid and policy: the mean over tasks of the mean AUC over each task's pairs."""
    per_task: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for result in results:
        for grid_name, grid in result["grids"].items():
            for policy, values in grid["policies"].items():
                per_task[(grid_name, policy, result["task"])].append(values["auc"])
    averaged: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (grid_name, policy, _task), aucs in per_task.items():
        averaged[grid_name][policy].append(float(np.mean(aucs)))
    return {
        grid_name: {policy: float(np.mean(values)) for policy, values in policies.items()}
        for grid_name, policies in averaged.items()
    }
