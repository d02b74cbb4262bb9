"""Per-query records of a small -> large model pair, read from the recorded chains.

A chain file (``<task>__<chain>.csv``) holds, per query, every model's answer, correctness,
confidence and token counts; every earlier -> later model of the chain is one pair.
"""

from __future__ import annotations

import csv
import json
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
    # Uncertainty signals, higher = the small model is surer. The first is the paper's margin
    # (or the nearest signal the data has); the others are compared with it.
    signals: dict[str, FloatArray]
    signal_names: dict[str, str]  # what each signal measures
    small_correct: BoolArray
    large_correct: BoolArray
    small_cost_usd: FloatArray  # token-priced cost of each call
    large_cost_usd: FloatArray
    is_train: BoolArray  # rows the trained baselines learn from; never scored
    query_texts: list[str] = field(repr=False)
    small_answers: list[str] = field(repr=False)
    # The small model's confidence as the chain file writes it (6 significant digits, -inf as
    # 0): the signal of the original code's protocol. None where the records have no such column.
    p_conf: FloatArray | None = field(default=None, repr=False)
    splits: tuple[str, ...] = field(default=(), repr=False)  # each row's split, as recorded

    @property
    def name(self) -> str:
        return f"{self.task}: {self.small} -> {self.large}"

    @property
    def scored(self) -> BoolArray:
        return ~self.is_train


def read_records(path: Path) -> list[PairData]:
    """Every pair in ``path`` (a file, or a folder searched recursively): recorded chains
    (``*_chain.csv``) and the records of ``twotier eval-live`` (``*.jsonl`` with signals).
    Other files, such as the labelled data sets themselves, are passed over."""
    files = sorted([*path.rglob("*.csv"), *path.rglob("*.jsonl")]) if path.is_dir() else [path]
    pairs = []
    for file in files:
        if file.suffix == ".csv" and file.stem.endswith("_chain"):
            pairs += _pairs_of_chain(file)
        elif file.suffix == ".jsonl" and _is_live_records(file):
            pairs += _pair_of_live_records(file)
    return pairs


def _is_live_records(file: Path) -> bool:
    with file.open() as handle:
        first = handle.readline()
    try:
        return "signals" in json.loads(first)
    except ValueError:
        return False


def _pair_of_live_records(file: Path) -> list[PairData]:
    """Records written by ``twotier eval-live``: one JSON object per query."""
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not records:
        return []
    first = records[0]
    names = dict(first["signal_names"])
    return [
        PairData(
            task=first["task"],
            source=file.name,
            small=first["small_model"],
            large=first["large_model"],
            signals={name: np.array([r["signals"][name] for r in records]) for name in names},
            signal_names=names,
            small_correct=np.array([bool(r["small_correct"]) for r in records]),
            large_correct=np.array([bool(r["large_correct"]) for r in records]),
            small_cost_usd=np.array([float(r["small_cost_usd"]) for r in records]),
            large_cost_usd=np.array([float(r["large_cost_usd"]) for r in records]),
            is_train=_training_rows(["stream"] * len(records)),
            query_texts=[r["query"] for r in records],
            small_answers=[r["small_answer"] for r in records],
        )
    ]


def _pairs_of_chain(file: Path) -> list[PairData]:
    with file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return []
    models = [column.removesuffix(".correct") for column in rows[0] if column.endswith(".correct")]
    task = rows[0]["task"]
    splits = tuple(row["split"] for row in rows)
    is_train = _training_rows(list(splits))
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
                    signals={"margin": _floats(rows, f"{small}.conf_raw")},
                    signal_names={"margin": CHAIN_SIGNALS.get(task, "recorded confidence")},
                    small_correct=_floats(rows, f"{small}.correct") > 0.5,
                    large_correct=_floats(rows, f"{large}.correct") > 0.5,
                    small_cost_usd=_floats(rows, f"{small}.cost_usd"),
                    large_cost_usd=_floats(rows, f"{large}.cost_usd"),
                    is_train=is_train,
                    query_texts=queries,
                    small_answers=[row[f"{small}.answer"] for row in rows],
                    p_conf=_p_conf(rows, small),
                    splits=splits,
                )
            )
    return pairs


def _training_rows(splits: list[str]) -> BoolArray:
    """The train split where the data has a test split; else the first third (at most 1,000)."""
    is_train = np.array([split == "train" for split in splits])
    if is_train.all() or not is_train.any():
        is_train[:] = False
        is_train[: min(1000, len(splits) // 3)] = True
    return is_train


def _p_conf(rows: list[dict[str, str]], model: str) -> FloatArray | None:
    column = f"{model}.p_conf"
    if column not in rows[0]:
        return None
    values = _floats(rows, column)
    values[values == -math.inf] = 0.0  # exp(-inf)
    return values


def _floats(rows: list[dict[str, str]], column: str) -> FloatArray:
    return np.array([_float(row[column]) for row in rows], dtype=np.float64)


def _float(text: str) -> float:
    text = text.strip()
    if not text or text.lower() == "nan":
        return math.nan
    return float(text)  # "-inf" parses to -inf: the lowest confidence
