"""text-generation-inference's ``/generate`` wire format: request validation and response body.

Used by ``twotier model-server`` (a TGI-compatible server over the local model), so that the
small-tier worker code is the same whether it talks to TGI on a GPU or to a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# TGI's reasons, and "cancelled": the local model's own, for a generation its caller gave up
# (the caller no longer waits for it, so it reaches no client of the model server).
FinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled"]


@dataclass(frozen=True)
class WireToken:
    id: int
    text: str
    logprob: float | None
    special: bool = False

    def as_json(self, *, with_special: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "text": self.text, "logprob": self.logprob}
        if with_special:
            body["special"] = self.special
        return body


@dataclass(frozen=True)
class DetailedGeneration:
    """Everything TGI's ``details`` can report about one greedy generation."""

    text: str
    prefill: list[WireToken]
    tokens: list[WireToken]
    top_tokens: list[list[WireToken]]  # per generated token, the top-n candidates, best first
    finish_reason: FinishReason


@dataclass(frozen=True)
class ServerLimits:
    max_input_tokens: int
    max_total_tokens: int
    max_top_n_tokens: int


class GenerateParameters(BaseModel):
    """The parameters TGI accepts; unknown ones are ignored, as TGI's clients send many."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    return_full_text: bool | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


def validation_error(
    request: GenerateRequest, *, input_tokens: int, limits: ServerLimits
) -> str | None:
    """TGI's message for an invalid request, or None. The messages are TGI's own."""
    params = request.parameters
    top_n = params.top_n_tokens or 0
    max_new = max_new_tokens(request, input_tokens=input_tokens, limits=limits)
    # In TGI's order, which callers rely on: an empty input with a top_n_tokens above the
    # limit gets the top_n_tokens error, so a probe learns the limit without running the model.
    checks = [
        (request.stream, "streaming is not supported by this server"),
        (
            params.temperature is not None and params.temperature <= 0,
            "`temperature` must be strictly positive",
        ),
        (
            params.repetition_penalty is not None and params.repetition_penalty <= 0,
            "`repetition_penalty` must be strictly positive",
        ),
        (max_new <= 0, "`max_new_tokens` must be strictly positive"),
        (
            not 0 <= top_n <= limits.max_top_n_tokens,
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}",
        ),
        (not request.inputs, "`inputs` cannot be empty"),
        (
            input_tokens > limits.max_input_tokens,
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_tokens}",
        ),
        (
            input_tokens + max_new > limits.max_total_tokens,
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_tokens} `inputs` tokens and {max_new} `max_new_tokens`",
        ),
    ]
    return next(
        (f"Input validation error: {message}" for failed, message in checks if failed), None
    )


def max_new_tokens(request: GenerateRequest, *, input_tokens: int, limits: ServerLimits) -> int:
    """TGI's default fills the context: max_total_tokens minus the prompt."""
    if request.parameters.max_new_tokens is not None:
        return request.parameters.max_new_tokens
    return max(limits.max_total_tokens - input_tokens, 1)


def error_body(message: str, error_type: str = "validation") -> dict[str, str]:
    return {"error": message, "error_type": error_type}


def response_body(
    generation: DetailedGeneration, params: GenerateParameters, *, prefill_logprobs: bool = False
) -> dict[str, Any]:
    """TGI's body. As in TGI 3.x, ``prefill`` stays empty unless the server runs with prefill
    log-probs on (``--enable-prefill-logprobs``) and the request asks for them."""
    body: dict[str, Any] = {"generated_text": generation.text}
    if not params.details:
        return body
    body["details"] = {
        "finish_reason": generation.finish_reason,
        "generated_tokens": len(generation.tokens),
        "seed": params.seed,
        "prefill": [t.as_json(with_special=False) for t in generation.prefill]
        if params.decoder_input_details and prefill_logprobs
        else [],
        "tokens": [t.as_json() for t in generation.tokens],
        "top_tokens": [[t.as_json() for t in step] for step in generation.top_tokens]
        if params.top_n_tokens
        else [],
    }
    return body


def tokenize_body(ids: list[int], pieces: list[str]) -> list[dict[str, Any]]:
    """``POST /tokenize``'s answer: each token with its id, text and character span."""
    tokens, offset = [], 0
    for token_id, piece in zip(ids, pieces, strict=True):
        tokens.append({"id": token_id, "text": piece, "start": offset, "stop": offset + len(piece)})
        offset += len(piece)
    return tokens


PROMPT_TOKENS_HEADER = "x-prompt-tokens"
# Whom a call is for: `twotier model-server` takes turns between its values when more calls
# wait than its batch holds (TGI itself ignores it).
FAIRNESS_HEADER = "x-fairness-key"


def count_headers(*, input_tokens: int, generated_tokens: int) -> dict[str, str]:
    """The token counts TGI's ``/generate`` sends as headers (since TGI 1.4)."""
    return {PROMPT_TOKENS_HEADER: str(input_tokens), "x-generated-tokens": str(generated_tokens)}
