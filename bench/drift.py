"""A sudden shift in traffic: the all-history threshold against the windowed one, and the alert.

    python bench/drift.py [--chains ../shared/bench/chains] [--chain llama_chain]
        [--model llama3.2-1b] [--first mmlu] [--second medmcqa] [--window 500]
        [--target 0.3] [--out bench/results/drift.json] [--plot docs/drift.png]

One scope sees the small model's recorded confidence on every row of ``--first`` (shuffled
with seed 0: steady traffic), then every row of ``--second`` (a new task arrives without a new
task label). Each decision runs as the small tier runs it (``services.threshold.decide`` in its
own transaction on a throwaway PostgreSQL database), once with TWOTIER_THRESHOLD_HISTORY=all
and once with =window, both with the drift alert at its default limits over N = ``--window``.

Reports, per mode: the realised escalation rate over the last N decisions of each task, the
rate of each block of 100 decisions after the splice, how many queries after the splice it takes
until every later block is within 0.1 of the target, and when the alert fired. Writes the JSON
and a PNG of the rolling rate.
"""

from __future__ import annotations

import argparse
import csv
import json
import uuid
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sqlalchemy import text
from threshold import QUERY_ROWS  # bench/threshold.py: queries written in bulk

from services import threshold
from services.db import session_scope
from services.migrate import upgrade_to_head
from services.tenants import create_tenant
from services.threshold_window import HistoryMode
from tests.throwaway_database import throwaway_database

