"""Every escalation rule against the paper's baselines: normalised gain per pair and its mean.

    python bench/rules.py [PATH] [--out bench/results/rules.json] [--no-baselines]

PATH defaults to ../shared/bench/chains. For each task x pair, at fixed costs c_s = 1 and
c_l = k for k in 10, 20, 50, over budgets B in [c_s, c_l] (100 points, seeds 0, 1, 2), under
the service's protocol (``services.evaluation.simulate.Stream``: the budget guards of
``twotier eval``, the scored rows only), the normalised gain of a rule is

    (AUC_rule - AUC_random) / (AUC_oracle - AUC_random)

Rules (every one here is reported, winners and losers):

- ``threshold``: the service's rule as it is for a tenant with a target rate (the margin's
  running p(B)-quantile, warm-up W).
- ``threshold+large_alone``: the service's rule for a tenant with a budget per query: the same,
  and a query goes to L alone whenever the budget's surplus pays for it
  (``services.policy.pacing``).
- ``margin+prior+large_alone``: the threshold on P(small right | margin, query, small answer),
  a logistic regression fitted on the train split (earlier traffic of the scope; no label of
  the scored stream), with the large-alone step.
- ``margin+task_p+large_alone``: the threshold with the large-alone step, except where the train
  split says L is no more accurate than S: there every query stays on S.
- ``frugalgpt``, ``routing``, ``hybridllm``: the trained routers of ``twotier eval``, as they are
  and, for FrugalGPT (a cascade), with the large-alone step.

The first run embeds every query and small answer (minutes, cached under TWOTIER_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.evaluation import scores
from services.evaluation.baselines import EMBEDDING_MODEL, Embedder, baseline_scores
from services.evaluation.data import PairData, read_records
from services.evaluation.simulate import BudgetGrid, CostScheme, Stream
from services.policy.offline import OFFLINE_POLICIES, THRESHOLD, OfflinePolicy, threshold_rule
from services.settings import get_settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/chains"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/rules.json"
COST_RATIOS = (10, 20, 50)
SEEDS = [0, 1, 2]
WARMUP = 20

FloatArray = npt.NDArray[np.float64]
CASCADE_ALONE = OfflinePolicy("cascade", "recorded", threshold_rule, large_alone=True)
# name -> (policy, which signal it reads: "margin", a trained router's or the prior's)
Rule = tuple[OfflinePolicy, str]


def rules(with_trained: bool) -> dict[str, Rule]:
    found: dict[str, Rule] = {
        "threshold": (OFFLINE_POLICIES[THRESHOLD], "margin"),
        "threshold+large_alone": (CASCADE_ALONE, "margin"),
        "margin+task_p+large_alone": (CASCADE_ALONE, "margin_task_p"),
    }
    if with_trained:
        found["margin+prior+large_alone"] = (CASCADE_ALONE, "prior")
        for name in ("frugalgpt", "routing", "hybridllm"):
            found[name] = (OFFLINE_POLICIES[name], name)
        found["frugalgpt+large_alone"] = (CASCADE_ALONE, "frugalgpt")
    return found


def finite(values: FloatArray) -> FloatArray:
    """The signal with -inf (a probability that rounded to 0) below every finite value."""
    lowest = values[np.isfinite(values)].min(initial=0.0)
    out: FloatArray = np.where(np.isfinite(values), values, lowest - 1.0)
    return out


def prior_signal(pair: PairData, embedder: Embedder) -> FloatArray:
    """P(small right | margin, query, small answer), fitted on the train split."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - the eval extra

    margin = finite(pair.signals["margin"])
    train = pair.is_train
    scale = margin[train].std() or 1.0
    features = np.hstack(
        [
            ((margin - margin[train].mean()) / scale)[:, None],
            embedder.embed(pair.query_texts, what="queries"),
            embedder.embed(pair.small_answers, what="small answers"),
        ]
    )
    labels = pair.small_correct
    if labels[train].all() or not labels[train].any():
        return margin[pair.scored]  # one class on the train split: nothing to learn
    model = LogisticRegression(max_iter=2000)
    model.fit(features[train], labels[train])
    scored: FloatArray = model.predict_proba(features[pair.scored])[:, 1]
    return scored


