"""Margin sampling's normalised gain under both protocols of `twotier eval`, on the same chains.

    python bench/eval_protocols.py [CHAINS] [--out bench/results/eval_protocols.json]

CHAINS defaults to ../shared/bench/chains. The normalised gain is
(AUC_margin - AUC_random) / (AUC_oracle - AUC_random), each AUC over B in [c_s, c_l] with
c_s = 1 and c_l = k. `paper` is the original code's evaluation, step for step; `service` is the
service's own rule on the test rows (`--no-baselines`: the trained routers do not enter the
gain). Prints every (task, pair, k) under `paper`, then the mean over pairs per k under each,
then how far each of the original code's steps moves `paper`: the protocol with that one step
done as the service protocol does it (mean normalised gain, mean and largest |change| of margin
sampling's AUC over the pairs).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.evaluation import paper_protocol
from services.evaluation.data import read_records
from services.evaluation.paper_protocol import ALL_STEPS, Steps
from services.evaluation.run import PROTOCOLS, EvalOptions, evaluate, normalised_gains

DEFAULT_CHAINS = Path(__file__).resolve().parents[2] / "shared/bench/chains"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/eval_protocols.json"
COST_RATIOS = (10, 20, 50)
# Each of the original code's steps that the service protocol does otherwise, one at a time.
DEPARTURES = {
    "no L alone (step 6)": replace(ALL_STEPS, large_alone=False),
    "no fixed p where L <= S (step 4)": replace(ALL_STEPS, quirk=False),
    "unrounded signal (step 3)": replace(ALL_STEPS, rounded_signal=False),
    "default_rng orders (step 2)": replace(ALL_STEPS, legacy_orders=False),
    "all four": Steps(False, False, False, False),
}


def grid(k: int) -> str:
    return f"c_l/c_s={k}, B in [c_s, c_l]"


def cases(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per pair and k: the three AUCs, each model's accuracy alone, and the normalised gain."""
    rows = []
    for pair in results["pairs"]:
        gains = normalised_gains(pair)
        for k in COST_RATIOS:
            policies = pair["grids"][grid(k)]["policies"]
            rows.append({
                "task": pair["task"], "source": pair["source"],
                "small": pair["small"], "large": pair["large"], "k": k,
                **{f"{name}_auc": policies[name]["auc"] for name in ("margin", "random", "oracle")},
                "accuracy_small": pair["accuracy_small"], "accuracy_large": pair["accuracy_large"],
                "normalised_gain": gains[grid(k)],
            })  # fmt: skip
    return rows


def departures(chains: Path) -> dict[str, Any]:
    """The paper protocol with one step done otherwise: mean gain per k, and margin sampling's
    AUC change against the protocol over every pair and k."""
    pairs = read_records(chains)
    reference = [paper_protocol.evaluate_pair(pair) for pair in pairs]
    rows: dict[str, Any] = {}
    for name, steps in {"none (the protocol)": ALL_STEPS, **DEPARTURES}.items():
        results = [paper_protocol.evaluate_pair(pair, steps) for pair in pairs]
        changes = [
            abs(result["grids"][grid(k)]["policies"]["margin"]["auc"]
                - base["grids"][grid(k)]["policies"]["margin"]["auc"])
            for result, base in zip(results, reference, strict=True)
            for k in COST_RATIOS
        ]  # fmt: skip
        rows[name] = {
            "gain": {
                str(k): float(np.mean([r["grids"][grid(k)]["normalised_gain"] for r in results]))
                for k in COST_RATIOS
            },
            "mean_auc_change": float(np.mean(changes)),
            "max_auc_change": float(np.max(changes)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chains", nargs="?", type=Path, default=DEFAULT_CHAINS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    report: dict[str, Any] = {"chains": str(args.chains.resolve())}
    for protocol in PROTOCOLS:
        started = time.monotonic()
        results = evaluate([args.chains], EvalOptions(protocol=protocol, baselines=False))
        report[protocol] = {
            "seconds": round(time.monotonic() - started, 1),
            "settings": results["settings"],
            "mean_normalised_gain": {
                str(k): results["mean_normalised_gain"][grid(k)] for k in COST_RATIOS
            },
            "cases": cases(results),
        }
    print(f"{'task':9} {'small -> large':45} {'k':>3} {'margin':>7} {'random':>7} {'oracle':>7} "
          f"{'gain':>7}   (paper protocol)")  # fmt: skip
    for case in report["paper"]["cases"]:
        gain = case["normalised_gain"]
        print(
            f"{case['task']:9} {case['small'] + ' -> ' + case['large']:45} {case['k']:>3} "
            f"{case['margin_auc']:7.4f} {case['random_auc']:7.4f} {case['oracle_auc']:7.4f} "
            f"{'-' if gain is None else f'{gain:7.4f}':>7}"
        )
    print("\nmean normalised gain over pairs (pairs counted)")
    for k in COST_RATIOS:
        means = {p: report[p]["mean_normalised_gain"][str(k)] for p in PROTOCOLS}
        print(
            f"k = {k:2}: "
            + "; ".join(f"{p} {m['mean']:.4f} ({m['pairs']})" for p, m in means.items())
        )
    report["departures"] = departures(args.chains)
    print(f"\n{'paper, but':36} {'gain k=10':>9} {'k=20':>7} {'k=50':>7} {'mean |dAUC|':>11} "
          f"{'max |dAUC|':>10}")  # fmt: skip
    for name, row in report["departures"].items():
        print(f"{name:36} {row['gain']['10']:9.4f} {row['gain']['20']:7.4f} "
              f"{row['gain']['50']:7.4f} {row['mean_auc_change']:11.4f} "
              f"{row['max_auc_change']:10.4f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
