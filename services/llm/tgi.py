"""Client for text-generation-inference's ``POST /generate``.

One greedy call returns both the answer and the first generated token's top-n log-probs
(``details.top_tokens[0]``). TGI reports log-probs after its logits processors, so the request
must not sample.
"""

from __future__ import annotations

from typing import Any

from services.llm.base import Generation, ModelError, TokenCandidate
from services.llm.http_backend import HttpBackend


class TGIBackend(HttpBackend):
    def __init__(
        self,
        *,
        url: str,
        model: str,
        timeout_s: float,
        top_n_tokens: int,
        attempts: int,
        max_connections: int = 100,
    ) -> None:
        super().__init__(
            url=url,
            model=model,
            timeout_s=timeout_s,
            attempts=attempts,
            max_connections=max_connections,
        )
        self.top_n_tokens = top_n_tokens

    def generate(
        self, prompt: str, *, max_new_tokens: int, top_n_tokens: int | None = None
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
        return parse_generate_response(self.post_json("generate", body))


def parse_generate_response(payload: dict[str, Any]) -> Generation:
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
