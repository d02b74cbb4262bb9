"""Client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp server, hosted APIs).

``/v1/chat/completions`` with ``logprobs`` + ``top_logprobs``, or ``/v1/completions`` with
``logprobs: k``; ``temperature: 0`` so the reported log-probs are the model's own. The margin
comes from the first generated token's top log-probs.

Token counts come from ``usage`` (``prompt_tokens`` counts the chat template's tokens too: what
the server ran). A server that sends no usage is still charged: the prompt's tokens are
estimated (and marked so in the ledger), the answer's are the log-probs' entries, one per
generated token.

Labels are not scored here (the chat route reports no log-probs of a given continuation), so a
query with choices whose first token starts no label is answered as ``label_margin`` says when
the labels are unscored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from services.llm.base import CallContext, Generation, LabelScores, ModelError, TokenCandidate
from services.llm.http_backend import HttpBackend
from services.llm.token_count import estimate_tokens


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
        overload_patience_s: float = 60.0,
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
            overload_patience_s=overload_patience_s,
            max_connections=max_connections,
        )
        self.api = api
        self.top_n_tokens = top_n_tokens

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        top_n_tokens: int | None = None,
        context: CallContext | None = None,  # the server schedules its calls itself
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
            return parse_chat_response(self.post_json("chat/completions", body), prompt=prompt)
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "logprobs": top_n,
        }
        return parse_completion_response(self.post_json("completions", body), prompt=prompt)

    def label_token_count(self, label: str) -> int | None:
        return None  # no tokenizer route: a label is bounded by its bytes

    def score_labels(self, prompt: str, labels: Sequence[str]) -> LabelScores:
        return LabelScores(None)


def parse_chat_response(payload: dict[str, Any], *, prompt: str) -> Generation:
    try:
        choice = payload["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        first = content[0]["top_logprobs"] if content else []
        candidates = tuple(
            TokenCandidate(token_id=rank, text=str(item["token"]), logprob=float(item["logprob"]))
            for rank, item in enumerate(first)
        )
        text = str(choice["message"].get("content") or "")
        return _generation(payload, prompt, text, candidates, generated_tokens=len(content))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"unexpected chat completion response: {exc!r}") from exc


def parse_completion_response(payload: dict[str, Any], *, prompt: str) -> Generation:
    try:
        choice = payload["choices"][0]
        logprobs = choice.get("logprobs") or {}
        top = logprobs.get("top_logprobs") or []
        first: dict[str, float] = top[0] if top else {}
        candidates = tuple(
            TokenCandidate(token_id=rank, text=str(token), logprob=float(logprob))
            for rank, (token, logprob) in enumerate(first.items())
        )
        generated = len(logprobs.get("tokens") or [])
        return _generation(
            payload, prompt, str(choice["text"]), candidates, generated_tokens=generated
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ModelError(f"unexpected completion response: {exc!r}") from exc


def _generation(
    payload: dict[str, Any],
    prompt: str,
    text: str,
    candidates: tuple[TokenCandidate, ...],
    *,
    generated_tokens: int,
) -> Generation:
    usage = payload.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    return Generation(
        text=text,
        first_token_candidates=candidates,
        input_tokens=int(prompt_tokens) if prompt_tokens else estimate_tokens(prompt),
        output_tokens=int(completion_tokens)
        if completion_tokens is not None
        else generated_tokens or estimate_tokens(text),
        finish_reason=str(payload["choices"][0].get("finish_reason") or "unknown"),
        input_tokens_estimated=not prompt_tokens,
    )
