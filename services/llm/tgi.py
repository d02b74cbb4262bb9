"""Client for text-generation-inference's ``POST /generate``.

One greedy call returns both the answer and the first generated token's top-n log-probs
(``details.top_tokens[0]``). TGI reports log-probs after its logits processors, so the request
must not sample.

Prompt tokens. Since TGI 3.0 ``details.prefill`` is empty unless the server runs with
``--enable-prefill-logprobs`` (off by default: it costs VRAM), so its length cannot be the
count. The options, measured against ``twotier model-server`` on loopback (see
docs/deploy.md, "Token counts"):

- the ``x-prompt-tokens`` header that TGI's ``/generate`` has sent since 1.4: the length of
  the input the server validated and ran (after any truncation), in the same response, so no
  extra cost at all. This is the count used.
- ``POST /tokenize``: exact too, but one more round trip per call, plus the server
  tokenizing the prompt a second time. Used only when the header is missing (a server that
  speaks TGI's format without it) and prefill is empty; a server without the route is not
  asked again.
- the tokenizer in the worker: no round trip, but the worker would have to fetch the served
  model's tokenizer and keep it in step with the server's.
- the OpenAI-compatible ``/v1/chat/completions`` and its ``usage``: a different request (the
  chat template applied), not a way to count this one.

With none of these the prompt is estimated (services/llm/token_count.py) and the call is
marked as estimated in the ledger.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from services.llm.base import (
    CallContext,
    Generation,
    ModelError,
    TokenCandidate,
    TransientModelError,
)
from services.llm.http_backend import HttpBackend
from services.llm.tgi_wire import PROMPT_TOKENS_HEADER
from services.llm.token_count import estimate_tokens


class TGIBackend(HttpBackend):
    def __init__(
        self,
        *,
        url: str,
        model: str,
        timeout_s: float,
        top_n_tokens: int,
        attempts: int,
        overload_patience_s: float = 60.0,
        max_connections: int = 100,
    ) -> None:
        super().__init__(
            url=url,
            model=model,
            timeout_s=timeout_s,
            attempts=attempts,
            overload_patience_s=overload_patience_s,
            max_connections=max_connections,
        )
        self.top_n_tokens = top_n_tokens
        self._has_tokenize_route = True

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        top_n_tokens: int | None = None,
        context: CallContext | None = None,  # the server schedules its calls itself
    ) -> Generation:
        body = {
            "inputs": prompt,
            "parameters": {
                "max_new_tokens": max_new_tokens,
                "do_sample": False,
                "details": True,
                "decoder_input_details": True,
                "top_n_tokens": top_n_tokens or self.top_n_tokens,
            },
        }
        answer = self.post("generate", body)
        generation = parse_generate_response(answer.body)
        reported = prompt_tokens_reported(answer.headers, generation)
        if reported is not None:
            return _with_input_tokens(generation, reported, estimated=False)
        tokenized = self._tokenize(prompt)
        if tokenized is not None:
            return _with_input_tokens(generation, tokenized, estimated=False)
        return _with_input_tokens(generation, estimate_tokens(prompt), estimated=True)

    def _tokenize(self, prompt: str) -> int | None:
        """The prompt's token count from ``POST /tokenize``; None if the server has no route."""
        if not self._has_tokenize_route:
            return None
        try:
            tokens = self.post("tokenize", {"inputs": prompt}).body
        except TransientModelError:
            return None  # estimate this call; ask again next time
        except ModelError:
            # 404: no such route, or TGI's "No fast tokenizer available". Do not ask again.
            self._has_tokenize_route = False
            return None
        return len(tokens) if isinstance(tokens, list) else None


def prompt_tokens_reported(headers: httpx.Headers, generation: Generation) -> int | None:
    """What the server said it ran: the header, else the prefill (older TGI, or a server run
    with prefill log-probs); None when it said neither."""
    header = headers.get(PROMPT_TOKENS_HEADER)
    if header is not None and header.strip().isdigit():
        return int(header)
    return generation.input_tokens or None


def _with_input_tokens(generation: Generation, count: int, *, estimated: bool) -> Generation:
    return dataclasses.replace(generation, input_tokens=count, input_tokens_estimated=estimated)


def parse_generate_response(payload: dict[str, Any]) -> Generation:
    """The generation; ``input_tokens`` is the prefill's length (0 when prefill is empty)."""
    try:
        details = payload["details"]
        top_tokens = details.get("top_tokens") or []
        first = top_tokens[0] if top_tokens else []
        candidates = tuple(
            TokenCandidate(token_id=int(t["id"]), text=str(t["text"]), logprob=float(t["logprob"]))
            for t in first
        )
        return Generation(
            text=str(payload["generated_text"]),
            first_token_candidates=candidates,
            input_tokens=len(details.get("prefill") or []),
            output_tokens=int(details["generated_tokens"]),
            finish_reason=str(details["finish_reason"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"unexpected /generate response: {exc!r}") from exc
