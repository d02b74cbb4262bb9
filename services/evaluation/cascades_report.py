"""``twotier eval --cascades``: every cascade of two or more of a chain's models, the best of each
length against the best pair at equal budgets (services/evaluation/cascades.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from services.evaluation.cascades import compare, read_chain

CHAIN_FILES = "*__*_chain.csv"


def evaluate_cascades(
    paths: list[Path], *, seeds: list[int], warmup: int, console: Console
) -> dict[str, Any]:
    """Every chain file under ``paths``, compared; progress to ``console``."""
    files = sorted(
        file for path in paths for file in (path.glob(CHAIN_FILES) if path.is_dir() else [path])
    )
    if not files:
        raise ValueError(f"no recorded chains ({CHAIN_FILES}) in {', '.join(map(str, paths))}")
    started = time.monotonic()
    results = []
    for file in files:
        console.print(f"{file.name} ...")
        results.append(compare(read_chain(file), seeds=seeds, warmup=warmup))
    return {
        "seeds": seeds,
        "warmup": warmup,
        "costs": "token-priced, as recorded (USD per call)",
        "budget_range": "the cheapest model alone to the dearest alone, 50 budgets",
        "rule": "equal escalation rate q at every stage, c_1 + q c_2 + q^2 c_3 + ... = B",
        "seconds": round(time.monotonic() - started, 1),
        "tasks": results,
        "mean_best_auc_by_tiers": _mean_best(results),
    }


def _best(result: dict[str, Any], size: int) -> dict[str, Any]:
    return max((c for c in result["cascades"] if len(c["tiers"]) == size), key=lambda c: c["auc"])


def _sizes(result: dict[str, Any]) -> list[int]:
    return sorted({len(c["tiers"]) for c in result["cascades"]})


def _mean_best(results: list[dict[str, Any]]) -> dict[str, float]:
    sizes = sorted({size for result in results for size in _sizes(result)})
    return {
        str(size): float(np.mean([_best(r, size)["auc"] for r in results if size in _sizes(r)]))
        for size in sizes
    }


def print_cascades(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="The best cascade of each length vs the best pair (AUC at equal budgets)")
    for name in ("task", "chain", "tiers", "AUC", "vs pair"):
        table.add_column(name, justify="right" if name in {"tiers", "AUC", "vs pair"} else "left")
    table.add_column("cascade", overflow="fold")
    for result in summary["tasks"]:
        pair = _best(result, 2)["auc"]
        rows = [(str(size), _best(result, size)) for size in _sizes(result)]
        rows.append(("3 hindsight", result["best_three_tier_split_in_hindsight"]))
        for label, row in rows:
            table.add_row(
                result["task"], result["chain"], label, f"{row['auc']:.4f}",
                f"{row['auc'] - pair:+.4f}", " -> ".join(row["tiers"]),
            )  # fmt: skip
        for middle in result["middle_tiers"]:
            table.add_row(
                result["task"], result["chain"], "3", f"{middle['auc']:.4f}",
                f"{middle['gain_over_pair']:+.4f}", f"best pair, {middle['middle']} between",
            )  # fmt: skip
        table.add_section()
    console.print(table)
    means = ", ".join(
        f"{tiers} tiers {auc:.4f}" for tiers, auc in summary["mean_best_auc_by_tiers"].items()
    )
    console.print(f"Mean over chains of the best AUC: {means}")


def plot_cascades(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional extra

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt  # noqa: PLC0415

    columns = 4
    rows = -(-len(results) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(16, 3.6 * rows), squeeze=False)
    for axis, result in zip(axes.ravel(), results, strict=False):
        budgets = np.array(result["budgets"]) * 1e6
        for size in _sizes(result):
            best = _best(result, size)
            axis.plot(budgets, best["accuracy"], label=f"{size} tiers, AUC {best['auc']:.3f}")
        axis.set_title(f"{result['task']}, {result['chain']}", fontsize=9)
        axis.set_xlabel("budget per query (USD per million queries)", fontsize=8)
        axis.set_ylabel("accuracy", fontsize=8)
        axis.legend(fontsize=7, loc="lower right")
    for axis in axes.ravel()[len(results) :]:
        axis.set_visible(False)
    figure.suptitle("The best cascade of each length at equal budgets (recorded chains)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
