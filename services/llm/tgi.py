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

Scoring labels (a query with choices whose first token started none of them) reads each
label's log-probs from the prefill of prompt + label, so it needs a server run with
``--enable-prefill-logprobs``; without it the labels go unscored (see ``score_labels``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import httpx

from services.llm.base import (
    CallContext,
    Generation,
    LabelScores,
    ModelError,
    TokenCandidate,
    TransientModelError,
)
from services.llm.http_backend import HttpBackend
from services.llm.labels import continuation
from services.llm.tgi_wire import FAIRNESS_HEADER, PROMPT_TOKENS_HEADER
from services.llm.token_count import estimate_tokens

# After a server answered a scoring call without a prefill, it is asked again only this much
# later (it may have been restarted with prefill log-probs on).
PREFILL_RECHECK_S = 600.0
# Labels whose token counts a backend keeps (they repeat across a task's queries).
LABEL_COUNTS_KEPT = 4096


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
        self._label_counts: dict[str, int] = {}
        self._tokenize_overhead: int | None = None
        self._no_prefill_until = 0.0

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        top_n_tokens: int | None = None,
        context: CallContext | None = None,
    ) -> Generation:
        """The server schedules the call itself; the context's fairness key goes along for a
        server that takes turns by it (``twotier model-server``)."""
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
        key = context.fairness_key if context else ""
        answer = self.post("generate", body, {FAIRNESS_HEADER: key} if key else None)
        generation = parse_generate_response(answer.body)
        reported = prompt_tokens_reported(answer.headers, generation)
        if reported is not None:
            return _with_input_tokens(generation, reported, estimated=False)
        tokenized = self._tokenize(prompt)
        if tokenized is not None:
            return _with_input_tokens(generation, tokenized, estimated=False)
        return _with_input_tokens(generation, estimate_tokens(prompt), estimated=True)

    def label_token_count(self, label: str) -> int | None:
        """``/tokenize``'s count of the label, less what the server adds to any text (a BOS
        token, the chat template of ``twotier model-server``), measured once on "a"."""
        known = self._label_counts.get(label)
        if known is not None:
            return known
        if self._tokenize_overhead is None:
            reference = self._tokenize("a")
            self._tokenize_overhead = None if reference is None else reference - 1
        count = self._tokenize(label)
        if count is None or self._tokenize_overhead is None:
            return None
        if len(self._label_counts) >= LABEL_COUNTS_KEPT:
            self._label_counts.clear()
        self._label_counts[label] = counted = max(count - self._tokenize_overhead, 1)
        return counted

    def score_labels(self, prompt: str, labels: Sequence[str]) -> LabelScores:
        """Each label's log-prob from the prefill of prompt + label (one call per label,
        ``decoder_input_details`` and one new token; every call's tokens are counted).

        Unscored (``logprobs`` None) when the server sends no prefill (TGI 3.x unless run with
        ``--enable-prefill-logprobs``; then it is not asked again for PREFILL_RECHECK_S), when
        a label's tokens are not at the prefill's end (a server that wraps the input in a chat
        template), or when the server refuses the longer input.
        """
        if time.monotonic() < self._no_prefill_until:
            return LabelScores(None)
        scores: list[float] = []
        spent = LabelScores(None)
        for label in labels:
            text = continuation(prompt, label)
            body = {
                "inputs": text,
                "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True},
            }
            try:
                answer = self.post("generate", body)
            except TransientModelError:
                raise
            except ModelError:
                return spent
            spent = _spent_on(spent, answer.headers, parse_generate_response(answer.body), text)
            prefill = answer.body["details"].get("prefill") or []
            if not prefill:
                self._no_prefill_until = time.monotonic() + PREFILL_RECHECK_S
            logprob = label_logprob(prefill, label)
            if logprob is None:
                return spent
            scores.append(logprob)
        return dataclasses.replace(spent, logprobs=tuple(scores))

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


def label_logprob(prefill: Sequence[dict[str, Any]], label: str) -> float | None:
    """The sum of the log-probs of the prefill's last tokens that spell ``label`` (white
    space aside); None if its end does not spell the label."""
    wanted = "".join(label.split())
    spelled, total = "", 0.0
    for token in reversed(prefill):
        logprob = token.get("logprob")
        if logprob is None:  # the input's first token: nothing before it to condition on
            return None
        spelled = "".join(str(token.get("text", "")).split()) + spelled
        total += float(logprob)
        if len(spelled) >= len(wanted):
            return total if spelled == wanted else None
    return None


def _spent_on(
    spent: LabelScores, headers: httpx.Headers, generation: Generation, text: str
) -> LabelScores:
    """``spent`` with one more scoring call's tokens (its input estimated if not reported)."""
    reported = prompt_tokens_reported(headers, generation)
    return dataclasses.replace(
        spent,
        input_tokens=spent.input_tokens + (reported or estimate_tokens(text)),
        output_tokens=spent.output_tokens + generation.output_tokens,
        input_tokens_estimated=spent.input_tokens_estimated or reported is None,
    )


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
