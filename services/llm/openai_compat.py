"""Client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp server, hosted APIs).

``/v1/chat/completions`` with ``logprobs`` + ``top_logprobs``, or ``/v1/completions`` with
``logprobs: k``; ``temperature: 0`` so the reported log-probs are the model's own. The margin
comes from the first generated token's top log-probs.
"""

from __future__ import annotations

from typing import Any, Literal

from services.llm.base import Generation, ModelError, TokenCandidate
from services.llm.http_backend import HttpBackend


class OpenAIBackend(HttpBackend):
    def __init__(
        self,
        *,
        url: str,
        model: str,
        api: Literal["chat", "completions"],
        api_key: str | None,
        timeout_s: float,
        top_n_tokens: int,
        attempts: int,
        max_connections: int = 100,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else f"{base}/v1"  # accept either form of the URL
        super().__init__(
            url=base,
            model=model,
            timeout_s=timeout_s,
            attempts=attempts,
            headers=headers,
            max_connections=max_connections,
        )
        self.api = api
        self.top_n_tokens = top_n_tokens

    def generate(
        self, prompt: str, *, max_new_tokens: int, top_n_tokens: int | None = None
    ) -> Generation:
        top_n = top_n_tokens or self.top_n_tokens
        if self.api == "chat":
            body: dict[str, Any] = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": top_n,
            }
            return parse_chat_response(self.post_json("chat/completions", body))
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "logprobs": top_n,
        }
        return parse_completion_response(self.post_json("completions", body))


def parse_chat_response(payload: dict[str, Any]) -> Generation:
    try:
        choice = payload["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        first = content[0]["top_logprobs"] if content else []
        candidates = tuple(
            TokenCandidate(token_id=rank, text=str(item["token"]), logprob=float(item["logprob"]))
            for rank, item in enumerate(first)
        )
        return _generation(payload, str(choice["message"].get("content") or ""), candidates)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"unexpected chat completion response: {exc!r}") from exc


def parse_completion_response(payload: dict[str, Any]) -> Generation:
    try:
        choice = payload["choices"][0]
        top = (choice.get("logprobs") or {}).get("top_logprobs") or []
        first: dict[str, float] = top[0] if top else {}
        candidates = tuple(
            TokenCandidate(token_id=rank, text=str(token), logprob=float(logprob))
            for rank, (token, logprob) in enumerate(first.items())
        )
        return _generation(payload, str(choice["text"]), candidates)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ModelError(f"unexpected completion response: {exc!r}") from exc


def _generation(
    payload: dict[str, Any], text: str, candidates: tuple[TokenCandidate, ...]
) -> Generation:
    usage = payload.get("usage") or {}
    return Generation(
        text=text,
        first_token_candidates=candidates,
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=str(payload["choices"][0].get("finish_reason") or "unknown"),
    )
