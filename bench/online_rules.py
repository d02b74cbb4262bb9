"""Escalation rules bench/rules.py compares with the service's, beyond those the service has:
a score learned online from the free labels of escalated queries, and budget pacing with the
large-alone step's surplus test as well.

- ``Agreement``: the threshold on P(the two tiers agree | features), a logistic regression
  refitted every ``REFIT_EVERY`` queries on the column's escalated queries so far (where both
  tiers answered, whether their answers agree is a label the service gets for free). Features:
  the recorded confidence, log(1 + the small answer's output tokens) and log(1 + the query's
  input tokens), standardised on the train split. Until the column has ``MIN_LABELS`` labels,
  half of each kind, the confidence's own threshold decides. Between refits the threshold is the
  p(B)-quantile of the history's scores under the last fit. L alone as the service's surplus
  test has it.
- ``PacedWithSurplus``: the service's paced threshold (``services.policy.offline
  .PacedThreshold``), and L alone whenever the surplus pays it, as without pacing.

Both are ``StepRule``s: ``services.evaluation.simulate.Stream.run`` asks them query by query
under its budget guards. Neither is a service option: neither wins (docs/evaluation.md).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.evaluation.data import PairData
from services.evaluation.simulate import Stream
from services.policy import pacing
from services.policy.offline import PacedThreshold
from services.threshold import quantile_index

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

REFIT_EVERY = 50
MIN_LABELS = 20
RIDGE = 1.0
NEWTON_STEPS = 6


def normalised_answer(task: str, text: str) -> str:
    """An answer reduced for comparison across models: gsm8k's last number; otherwise lower
    case, punctuation and articles dropped."""
    lowered = text.strip().lower()
    if task == "gsm8k":
        numbers = re.findall(r"-?\d[\d,]*\.?\d*", lowered)
        return numbers[-1].replace(",", "").rstrip(".") if numbers else lowered[-20:]
    words = re.sub(r"[^a-z0-9 ]", " ", lowered)
    return " ".join(re.sub(r"\b(the|a|an)\b", " ", words).split())


@dataclass(frozen=True)
class Learner:
    """What the agreement rule reads per scored query (in stream order before shuffling)."""

    features: FloatArray  # (n, d), the first column the constant 1
    agree: BoolArray  # (n,) the two tiers' answers agree


@cache
def _chain_rows(file: Path) -> list[dict[str, str]]:
    with file.open(newline="") as handle:
        return list(csv.DictReader(handle))


def chain_learner(pair: PairData, chains: Path, confidence: FloatArray) -> Learner:
    """The agreement rule's features and labels for a pair of a recorded chain: the confidence,
    log(1 + the small answer's output tokens), log(1 + the query's input tokens)."""
    rows = _chain_rows(chains / pair.source)
    out_tokens = np.array([float(row[f"{pair.small}.tok_out"]) for row in rows])
    in_tokens = np.array([float(row[f"{pair.small}.tok_in"]) for row in rows])
    raw = np.stack([confidence, np.log1p(out_tokens), np.log1p(in_tokens)], axis=1)
    train = pair.is_train
    scale = raw[train].std(axis=0)
    standard = (raw - raw[train].mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    features = np.hstack([np.ones((len(rows), 1)), standard])
    large_answers = [row[f"{pair.large}.answer"] for row in rows]
    agree = np.array([
        normalised_answer(pair.task, small) == normalised_answer(pair.task, large)
        for small, large in zip(pair.small_answers, large_answers, strict=True)
    ])  # fmt: skip
    return Learner(features[pair.scored], agree[pair.scored])


def _fit(
    features: FloatArray, labels: FloatArray, mask: FloatArray, weights: FloatArray
) -> FloatArray:
    """Ridge logistic regression per column by Newton's method, started from ``weights``.
    features (seeds-gathered) (C, t, d); labels, mask (C, t); weights (C, d)."""
    d = features.shape[-1]
    ridge = RIDGE * np.eye(d)
    ridge[0, 0] = 0.0  # the intercept is not shrunk
    for _ in range(NEWTON_STEPS):
        z = np.einsum("ctd,cd->ct", features, weights)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        gradient = np.einsum("ctd,ct->cd", features, mask * (labels - p)) - weights @ ridge
        curvature = mask * p * (1 - p)
        hessian = np.einsum("ctd,ct,cte->cde", features, curvature, features) + ridge
        weights = weights + np.linalg.solve(hessian, gradient[..., None])[..., 0]
    return weights


class Agreement:
    """The agreement rule as a ``StepRule`` for ``Stream.run``: per column its labels so far,
    its fit and its threshold; the large-alone step is the service's surplus test."""

    def __init__(self, stream: Stream, signal: FloatArray, learner: Learner) -> None:
        seed = stream.seed_of
        self.columns = len(seed)
        self.warmup = stream.warmup
        self.rates = stream.rates("cascade")
        self.budget = stream.budget
        self.large_cost = stream.large_cost_expected
        self.fallback = stream.threshold_wants(signal, "cascade")  # (C, n): the confidence's
        self.x = learner.features[stream.orders][seed]  # (C, n, d)
        self.agree = learner.agree[stream.orders][seed].astype(np.float64)
        self.labelled = np.zeros((self.columns, stream.n))
        self.weights = np.zeros((self.columns, self.x.shape[-1]))
        self.fitted = np.zeros(self.columns, dtype=bool)
        self.tau = np.zeros(self.columns)

    def wants(self, t: int, spent: FloatArray) -> BoolArray:
        """Refit on schedule; then below the score's threshold where fitted, else the
        confidence's own threshold."""
        if t >= self.warmup and t % REFIT_EVERY == 0:
            labels, seen = self.agree[:, :t], self.labelled[:, :t]
            ready = (
                ((seen * labels).sum(1) >= MIN_LABELS // 2)
                & ((seen * (1 - labels)).sum(1) >= MIN_LABELS // 2)
                & (seen.sum(1) >= MIN_LABELS)
            )
            if ready.any():
                idx = np.flatnonzero(ready)
                self.weights[idx] = _fit(self.x[idx, :t], labels[idx], seen[idx], self.weights[idx])
                self.fitted |= ready
                scores = np.einsum("ctd,cd->ct", self.x[:, :t], self.weights)
                scores.sort(axis=1)
                self.tau = scores[np.arange(self.columns), quantile_index(t, self.rates)]
        score = np.einsum("cd,cd->c", self.x[:, t], self.weights)
        chosen: BoolArray = np.where(
            self.fitted, (t + 1 > self.warmup) & (score < self.tau), self.fallback[:, t]
        )
        return chosen

    def large_alone(self, t: int, spent: FloatArray) -> BoolArray:
        return np.asarray(
            pacing.covers_large(
                budget_per_query=self.budget, answered=t, spent=spent, large_cost=self.large_cost
            )
        )

    def record(self, t: int, escalated: BoolArray) -> None:
        self.labelled[:, t] = escalated


class PacedWithSurplus(PacedThreshold):
    """The paced threshold with the service's surplus test for L alone as well."""

    def large_alone(self, t: int, spent: FloatArray) -> BoolArray:
        return np.asarray(
            pacing.covers_large(
                budget_per_query=self.budget, answered=t, spent=spent, large_cost=self.large_cost
            )
        )
