"""The evaluation's outputs: a console table, a JSON file with every number, PNG curves."""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.evaluation.run import BASELINES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

POLICY_ORDER = ("margin", "random", "oracle", *BASELINES)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def print_table(results: dict[str, Any], console: Console) -> None:
    """The signals, the AUC of every policy per pair, then margin sampling's own scores.

    Two tables, each under 100 columns: the pair's names wrap within their cell where the
    console is narrower than a table."""
    if results["protocol"] == "paper":
        print_paper_tables(results, console)
        return
    alternatives = {
        name: description
        for pair in results["pairs"]
        for name, description in pair["signals"].items()
        if name != "margin"
    }
    for name, description in sorted(alternatives.items()):
        console.print(escape(f"Signal `{name}`: {description}"))
    settings = results["settings"]
    console.print(
        escape(
            "Protocol `service` (the service's own rule and guards, train rows left out). "
            f"Normalised AUC ({_reference(results)}; mean over seeds {settings['seeds']}, "
            f"W={settings['warmup']}):"
        )
    )
    console.print(auc_table(results))
    console.print(
        "Margin sampling on the same grid: its APGR; the share of queries on L that recovers "
        "50% and 80% of the S-L accuracy gap; the cost saved at 95% of L's accuracy; the "
        "other non-oracle policies it beats on AUC:"
    )
    console.print(margin_table(results))
    signals = sorted({(pair["task"], pair["signal"]) for pair in results["pairs"]})
    console.print(escape("Signal used by `margin`: " + "; ".join(f"{t}: {s}" for t, s in signals)))


def auc_table(results: dict[str, Any]) -> Table:
    """Per pair, the normalised AUC of the policies the first pair carries, in the paper's
    order; the last row averages over tasks."""
    policies = _table_policies(results)
    table = _pair_table(policies)
    for task, pairs in _pairs_by_task(results).items():
        _add_task_row(table, task)
        for pair in pairs:
            grid = pair["grids"][_reference(results)]["policies"]
            table.add_row(
                _pair_name(pair),
                *(f"{grid[p]['auc']:.3f}" if p in grid else "-" for p in policies),
            )
        table.add_section()
    averages = results["average_over_tasks"][_reference(results)]
    table.add_row("average over tasks", *(f"{averages[p]:.3f}" for p in policies), style="bold")
    return table


def margin_table(results: dict[str, Any]) -> Table:
    """Per pair, each model's accuracy alone and margin sampling's scores: APGR, the share
    of queries on L that recovers 50 % and 80 % of the S -> L accuracy gap, the cost it saves
    at 95 % of L's accuracy, and how many of the other non-oracle policies it beats on AUC."""
    policies = _table_policies(results)
    table = _pair_table(("acc S", "acc L", "APGR", "L 50%", "L 80%", "saved @95%", "beats"))
    for task, pairs in _pairs_by_task(results).items():
        _add_task_row(table, task)
        for pair in pairs:
            grid = pair["grids"][_reference(results)]["policies"]
            margin = grid["margin"]
            rivals = [p for p in policies if p not in {"margin", "oracle"} and p in grid]
            beaten = [p for p in rivals if margin["auc"] > grid[p]["auc"]]
            table.add_row(
                _pair_name(pair),
                f"{pair['accuracy_small']:.3f}",
                f"{pair['accuracy_large']:.3f}",
                _number(margin["apgr"]),
                _number(margin["large_share_for_50pct_gap"]),
                _number(margin["large_share_for_80pct_gap"]),
                _number(margin["cost_saved_at_95pct_of_large"], percent=True),
                f"{len(beaten)}/{len(rivals)}",
            )
        table.add_section()
    return table


def print_paper_tables(results: dict[str, Any], console: Console) -> None:
    """Under the original code's protocol: per pair, the AUCs on the reference grid and the
    normalised gain of margin sampling at each c_l, with the mean over pairs."""
    settings, reference = results["settings"], _reference(results)
    console.print(escape(
        f"Protocol `paper` ({settings['source']}). Normalised AUC ({reference}; mean over "
        f"seeds {settings['seeds']}); signal: {settings['signal']}:"
    ))  # fmt: skip
    table = _pair_table(("margin", "random", "oracle", "acc S", "acc L", "gain"))
    gains = _pair_table([f"c_l/c_s={k}" for k in settings["cost_ratios"]])
    grid_names = list(results["pairs"][0]["grids"])
    for task, pairs in _pairs_by_task(results).items():
        _add_task_row(table, task)
        _add_task_row(gains, task)
        for pair in pairs:
            grid = pair["grids"][reference]
            table.add_row(
                _pair_name(pair),
                *(f"{grid['policies'][p]['auc']:.3f}" for p in ("margin", "random", "oracle")),
                f"{pair['accuracy_small']:.3f}",
                f"{pair['accuracy_large']:.3f}",
                _number(grid["normalised_gain"], digits=3),
            )
            gains.add_row(
                _pair_name(pair),
                *(_number(pair["grids"][g]["normalised_gain"], digits=3) for g in grid_names),
            )
        table.add_section()
        gains.add_section()
    means = [results["mean_normalised_gain"][g] for g in grid_names]
    mean_gains = (_number(mean["mean"], digits=3) for mean in means)
    gains.add_row(f"mean over {means[0]['pairs']} pairs", *mean_gains, style="bold")
    console.print(table)
    console.print("Normalised gain (AUC_margin - AUC_random) / (AUC_oracle - AUC_random):")
    console.print(gains)


