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
- ``threshold_random_ties``: the threshold on the confidence with its ties broken at random
  (a draw below the gaps between distinct values), so that tied values at the threshold
  escalate in proportion instead of not at all; alone and with the large-alone step.
- ``threshold+paced N=...``: the service's rule under ``TWOTIER_BUDGET_PACING_QUERIES=N``
  (``services.policy.pacing``): the threshold at p(B) plus what earlier queries left unspent,
  spread over the next N queries, and L alone only when B >= c_l; N = 100 and two others.
- ``threshold+paced N=100+large_alone``: the same, and L alone whenever the surplus pays it
  (bench/online_rules.py).
- ``agreement+large_alone``: the threshold on P(the two tiers agree | confidence, answer length,
  query length), learned online from the column's escalated queries (bench/online_rules.py).
- ``reference: stream p where L<=S``: not a candidate, it reads the scored stream's labels:
  where L is no more accurate than S on the scored stream, the threshold at the paper code's
  fixed p = min((1 - acc_S) / 2, 0.6) and no L alone (its step 4); elsewhere
  ``threshold+large_alone``. It measures how much of the paper protocol's lead is that step.

Besides the gains, ``spend_over_budget`` is each rule's realised spend per query over B,
averaged over the budgets above c_s (1: the rule spends its whole budget).

