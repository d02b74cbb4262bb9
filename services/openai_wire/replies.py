"""A finished query as OpenAI's reply objects: a chat completion, a text completion, the chunks
of a stream, the model list; and twotier's extension to each, the ``twotier`` object and the
``x-twotier-*`` headers, which say how the cascade answered."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from services.accounting import money_text
from services.openai_wire.outcome import QueryOutcome

OWNER = "twotier"
# `created` of the models: they are the service's cascade, not releases of a model.
MODELS_CREATED = 0


def completion_id(outcome: QueryOutcome, *, chat: bool) -> str:
    """The reply's id, made of the query's: ``chatcmpl-<query id without dashes>``."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{outcome.query_id.hex}"


def extension(outcome: QueryOutcome) -> dict[str, Any]:
    """The ``twotier`` object: which tier answered, the small model's margin and the
    threshold it was compared with, the decision, and what the query cost per tier."""
    call = outcome.answering_call
    return {
        "query_id": str(outcome.query_id),
        "tier": outcome.tier,
        "model": call.model if call else None,
        "escalated": outcome.escalated,
        "margin": outcome.margin,
        "threshold": outcome.threshold,
        "threshold_version": outcome.threshold_version,
        "decision": outcome.decision,
        "cost": {
            "total": money_text(outcome.cost()),
            "small": money_text(outcome.cost("small")),
            "large": money_text(outcome.cost("large")),
        },
    }


def extension_headers(outcome: QueryOutcome) -> dict[str, str]:
    """The extension's main fields as ``x-twotier-*`` headers (those that have a value)."""
    values = {
        "x-twotier-query-id": str(outcome.query_id),
        "x-twotier-tier": outcome.tier,
        "x-twotier-margin": None if outcome.margin is None else repr(outcome.margin),
        "x-twotier-threshold": None if outcome.threshold is None else repr(outcome.threshold),
        "x-twotier-decision": outcome.decision,
        "x-twotier-cost": money_text(outcome.cost()),
    }
    return {name: value for name, value in values.items() if value is not None}


def usage(outcome: QueryOutcome) -> dict[str, int]:
    """The tokens the tenant was charged for, over both tiers' calls."""
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(outcome: QueryOutcome, *, model: str) -> dict[str, Any]:
    return {
        "id": completion_id(outcome, chat=True),
        "object": "chat.completion",
        "created": outcome.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.answer or "", "refusal": None},
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": usage(outcome),
        "system_fingerprint": None,
        "twotier": extension(outcome),
    }


def text_completion(outcome: QueryOutcome, *, model: str) -> dict[str, Any]:
    return {
        "id": completion_id(outcome, chat=False),
        "object": "text_completion",
        "created": outcome.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": outcome.answer or "",
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": usage(outcome),
        "system_fingerprint": None,
        "twotier": extension(outcome),
    }


def chat_chunks(outcome: QueryOutcome, *, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion: the role, the whole answer, the finish
    reason with the extension, and the usage when asked for (``stream_options``)."""
    head = {
        "id": completion_id(outcome, chat=True),
        "object": "chat.completion.chunk",
        "created": outcome.created,
        "model": model,
        "system_fingerprint": None,
    }
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": outcome.answer or ""}, None),
        ({}, outcome.finish_reason),
    ]
    choices = [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        for delta, finish_reason in deltas
    ]
    return _streamed(head, choices, outcome, include_usage=include_usage)


def completion_chunks(
    outcome: QueryOutcome, *, model: str, include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks of a streamed text completion: the answer, then the finish reason."""
    head = {
        "id": completion_id(outcome, chat=False),
        "object": "text_completion",
        "created": outcome.created,
        "model": model,
        "system_fingerprint": None,
    }
    texts: list[tuple[str, str | None]] = [
        (outcome.answer or "", None),
        ("", outcome.finish_reason),
    ]
    choices = [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        for text, finish_reason in texts
    ]
    return _streamed(head, choices, outcome, include_usage=include_usage)


def _streamed(
    head: dict[str, Any],
    choices: list[dict[str, Any]],
    outcome: QueryOutcome,
    *,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """One chunk per choice, the extension on the last; with ``include_usage`` every chunk
    says `usage: null` and a last chunk with no choice carries the usage (OpenAI's shape)."""
    chunks = [{**head, "choices": [choice]} for choice in choices]
    chunks[-1]["twotier"] = extension(outcome)
    if include_usage:
        for chunk in chunks:
            chunk["usage"] = None
        chunks.append({**head, "choices": [], "usage": usage(outcome)})
    return chunks


def server_sent_events(chunks: Sequence[dict[str, Any]]) -> Iterator[str]:
    """The chunks as OpenAI streams them: ``data: {json}`` events, then ``data: [DONE]``."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": OWNER}


def model_list(names: Sequence[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name) for name in names]}