def _reference(results: dict[str, Any]) -> str:
    """The grid the tables and figures show: the protocol's reference grid."""
    reference: str = results["settings"]["reference_grid"]
    return reference


def _table_policies(results: dict[str, Any]) -> list[str]:
    first = results["pairs"][0]["grids"][_reference(results)]["policies"]
    return [p for p in POLICY_ORDER if p in first]


def _pair_table(number_columns: Sequence[str]) -> Table:
    """The pairs on the left under their task's row, the numbers right and never cut: a
    pair's name wraps (at its arrow first) where the console is narrower than the table."""
    table = Table()
    table.add_column("task / pair (small -> large)", min_width=16, overflow="fold")
    for column in number_columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def _add_task_row(table: Table, task: str) -> None:
    table.add_row(escape(task), *([""] * (len(table.columns) - 1)), style="bold")


def _pair_name(pair: dict[str, Any]) -> str:
    return escape(f"{pair['small']} -> {pair['large']}")


def plot_curves(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per task (each chain's widest-gap pair) and one for the task average."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {f"curves_{task}.png": figure for task, figure in task_figures(results).items()}
    figures["curves_average.png"] = average_figure(results)
    written = []
    for name, figure in figures.items():
        figure.savefig(out_dir / name, dpi=110)
        plt.close(figure)
        written.append(out_dir / name)
    return written


def task_figures(results: dict[str, Any]) -> dict[str, Figure]:
    """Per task, a panel per chain file with the pair of that chain whose accuracy gap between
    S and L is widest: the pair where the choice of policy matters most. Every pair's curves are
    in results.json; the titles say which pairs are drawn and how many there are."""
    plt = _pyplot()
    figures = {}
    for task, pairs in sorted(_pairs_by_task(results).items()):
        widest = _widest_pair_per_source(pairs)
        figure, axes = plt.subplots(1, len(widest), figsize=(6 * len(widest), 4.5), squeeze=False)
        for axis, pair in zip(axes[0], widest, strict=True):
            chain_pairs = sum(p["source"] == pair["source"] for p in pairs)
            why = "the only pair" if chain_pairs == 1 else f"widest S-L gap of {chain_pairs} pairs"
            _draw_pair(axis, pair, _policies(results), _reference(results))
            axis.set_title(
                f"{pair['small']} -> {pair['large']}\n{why} in {pair['source']}", fontsize=9
            )
        drawn = "its pair" if len(pairs) == 1 else f"{len(widest)} of its {len(pairs)} pairs"
        title = (
            f"{task}: accuracy-cost curves of {drawn} (every pair is in results.json); "
            f"signal: {widest[0]['signal']}"
        )
        figure.suptitle("\n".join(textwrap.wrap(title, 80 * len(widest))), fontsize=10)
        figure.tight_layout()
        figures[task] = figure
    return figures


def _draw_pair(axis: Any, pair: dict[str, Any], policies: list[str], reference: str) -> None:
    grid = pair["grids"][reference]
    for policy in policies:
        if policy in grid["policies"]:
            axis.plot(grid["budgets"], grid["policies"][policy]["accuracy"], label=policy)
    for tier, color in (("small", "grey"), ("large", "black")):
        accuracy = pair[f"accuracy_{tier}"]
        axis.axhline(accuracy, color=color, linestyle=":", linewidth=1,
                     label=f"{tier} model alone ({accuracy:.3f})")  # fmt: skip
    axis.set_xlabel(f"average budget per query ({reference})")
    axis.set_ylabel("accuracy")
    axis.legend(fontsize=7)


def average_figure(results: dict[str, Any]) -> Figure:
    """Each policy's curve averaged over each task's pairs, then over the tasks."""
    figure: Figure
    figure, axis = _pyplot().subplots(figsize=(7, 4.5))
    reference = _reference(results)
    budgets = results["pairs"][0]["grids"][reference]["budgets"]
    for policy in _policies(results):
        scored = (  # per task, the pairs that score this policy (as the table does)
            [p["grids"][reference]["policies"][policy]["accuracy"] for p in pairs
             if policy in p["grids"][reference]["policies"]]
            for pairs in _pairs_by_task(results).values()
        )  # fmt: skip
        task_means = [np.mean(curves, axis=0) for curves in scored if curves]
        if task_means:
            axis.plot(budgets, np.mean(task_means, axis=0), label=policy)
    axis.set_xlabel(f"average budget per query ({reference})")
    axis.set_ylabel("accuracy (mean over tasks and pairs)")
    axis.set_title(f"All {len(results['pairs'])} pairs: the mean over each task's pairs, "
                   "then over tasks", fontsize=10)  # fmt: skip
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - optional extra

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _pairs_by_task(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in results["pairs"]:
        by_task[pair["task"]].append(pair)
    return by_task


def _policies(results: dict[str, Any]) -> list[str]:
    """The paper's policies first, then any extra signals the records carry."""
    present = {
        policy
        for pair in results["pairs"]
        for policy in pair["grids"][_reference(results)]["policies"]
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


def _number(value: float | None, *, percent: bool = False, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}"