The first run embeds every query and small answer (minutes, cached under TWOTIER_CACHE_DIR);
``--no-baselines`` skips the embeddings and the rules that need them (about 15 minutes on two
shared cores, most of it the online learner's refits).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from online_rules import Agreement, PacedWithSurplus, chain_learner  # bench/online_rules.py

from services.evaluation import scores
from services.evaluation.baselines import EMBEDDING_MODEL, Embedder, baseline_scores
from services.evaluation.data import PairData, read_records
from services.evaluation.simulate import BudgetGrid, CostScheme, Stream
from services.policy.offline import (
    OFFLINE_POLICIES,
    THRESHOLD,
    OfflinePolicy,
    StepRule,
    streaming_escalations,
    threshold_rule,
)
from services.settings import get_settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/bench/chains"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/rules.json"
COST_RATIOS = (10, 20, 50)
REFERENCE = "reference: stream p where L<=S"  # reads the scored stream's labels
PACING_QUERIES = (100, 50, 400)  # N of budget pacing: the service's option, then two others
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
        "threshold_random_ties": (OFFLINE_POLICIES[THRESHOLD], "margin_random_ties"),
        "threshold_random_ties+large_alone": (CASCADE_ALONE, "margin_random_ties"),
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


def random_ties(signal: FloatArray) -> FloatArray:
    """A draw per query below a tenth of the smallest gap between distinct values: added to
    the signal, it breaks ties at random and keeps every other order."""
    distinct = np.unique(signal)
    gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
    noise: FloatArray = np.random.default_rng(0).random(len(signal)) * gap / 10
    return noise


def reference_auc(
    stream: Stream, margin: FloatArray, auc_of: Callable[..., list[float]]
) -> list[float]:
    """The paper code's step 4 on the service's stream, with the stream's own labels."""
    accuracy_small = float(stream.small_correct[0].mean())
    if stream.large_correct[0].mean() > accuracy_small:
        return auc_of(CASCADE_ALONE, margin, REFERENCE)
    fixed = np.full(len(stream.grid_rates("cascade")), min((1 - accuracy_small) / 2, 0.6))
    wants = np.stack(
        [streaming_escalations(margin[order], fixed, stream.warmup) for order in stream.orders]
    ).reshape(-1, stream.n)
    return auc_of(OfflinePolicy("cascade", "recorded", lambda *_: wants), None, REFERENCE)


def evaluate_pair(
    pair: PairData, embedder: Embedder | None, chains: Path | None = None
) -> dict[str, Any]:
    """``chains``: the folder of the chain files, where ``pair`` is of one (the agreement
    rule reads each query's token counts and the large model's answer from it)."""
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
    margin = signals["margin"]
    assert margin is not None
    signals["margin_random_ties"] = margin + random_ties(margin)
    if embedder is not None:
        signals.update(baseline_scores(pair, embedder))
        signals["prior"] = prior_signal(pair, embedder)
    spends: dict[str, list[float]] = {}

    def aucs(name: str, accuracy: FloatArray, spend: FloatArray) -> list[float]:
        spends[name] = [float(np.mean(spend[i, 1:] / g.budgets[1:])) for i, g in enumerate(grids)]
        return [scores.normalised_auc(g.budgets, accuracy[i]) for i, g in enumerate(grids)]

    def auc_of(policy: OfflinePolicy, signal: FloatArray | None, name: str = "") -> list[float]:
        curves = stream.run(
            policy.wants(stream, signal), policy.mode, large_alone=policy.large_alone
        )
        return aucs(name, curves.accuracy, curves.spend)

    random = auc_of(OFFLINE_POLICIES["random"], None)
    oracle = auc_of(OFFLINE_POLICIES["oracle"], None)
    small_only = float(stream.small_correct.mean())
    gains: dict[str, list[float]] = {}
    found: dict[str, list[float]] = {}
    for name, (policy, signal_name) in rules(embedder is not None).items():
        signal = signals[signal_name]
        found[name] = [small_only] * len(grids) if signal is None else auc_of(policy, signal, name)
    step_rules: dict[str, StepRule] = {
        f"threshold+paced N={window}": stream.paced_threshold(margin, window)
        for window in PACING_QUERIES
    }
    step_rules["threshold+paced N=100+large_alone"] = PacedWithSurplus(
        stream, margin, budget=stream.budget, large_cost=stream.large_cost_expected, window=100
    )
    if chains is not None:
        learner = chain_learner(pair, chains, finite(pair.signals["margin"]))
        step_rules["agreement+large_alone"] = Agreement(stream, margin, learner)
    found[REFERENCE] = reference_auc(stream, margin, auc_of)
    for name, step_rule in step_rules.items():
        curves = stream.run(step_rule, "cascade", large_alone=True)
        found[name] = aucs(name, curves.accuracy, curves.spend)
    for name, values in found.items():
        gains[name] = [
            (auc - low) / (high - low)
            for auc, low, high in zip(values, random, oracle, strict=True)
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
        "spend_over_budget": {
            name: dict(zip(map(str, COST_RATIOS), values, strict=True))
            for name, values in spends.items()
            if name
        },
    }


def mean_gains(pairs: list[dict[str, Any]], what: str = "gain") -> dict[str, dict[str, float]]:
    """Each rule's mean over the pairs that have it (a rule that stays on S spends no
    escalation, so it has no spend figure there)."""
    names = dict.fromkeys(name for pair in pairs for name in pair[what])
    return {
        name: {
            str(k): float(np.mean([p[what][name][str(k)] for p in pairs if name in p[what]]))
            for k in COST_RATIOS
        }
        for name in names
    }


def task_gains(pairs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per task, each rule's mean gain over the task's pairs."""
    tasks = sorted({pair["task"] for pair in pairs})
    return {task: mean_gains([p for p in pairs if p["task"] == task]) for task in tasks}


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--no-baselines", action="store_true", help="Skip the embeddings.")
    args = parser.parse_args(argv)
    embedder = None if args.no_baselines else Embedder(get_settings().cache_dir)
    pairs = []
    path = Path(args.path)
    for pair in read_records(path):
        chains = path if path.is_dir() and pair.source.endswith("_chain.csv") else None
        pairs.append(evaluate_pair(pair, embedder, chains))
        emit(f"{pair.name}: " + ", ".join(
            f"{name} {values['10']:.3f}" for name, values in pairs[-1]["gain"].items()
        ))  # fmt: skip
    means = mean_gains(pairs)
    spend = mean_gains(pairs, "spend_over_budget")
    per_task = task_gains(pairs)
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
        "mean_over_pairs_by_task": per_task,
        "spend_over_budget_mean": spend,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    emit(f"\nnormalised gain, mean over {len(pairs)} pairs:")
    emit(
        f"{'rule':34s}" + "".join(f"  k={k:<5d}" for k in COST_RATIOS)
        + "".join(f"  {task[:8]:8s}" for task in per_task) + "  spend/B k=10"
    )  # fmt: skip
    for name, values in means.items():
        emit(
            f"{name:34s}" + "".join(f"  {values[str(k)]:.3f}  " for k in COST_RATIOS)
            + "".join(f"  {per_task[task][name]['10']:+.3f}  " for task in per_task)
            + (f"  {spend[name]['10']:.3f}" if name in spend else "")
        )  # fmt: skip
    emit(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