def task_p_signal(pair: PairData) -> FloatArray | None:
    """The margin, or None (stay on S) where the train split has L no better than S."""
    train = pair.is_train
    if pair.large_correct[train].mean() <= pair.small_correct[train].mean():
        return None
    return finite(pair.signals["margin"])[pair.scored]


def evaluate_pair(pair: PairData, embedder: Embedder | None) -> dict[str, Any]:
    scored = pair.scored
    n = int(scored.sum())
    grids = [
        BudgetGrid(CostScheme(f"c_l/c_s={k}", np.ones(n), np.full(n, float(k))), "c_l")
        for k in COST_RATIOS
    ]
    stream = Stream(
        small_correct=pair.small_correct[scored],
        large_correct=pair.large_correct[scored],
        grids=grids,
        seeds=SEEDS,
        warmup=WARMUP,
    )
    signals: dict[str, FloatArray | None] = {
        "margin": finite(pair.signals["margin"])[scored],
        "margin_task_p": task_p_signal(pair),
    }
    if embedder is not None:
        signals.update(baseline_scores(pair, embedder))
        signals["prior"] = prior_signal(pair, embedder)

    def auc_of(policy: OfflinePolicy, signal: FloatArray | None) -> list[float]:
        curves = stream.run(
            policy.wants(stream, signal), policy.mode, large_alone=policy.large_alone
        )
        return [scores.normalised_auc(g.budgets, curves.accuracy[i]) for i, g in enumerate(grids)]

    random = auc_of(OFFLINE_POLICIES["random"], None)
    oracle = auc_of(OFFLINE_POLICIES["oracle"], None)
    small_only = float(stream.small_correct.mean())
    gains: dict[str, list[float]] = {}
    for name, (policy, signal_name) in rules(embedder is not None).items():
        signal = signals[signal_name]
        aucs = [small_only] * len(grids) if signal is None else auc_of(policy, signal)
        gains[name] = [
            (auc - low) / (high - low) for auc, low, high in zip(aucs, random, oracle, strict=True)
        ]
    return {
        "task": pair.task,
        "small": pair.small,
        "large": pair.large,
        "queries_scored": n,
        "auc_random": dict(zip(map(str, COST_RATIOS), random, strict=True)),
        "auc_oracle": dict(zip(map(str, COST_RATIOS), oracle, strict=True)),
        "gain": {
            name: dict(zip(map(str, COST_RATIOS), values, strict=True))
            for name, values in gains.items()
        },
    }


def mean_gains(pairs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    names = pairs[0]["gain"]
    return {
        name: {
            str(k): float(np.mean([pair["gain"][name][str(k)] for pair in pairs]))
            for k in COST_RATIOS
        }
        for name in names
    }


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-baselines", action="store_true", help="Skip the embeddings.")
    args = parser.parse_args(argv)
    embedder = None if args.no_baselines else Embedder(get_settings().cache_dir)
    pairs = []
    for pair in read_records(Path(args.path)):
        pairs.append(evaluate_pair(pair, embedder))
        emit(f"{pair.name}: " + ", ".join(
            f"{name} {values['10']:.3f}" for name, values in pairs[-1]["gain"].items()
        ))  # fmt: skip
    means = mean_gains(pairs)
    results: dict[str, Any] = {
        "settings": {
            "protocol": "service (twotier eval's Stream), B in [c_s, c_l], fixed costs",
            "seeds": SEEDS,
            "warmup": WARMUP,
            "cost_ratios": list(COST_RATIOS),
            "gain": "(AUC - AUC_random) / (AUC_oracle - AUC_random), per pair",
            "auxiliary_model": None if embedder is None else EMBEDDING_MODEL,
        },
        "pairs": pairs,
        "mean_over_pairs": means,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    emit(f"\nnormalised gain, mean over {len(pairs)} pairs:")
    emit(f"{'rule':28s}" + "".join(f"  k={k:<5d}" for k in COST_RATIOS))
    for name, values in means.items():
        emit(f"{name:28s}" + "".join(f"  {values[str(k)]:.3f}  " for k in COST_RATIOS))
    emit(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