CHAINS = Path(__file__).resolve().parents[2] / "shared/bench/chains"
ROLLING = 100  # decisions in the plotted rate
BLOCK = 100  # decisions per block after the splice
SETTLED = 0.1  # "back at the target": a block's rate within this of it (about 2 sigma at 100)
PAIR = "bench/small->bench/large"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=Path, default=CHAINS)
    parser.add_argument("--chain", default="llama_chain")
    parser.add_argument("--model", default="llama3.2-1b")
    parser.add_argument("--first", default="mmlu")
    parser.add_argument("--second", default="medmcqa")
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=Path("bench/results/drift.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/drift.png"))
    args = parser.parse_args()

    first = _signal(args.chains, args.first, args.chain, args.model)
    second = _signal(args.chains, args.second, args.chain, args.model)
    stream = np.concatenate([first, second])
    runs = {}
    with throwaway_database(args.admin_url):
        upgrade_to_head()
        for mode in ("all", "window"):
            print(f"{mode}: {len(stream)} decisions ...", flush=True)
            runs[mode] = _run(stream, mode, args)
    results: dict[str, Any] = {
        "stream": {
            "chain": args.chain,
            "model": args.model,
            "first": {"task": args.first, "queries": len(first)},
            "second": {"task": args.second, "queries": len(second)},
            "signal": "the small model's recorded confidence (conf_raw)",
        },
        "target_escalation_rate": args.target,
        "window": args.window,
        "warmup": args.warmup,
        "modes": {
            mode: _summary(run, splice=len(first), target=args.target, window=args.window)
            for mode, run in runs.items()
        },
    }
    _print(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _plot(runs, results, args.plot)
    print(f"wrote {args.out} and {args.plot}")


def _signal(chains: Path, task: str, chain: str, model: str) -> np.ndarray:
    """Every row's recorded confidence, shuffled (seed 0); -inf as the lowest finite value."""
    with (chains / f"{task}__{chain}.csv").open(newline="") as handle:
        values = np.array([float(row[f"{model}.conf_raw"]) for row in csv.DictReader(handle)])
    finite = values[np.isfinite(values)]
    values = np.where(np.isfinite(values), values, finite.min())
    return values[np.random.default_rng(0).permutation(len(values))]


def _run(stream: np.ndarray, mode: HistoryMode, args: argparse.Namespace) -> dict[str, Any]:
    with session_scope() as session:
        tenant_id = create_tenant(
            session, name=f"drift-{mode}-{uuid.uuid4().hex[:6]}", target_escalation_rate=0.3
        ).tenant.id
        query_ids = list(
            session.scalars(text(QUERY_ROWS), {"tenant": tenant_id, "count": len(stream)})
        )
    rule = threshold.HistoryRule(history=mode, window=args.window)
    escalated, alerts, psi, states = [], [], [], []
    for t, (query_id, margin) in enumerate(zip(query_ids, stream, strict=True)):
        with session_scope() as session:
            decision = threshold.decide(
                session, tenant_id=tenant_id, model_pair=PAIR, task_label="spliced",
                query_id=query_id, margin=float(margin), target_escalation_rate=args.target,
                warmup=args.warmup, rule=rule,
            )  # fmt: skip
        escalated.append(decision.escalate)
        psi.append(decision.drift.psi if decision.drift else None)
        states.append(decision.drift_state)
        if decision.drift_detected:
            alerts.append(t)
    return {"escalated": np.array(escalated), "alerts": alerts, "psi": psi, "states": states}


def _summary(run: dict[str, Any], *, splice: int, target: float, window: int) -> dict[str, Any]:
    escalated = run["escalated"]
    first, second = escalated[:splice], escalated[splice:]
    blocks = [float(second[i : i + BLOCK].mean()) for i in range(0, len(second), BLOCK)]
    off = [i for i, rate in enumerate(blocks) if abs(rate - target) > SETTLED]
    # From the splice, the queries until every later block of BLOCK decisions is on target.
    settled = BLOCK * (off[-1] + 1) if off else 0
    return {
        "realised_rate_last_n_of_first": round(float(first[-window:].mean()), 4),
        "realised_rate_last_n_of_second": round(float(second[-window:].mean()), 4),
        "rate_per_block_after_splice": [round(rate, 3) for rate in blocks],
        "queries_after_splice_to_settle": settled if settled < len(second) else None,
        "alerts": run["alerts"],
        "alerts_before_splice": [t for t in run["alerts"] if t < splice],
        "first_alert_after_splice": next((t - splice for t in run["alerts"] if t >= splice), None),
        "drift_at_end": run["states"][-1],
    }


def _rolling(escalated: np.ndarray) -> np.ndarray:
    """The escalation rate over the last ROLLING decisions (fewer at the start)."""
    sums = np.cumsum(escalated, dtype=float)
    counts = np.minimum(np.arange(1, len(escalated) + 1), ROLLING)
    shifted = np.concatenate([np.zeros(ROLLING), sums[:-ROLLING]])
    return (sums - shifted[: len(sums)]) / counts


def _print(results: dict[str, Any]) -> None:
    stream = results["stream"]
    print(
        f"{stream['first']['task']} ({stream['first']['queries']}) then "
        f"{stream['second']['task']} ({stream['second']['queries']}), {stream['model']}, "
        f"target {results['target_escalation_rate']}, N = {results['window']}"
    )
    for mode, summary in results["modes"].items():
        print(f"  {mode:>6}: {json.dumps(summary)}")


def _plot(runs: dict[str, dict[str, Any]], results: dict[str, Any], path: Path) -> None:
    splice = results["stream"]["first"]["queries"]
    target = results["target_escalation_rate"]
    figure, axes = plt.subplots(figsize=(9, 4))
    for mode, run in runs.items():
        label = "all history (the paper)" if mode == "all" else f"last {results['window']} margins"
        (line,) = axes.plot(_rolling(run["escalated"]), label=label, linewidth=1.2)
        for t in run["alerts"]:
            axes.axvline(t, color=line.get_color(), linestyle=":", linewidth=1)
    axes.axhline(target, color="black", linewidth=0.8, label=f"target {target}")
    axes.axvline(splice, color="grey", linestyle="--", linewidth=1, label="traffic changes")
    stream = results["stream"]
    axes.set_title(
        f"{stream['first']['task']} then {stream['second']['task']} ({stream['model']}): "
        f"escalation rate over the last {ROLLING} decisions; dotted: drift alert"
    )
    axes.set_xlabel("query")
    axes.set_ylabel("escalation rate")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
