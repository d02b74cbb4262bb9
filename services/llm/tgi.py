"""Client for text-generation-inference's ``POST /generate``.

One greedy call returns both the answer and the first generated token's top-n log-probs
(``details.top_tokens[0]``). TGI reports log-probs after its logits processors, so the request
must not sample.
"""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.llm.base import Generation, ModelError, TokenCandidate, TransientModelError

# 408/429 and 5xx are the server's momentary state; 424 is TGI's "generation error" (e.g. a
# CUDA OOM on one batch), which also clears on retry.
TRANSIENT_STATUS = frozenset({408, 424, 429, 500, 502, 503, 504})


class TGIBackend:
    def __init__(
        self, *, url: str, model: str, timeout_s: float, top_n_tokens: int, attempts: int
    ) -> None:
        self.model = model
        self.top_n_tokens = top_n_tokens
        self._client = httpx.Client(
            base_url=url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            follow_redirects=False,
        )
        self._post = retry(
            retry=retry_if_exception_type(TransientModelError),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
            reraise=True,
        )(self._post_once)

    def generate(self, prompt: str, *, max_new_tokens: int) -> Generation:
        body = {
            "inputs": prompt,
            "parameters": {
                "max_new_tokens": max_new_tokens,
                "do_sample": False,
                "details": True,
                "decoder_input_details": True,
                "top_n_tokens": self.top_n_tokens,
            },
        }
        return parse_generate_response(self._post(body))

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post("/generate", json=body)
        except httpx.TransportError as exc:
            raise TransientModelError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            payload: dict[str, Any] = response.json()
            return payload
        message = f"{self.model}: HTTP {response.status_code}: {_error_text(response)}"
        if response.status_code in TRANSIENT_STATUS:
            raise TransientModelError(message)
        raise ModelError(message)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TGIBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(payload, dict) and "error" in payload:
        return f"{payload.get('error_type', 'error')}: {payload['error']}"
    return str(payload)[:500]


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
