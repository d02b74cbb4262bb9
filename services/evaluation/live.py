"""``twotier eval-live``: run the small tier for real over a labelled data set and write the
per-query records that ``twotier eval`` reads.

The prompts come from services/evaluation/prompts.py (a template per data set, in the chat or
the completion style); the records carry the class margin and the other signals, and the run
ends with the small model's accuracy and how well the margin tells its right answers from its
wrong ones (the AUROC).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.accounting import settings_price
from services.evaluation.prompts import Example
from services.evaluation.scores import auroc
from services.llm.base import Backend
from services.llm.margin import choice_margin, class_probabilities, first_token_margin
from services.settings import TierSettings

SIGNAL_NAMES = {
    "margin": "p1 - p2 over the class names' first tokens (the paper's classification margin)",
    "margin_logit": "log p1 - log p2 over the class names' first tokens (the paper's code)",
    "vocabulary_margin": "p1 - p2 over the whole vocabulary's first-token candidates",
    "class_share": "p(best class) / sum of the class probabilities (no trained router)",
    "negative_entropy": "minus the entropy of the class distribution, renormalised",
}


@dataclass(frozen=True)
class LiveTiers:
    """The backends to ask, with the settings that price their calls."""

    small: Backend
    small_settings: TierSettings
    large: Backend | None  # None: the large model is taken to be always right
    large_settings: TierSettings
    top_n_tokens: int


@dataclass(frozen=True)
class LiveSummary:
    """What a run recorded: how often the small model was right, and how well its margin
    ranks its right answers above its wrong ones (None when all were right or all wrong)."""

    written: int
    small_accuracy: float
    margin_auroc: float | None
    # The share of the small model's most frequent answer: near 1, it answers one class.
    top_answer_share: float


def record_live(
    examples: Iterator[Example],
    *,
    task: str,
    tiers: LiveTiers,
    out: Path,
    limit: int | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> LiveSummary:
    """Answer each example on the small tier (and the large, if given) and write the records.

    Without a large backend the large model is taken to be always right (an idealised large
    model): the curves then show how much of the small model's error the signal can find.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    with out.open("w") as handle:
        for example in examples:
            if limit is not None and len(records) >= limit:
                break
            record = _record(example, task, tiers)
            handle.write(json.dumps(record) + "\n")
            records.append(record)
            progress(len(records))
    return summarise(records)


def summarise(records: list[dict[str, Any]]) -> LiveSummary:
    correct = np.array([bool(r["small_correct"]) for r in records])
    margins = np.array([float(r["signals"]["margin"]) for r in records])
    answers = [r["small_answer"] for r in records]
    top = max((answers.count(answer) for answer in set(answers)), default=0)
    return LiveSummary(
        written=len(records),
        small_accuracy=float(correct.mean()) if records else 0.0,
        margin_auroc=auroc(margins, correct),
        top_answer_share=top / len(records) if records else 0.0,
    )


def _record(example: Example, task: str, tiers: LiveTiers) -> dict[str, Any]:
    small, large, top_n_tokens = tiers.small, tiers.large, tiers.top_n_tokens
    generation = small.generate(example.prompt, max_new_tokens=1, top_n_tokens=top_n_tokens)
    candidates = generation.first_token_candidates
    margin, answer = choice_margin(candidates, example.choices)
    margin_logit, _ = choice_margin(candidates, example.choices, kind="logit")
    if large is not None:
        on_large = large.generate(example.prompt, max_new_tokens=1, top_n_tokens=top_n_tokens)
        _, large_answer = choice_margin(on_large.first_token_candidates, example.choices)
        large_correct = large_answer == example.gold
        large_cost = _cost(tiers.large_settings, on_large.input_tokens, on_large.output_tokens)
    else:
        large_correct = True
        large_cost = _cost(tiers.large_settings, generation.input_tokens, generation.output_tokens)
    class_share, _ = choice_margin(candidates, example.choices, kind="share")
    mass = class_probabilities(candidates, example.choices)
    total = sum(mass)
    shares = [m / total for m in mass] if total > 0 else [1 / len(mass)] * len(mass)
    return {
        "task": task,
        "small_model": small.model,
        "large_model": large.model if large is not None else "reference labels (always right)",
        "query": example.query,
        "gold": example.gold,
        "small_answer": answer or "",
        "small_correct": answer == example.gold,
        "large_correct": large_correct,
        "small_cost_usd": _cost(
            tiers.small_settings, generation.input_tokens, generation.output_tokens
        ),
        "large_cost_usd": large_cost,
        "signal_names": SIGNAL_NAMES,
        "signals": {
            "margin": margin,
            "margin_logit": margin_logit,
            "vocabulary_margin": first_token_margin(candidates) if candidates else 0.0,
            "class_share": class_share,
            "negative_entropy": sum(p * math.log(p) for p in shares if p > 0),
        },
    }


def _cost(tier: TierSettings, input_tokens: int, output_tokens: int) -> float:
    return float(settings_price(tier).cost(input_tokens=input_tokens, output_tokens=output_tokens))
