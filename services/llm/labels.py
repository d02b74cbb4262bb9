"""A model call for a query with choices: as many new tokens as a label needs, and the labels
scored when none of them starts the answer.

The answer of such a query is one of its labels (services/llm/margin.py, ``label_margin``).
A label's first token among the first-token candidates settles it from one short call. When
none is there, the backend scores each label as the prompt's continuation; those scoring calls
are part of the same tier's call, so their tokens are added to its ``Generation`` and charged
with it, in its one ledger row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.llm.base import Backend, CallContext, Generation
from services.llm.margin import choice_margin

# A label tokenized on its own may split differently after the prompt (a leading space joined
# to its first word, say): one token more covers it.
LABEL_TOKEN_SLACK = 1


def check_distinct_labels(choices: Sequence[str]) -> None:
    """Labels that differ only in case and spaces cannot be told apart in an answer."""
    spellings = ["".join(choice.split()).lower() for choice in choices]
    if len(set(spellings)) != len(spellings):
        raise ValueError("choices must differ in more than case and spaces")


def generate(
    backend: Backend,
    prompt: str,
    *,
    choices: Sequence[str] | None,
    max_new_tokens: int,
    top_n_tokens: int,
    context: CallContext | None = None,
) -> Generation:
    """The tier's call: a plain generation without choices; with them, one no longer than the
    longest label (nor than ``max_new_tokens``), and the labels' scores if it started none."""
    if choices:
        max_new_tokens = min(max_new_tokens, label_token_bound(backend, choices))
    generation = backend.generate(
        prompt, max_new_tokens=max_new_tokens, top_n_tokens=top_n_tokens, context=context
    )
    if not choices:
        return generation
    _, label = choice_margin(generation.first_token_candidates, choices)
    if label is not None:
        return generation
    scores = backend.score_labels(prompt, choices)
    return dataclasses.replace(
        generation,
        input_tokens=generation.input_tokens + scores.input_tokens,
        output_tokens=generation.output_tokens + scores.output_tokens,
        input_tokens_estimated=generation.input_tokens_estimated or scores.input_tokens_estimated,
        label_logprobs=scores.logprobs,
    )


def label_token_bound(backend: Backend, choices: Sequence[str]) -> int:
    """The most new tokens any label needs: counted by the model's tokenizer where the backend
    can, else the label's UTF-8 bytes (no tokenizer makes more tokens than bytes)."""
    counts = (backend.label_token_count(label) for label in choices)
    bounds = [
        count if count is not None else len(label.encode())
        for count, label in zip(counts, choices, strict=True)
    ]
    return max(bounds) + LABEL_TOKEN_SLACK


def continuation(prompt: str, label: str) -> str:
    """The prompt followed by the label as its answer, as a raw text model reads it: a space
    between them unless the prompt ends in white space."""
    separator = "" if not prompt or prompt[-1].isspace() else " "
    return f"{prompt}{separator}{label}"
