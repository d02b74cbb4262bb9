"""The evaluation's outputs: a console table, a JSON file with every number, PNG curves."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.evaluation.run import BASELINES, REFERENCE_GRID

POLICY_ORDER = ("margin", "random", "oracle", *BASELINES)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def print_table(results: dict[str, Any], console: Console) -> None:
    policies = [
        p for p in POLICY_ORDER if p in results["pairs"][0]["grids"][REFERENCE_GRID]["policies"]
    ]
    settings = results["settings"]
    table = Table(
        title=escape(
            f"Normalised AUC ({REFERENCE_GRID}; mean over seeds {settings['seeds']}, "
            f"W={settings['warmup']})"
        )
    )
    extra = ("margin APGR", "L share 50%/80%", "saved @95% L", "margin beats")
    for column in ("task", "pair", "acc S", "acc L", *policies, *extra):
        table.add_column(column, justify="left" if column in {"task", "pair"} else "right")
    for pair in results["pairs"]:
        grid = pair["grids"][REFERENCE_GRID]["policies"]
        margin = grid["margin"]
        rivals = [p for p in policies if p not in {"margin", "oracle"} and p in grid]
        beaten = [p for p in rivals if margin["auc"] > grid[p]["auc"]]
        table.add_row(
            pair["task"],
            f"{pair['small']} -> {pair['large']}",
            f"{pair['accuracy_small']:.3f}",
            f"{pair['accuracy_large']:.3f}",
            *(f"{grid[p]['auc']:.3f}" if p in grid else "-" for p in policies),
            _number(margin["apgr"]),
            f"{_number(margin['large_share_for_50pct_gap'])}/"
            f"{_number(margin['large_share_for_80pct_gap'])}",
            _number(margin["cost_saved_at_95pct_of_large"], percent=True),
            f"{len(beaten)}/{len(rivals)}",
        )
    averages = results["average_over_tasks"][REFERENCE_GRID]
    table.add_row("average", "over tasks", "", "", *(f"{averages[p]:.3f}" for p in policies),
                  "", "", "", "", style="bold")  # fmt: skip
    alternatives = {
        name: description
        for pair in results["pairs"]
        for name, description in pair["signals"].items()
        if name != "margin"
    }
    for name, description in sorted(alternatives.items()):
        console.print(f"Signal `{name}`: {description}")
    console.print(table)
    signals = sorted({(pair["task"], pair["signal"]) for pair in results["pairs"]})
    console.print("Signal used by `margin`: " + "; ".join(f"{t}: {s}" for t, s in signals))


def plot_curves(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per task (each chain's smallest -> largest pair) and one for the task average."""
    import matplotlib  # noqa: PLC0415 - optional extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in results["pairs"]:
        by_task[pair["task"]].append(pair)
    written = []
    for task, pairs in sorted(by_task.items()):
        widest = _widest_pair_per_source(pairs)
        figure, axes = plt.subplots(1, len(widest), figsize=(6 * len(widest), 4.5), squeeze=False)
        for axis, pair in zip(axes[0], widest, strict=True):
            grid = pair["grids"][REFERENCE_GRID]
            for policy in _policies(results):
                if policy in grid["policies"]:
                    axis.plot(grid["budgets"], grid["policies"][policy]["accuracy"], label=policy)
            axis.axhline(pair["accuracy_small"], color="grey", linestyle=":", linewidth=1)
            axis.axhline(pair["accuracy_large"], color="black", linestyle=":", linewidth=1)
            axis.set_title(f"{pair['small']} -> {pair['large']}", fontsize=10)
            axis.set_xlabel("average budget per query (c_s = 1, c_l = 20)")
            axis.set_ylabel("accuracy")
        axes[0][0].legend(fontsize=8)
        figure.suptitle(f"{task}: accuracy-cost curves (signal: {widest[0]['signal']})")
        figure.tight_layout()
        path = out_dir / f"curves_{task}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    written.append(_plot_average(results, by_task, out_dir, plt))
    return written


def _plot_average(
    results: dict[str, Any], by_task: dict[str, list[dict[str, Any]]], out_dir: Path, plt: Any
) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    budgets = results["pairs"][0]["grids"][REFERENCE_GRID]["budgets"]
    for policy in _policies(results):
        scored = (  # per task, the pairs that score this policy (as the table does)
            [p["grids"][REFERENCE_GRID]["policies"][policy]["accuracy"] for p in pairs
             if policy in p["grids"][REFERENCE_GRID]["policies"]]
            for pairs in by_task.values()
        )  # fmt: skip
        task_means = [np.mean(curves, axis=0) for curves in scored if curves]
        if task_means:
            axis.plot(budgets, np.mean(task_means, axis=0), label=policy)
    axis.set_xlabel("average budget per query (c_s = 1, c_l = 20)")
    axis.set_ylabel("accuracy (mean over tasks and pairs)")
    axis.set_title("All tasks and pairs of the recorded chains")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out_dir / "curves_average.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _policies(results: dict[str, Any]) -> list[str]:
    """The paper's policies first, then any extra signals the records carry."""
    present = {
        policy for pair in results["pairs"] for policy in pair["grids"][REFERENCE_GRID]["policies"]
    }
    return [p for p in POLICY_ORDER if p in present] + sorted(present - set(POLICY_ORDER))


def _widest_pair_per_source(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per chain file, the pair with the largest accuracy gap between S and L."""
    best: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        gap = pair["accuracy_large"] - pair["accuracy_small"]
        current = best.get(pair["source"])
        if current is None or gap > current["accuracy_large"] - current["accuracy_small"]:
            best[pair["source"]] = pair
    return [best[source] for source in sorted(best)]


def _number(value: float | None, *, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if percent else f"{value:.2f}"
