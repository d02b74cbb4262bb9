"""Cascades of 2, 3, 4 and 5 models against the best pair, at equal budgets, on the recorded chains.

    python bench/cascades.py [../shared/bench/chains] [--seeds 0,1,2] [--warmup 20]
        [--out bench/results/cascades.json] [--plot docs/eval/cascades.png]

For each task x chain, every ordered choice of its models (services/evaluation/cascades.py):
token-priced costs as recorded, budgets per query from the cheapest model alone to the dearest
alone, the stages' rates from the budget (equal rates), the service's threshold per stage.
Prints the best cascade of each length with its AUC (mean accuracy over the budget range), what a
middle tier adds to the best pair, and the best three-tier split of the budget in hindsight.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from services.evaluation.cascades import compare, read_chain

CHAINS = Path(__file__).resolve().parents[2] / "shared/bench/chains"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chains", type=Path, nargs="?", default=CHAINS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cascades.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/eval/cascades.png"))
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]

    started = time.monotonic()
    results = []
    for path in sorted(args.chains.glob("*__*_chain.csv")):
        print(f"{path.name} ...", flush=True)
        results.append(compare(read_chain(path), seeds=seeds, warmup=args.warmup))
    summary = {
        "seeds": seeds,
        "warmup": args.warmup,
        "costs": "token-priced, as recorded (USD per call)",
        "budget_range": "the cheapest model alone to the dearest alone, 50 budgets",
        "rule": "equal escalation rate q at every stage, c_1 + q c_2 + q^2 c_3 + ... = B",
        "seconds": round(time.monotonic() - started, 1),
        "tasks": results,
        "mean_best_auc_by_tiers": _mean_best(results),
    }
    _print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    _plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")


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


def _print(summary: dict[str, Any]) -> None:
    print(f"{'task':<9}{'chain':<16}{'tiers':>5}  {'AUC':>6}  {'vs best pair':>12}  cascade")
    for result in summary["tasks"]:
        pair = _best(result, 2)["auc"]
        for size in _sizes(result):
            best = _best(result, size)
            print(
                f"{result['task']:<9}{result['chain']:<16}{size:>5}  {best['auc']:.4f}  "
                f"{best['auc'] - pair:>+12.4f}  {' -> '.join(best['tiers'])}"
            )
        hindsight = result["best_three_tier_split_in_hindsight"]
        print(f"{'':<25}  {hindsight['auc']:.4f}  {hindsight['auc'] - pair:>+12.4f}  "
              "the best 3 tiers, the budget's split chosen in hindsight")  # fmt: skip
        for middle in result["middle_tiers"]:
            print(f"{'':<25}  {middle['auc']:.4f}  {middle['gain_over_pair']:>+12.4f}  "
                  f"best pair with {middle['middle']} between")  # fmt: skip
    print("mean best AUC by tiers:", json.dumps(summary["mean_best_auc_by_tiers"]))


def _plot(results: list[dict[str, Any]], path: Path) -> None:
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


if __name__ == "__main__":
    main()
