"""Per-query records of a small -> large model pair, read from the recorded chains.

A chain file (``<task>__<chain>.csv``) holds, per query, every model's answer, correctness,
confidence and token counts; every earlier -> later model of the chain is one pair.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# What each task's confidence column measures (see the chains' SCHEMA.md): never p1 - p2.
CHAIN_SIGNALS = {
    "mmlu": "log p(top-1) of the answer letter (least confidence)",
    "medmcqa": "log p(top-1) of the answer letter (least confidence)",
    "triviaqa": 'self-verification log P("Y")',
    "truthfulqa": 'self-verification log P("Y")',
    "gsm8k": 'self-verification log P("Y")',
}


@dataclass(frozen=True)
class PairData:
    """One task x (small, large) pair; arrays are aligned by query."""

    task: str
    source: str
    small: str
    large: str
    signal_name: str
    signal: FloatArray  # higher = the small model is surer
    small_correct: BoolArray
    large_correct: BoolArray
    small_cost_usd: FloatArray  # token-priced cost of each call
    large_cost_usd: FloatArray
    is_train: BoolArray  # rows the trained baselines learn from; never scored
    query_texts: list[str] = field(repr=False)
    small_answers: list[str] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.task}: {self.small} -> {self.large}"

    @property
    def scored(self) -> BoolArray:
        return ~self.is_train


def read_chains(path: Path) -> list[PairData]:
    """Every pair of every ``*_chain.csv`` under ``path`` (a file or a folder)."""
    files = sorted(path.glob("*_chain.csv")) if path.is_dir() else [path]
    return [pair for file in files for pair in _pairs_of_chain(file)]


def _pairs_of_chain(file: Path) -> list[PairData]:
    with file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return []
    models = [column.removesuffix(".correct") for column in rows[0] if column.endswith(".correct")]
    task = rows[0]["task"]
    is_train = _training_rows([row["split"] for row in rows])
    queries = [row["user_prompt"] for row in rows]
    pairs = []
    for i, small in enumerate(models):
        for large in models[i + 1 :]:
            pairs.append(
                PairData(
                    task=task,
                    source=file.name,
                    small=small,
                    large=large,
                    signal_name=CHAIN_SIGNALS.get(task, "recorded confidence"),
                    signal=_floats(rows, f"{small}.conf_raw"),
                    small_correct=_floats(rows, f"{small}.correct") > 0.5,
                    large_correct=_floats(rows, f"{large}.correct") > 0.5,
                    small_cost_usd=_floats(rows, f"{small}.cost_usd"),
                    large_cost_usd=_floats(rows, f"{large}.cost_usd"),
                    is_train=is_train,
                    query_texts=queries,
                    small_answers=[row[f"{small}.answer"] for row in rows],
                )
            )
    return pairs


def _training_rows(splits: list[str]) -> BoolArray:
    """The train split where the data has a test split; else the first third (at most 1,000)."""
    is_train = np.array([split == "train" for split in splits])
    if is_train.all():
        is_train[:] = False
        is_train[: min(1000, len(splits) // 3)] = True
    return is_train


def _floats(rows: list[dict[str, str]], column: str) -> FloatArray:
    return np.array([_float(row[column]) for row in rows], dtype=np.float64)


def _float(text: str) -> float:
    text = text.strip()
    if not text or text.lower() == "nan":
        return math.nan
    return float(text)  # "-inf" parses to -inf: the lowest confidence
