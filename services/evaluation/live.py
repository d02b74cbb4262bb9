"""``twotier eval-live``: run the small tier for real over a labelled data set and write the
per-query records that ``twotier eval`` reads.

Classification rows are ``{text, label}`` (the label an index into ``labels`` or a label name);
multiple-choice rows are ``{question, choices, answer_idx}`` and are answered with a letter.
The first ``shots`` rows serve as worked examples in every prompt and are not recorded.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from services.accounting import settings_price
from services.llm.base import Backend
from services.llm.margin import choice_margin, class_probabilities, first_token_margin
from services.settings import TierSettings

Kind = Literal["classification", "multiple-choice"]

SIGNAL_NAMES = {
    "margin": "p1 - p2 over the class names' first tokens (the paper's classification margin)",
    "margin_logit": "log p1 - log p2 over the class names' first tokens (the paper's code)",
    "vocabulary_margin": "p1 - p2 over the whole vocabulary's first-token candidates",
    "class_share": "p(best class) / sum of the class probabilities (no trained router)",
    "negative_entropy": "minus the entropy of the class distribution, renormalised",
}


@dataclass(frozen=True)
class Example:
    query: str  # the bare question, for the trained baselines
    prompt: str
    choices: list[str]
    gold: str


def read_examples(
    path: Path, *, kind: Kind, labels: list[str] | None, shots: int
) -> Iterator[Example]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    demos, rest = rows[:shots], rows[shots:]
    for row in rest:
        yield _example(row, demos, kind=kind, labels=labels)


def _example(
    row: dict[str, Any], demos: list[dict[str, Any]], *, kind: Kind, labels: list[str] | None
) -> Example:
    if kind == "classification":
        if not labels:
            raise ValueError("classification needs --labels (names in label-index order)")
        shown = "".join(f"Text: {d['text']}\nAnswer: {_label(d, labels)}\n\n" for d in demos)
        prompt = (
            f"Classify the text as one of: {', '.join(labels)}. Answer with the label only.\n\n"
            f"{shown}Text: {row['text']}\nAnswer:"
        )
        return Example(row["text"], prompt, labels, _label(row, labels))
    letters = list(string.ascii_uppercase[: len(row["choices"])])
    shown = "".join(
        f"{_question(d)}\nAnswer: {string.ascii_uppercase[d['answer_idx']]}\n\n" for d in demos
    )
    prompt = (
        "Answer the multiple-choice question with the letter of the correct option only.\n\n"
        f"{shown}{_question(row)}\nAnswer:"
    )
    return Example(row["question"], prompt, letters, letters[row["answer_idx"]])


def _label(row: dict[str, Any], labels: list[str]) -> str:
    label = row["label"]
    return labels[label] if isinstance(label, int) else str(label)


def _question(row: dict[str, Any]) -> str:
    options = "\n".join(
        f"{letter}. {choice}"
        for letter, choice in zip(string.ascii_uppercase, row["choices"], strict=False)
    )
    return f"Question: {row['question']}\n{options}"


@dataclass(frozen=True)
class LiveTiers:
    """The backends to ask, with the settings that price their calls."""

    small: Backend
    small_settings: TierSettings
    large: Backend | None  # None: the large model is taken to be always right
    large_settings: TierSettings
    top_n_tokens: int


def record_live(
    examples: Iterator[Example],
    *,
    task: str,
    tiers: LiveTiers,
    out: Path,
    limit: int | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Answer each example on the small tier (and the large, if given) and write the records.

    Without a large backend the large model is taken to be always right (an idealised large
    model): the curves then show how much of the small model's error the signal can find.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w") as handle:
        for example in examples:
            if limit is not None and written >= limit:
                break
            record = _record(example, task, tiers)
            handle.write(json.dumps(record) + "\n")
            written += 1
            progress(written)
    return written


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
