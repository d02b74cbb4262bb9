"""A causal language model run in this process on the CPU with torch + transformers.

Decoding is greedy, one token at a time with the KV cache, so that every step's real logits
give the top-n log-probs TGI would report; the prompt's own log-probs, when asked for, come
from the same first forward pass. Concurrent generations are decoded together, a step for all
of them at once (services/llm/decode_scheduler.py).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.llm.base import CallContext, Generation, LabelScores, TokenCandidate
from services.llm.decode_scheduler import DEFAULT_MAX_BATCH_SIZE, DecodeRequest, DecodeScheduler
from services.llm.labels import continuation
from services.llm.prefill import token_logprobs
from services.llm.tgi_wire import DetailedGeneration, WireToken


class LocalModel:
    def __init__(
        self,
        source: str,
        *,
        chat_template: bool = True,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        self.source = source
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        self.model: Any = model.eval()
        self.use_chat_template = chat_template and self.tokenizer.chat_template is not None
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.max_total_tokens = int(getattr(self.model.config, "max_position_embeddings", 2048))
        # One thread owns the model and decodes the running requests together.
        self.decoder = DecodeScheduler(
            self.model,
            eos_ids=self.eos_ids,
            max_batch_size=max_batch_size,
            prefix_ids=self.template_prefix(),
        )

    def template_prefix(self) -> list[int]:
        """The tokens the chat template puts before every prompt (none without a template)."""
        if not self.use_chat_template:
            return []
        first, second = self.encode("a"), self.encode("b")
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return first[:shared]

    def encode(self, prompt: str, *, raw: bool = False) -> list[int]:
        """Token ids of the prompt, wrapped in the model's chat template when it has one
        (unless ``raw``: then the prompt's own tokens, the whole input as written)."""
        if self.use_chat_template and not raw:
            messages = [{"role": "user", "content": prompt}]
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
            return [int(i) for i in ids]
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def generate(
        self,
        input_ids: list[int],
        *,
        max_new_tokens: int,
        top_n: int,
        fairness_key: str = "",
        cancelled: threading.Event | None = None,
        prompt_logprobs: bool = False,
    ) -> DetailedGeneration:
        """Decode greedily (in the running batch), with each step's top ``top_n`` tokens.

        ``fairness_key`` (a tenant) decides whose turn it is when more wait than the batch
        holds; setting ``cancelled`` ends the generation after at most one more step, with
        what it has produced so far and ``finish_reason="cancelled"``. The prompt's tokens
        with their log-probs (``prefill``) come only with ``prompt_logprobs``, as TGI 3.x
        gives them only when asked: they cost the logits of every prompt position.
        """
        request = DecodeRequest(
            input_ids=list(input_ids),
            max_new_tokens=max_new_tokens,
            top_n=top_n,
            fairness_key=fairness_key,
            cancelled=cancelled or threading.Event(),
            wants_prompt_logprobs=prompt_logprobs,
        )
        self.decoder.submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        tokens = [self._token(token_id, logprob) for token_id, logprob in request.tokens]
        return DetailedGeneration(
            text=self.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True),
            prefill=self._prefill(input_ids, request.prefill_logprobs) if prompt_logprobs else [],
            tokens=tokens,
            top_tokens=[[self._token(*c) for c in step] for step in request.top_tokens],
            finish_reason=request.finish_reason,
        )

    def score_continuations(
        self, input_ids: list[int], continuations: Sequence[list[int]]
    ) -> list[float]:
        """Each continuation's log-prob after ``input_ids``: the sum of its tokens' log-probs,
        each given the prompt and the continuation's tokens before it (one forward pass per
        continuation, keeping only the logits that score it). It runs beside the decoding
        thread: forward passes only read the weights."""
        scores = []
        with torch.inference_mode():
            for tokens in continuations:
                output = self.model(
                    torch.tensor([input_ids + tokens]), logits_to_keep=len(tokens) + 1
                )
                scores.append(sum(token_logprobs(output.logits[0, :-1], tokens)))
        return scores

    def _prefill(self, input_ids: list[int], logprobs: list[float]) -> list[WireToken]:
        """Each prompt token with its log-prob given the tokens before it (none for the first)."""
        if not input_ids:
            return []
        return [self._token(input_ids[0], None)] + [
            self._token(token_id, score)
            for token_id, score in zip(input_ids[1:], logprobs, strict=True)
        ]

    def _token(self, token_id: int, logprob: float | None) -> WireToken:
        return WireToken(
            id=token_id,
            text=self.tokenizer.decode([token_id]),
            logprob=logprob,
            special=token_id in self.special_ids,
        )


class LocalBackend:
    """The cascade's backend interface over a LocalModel (no HTTP: the embedded default).

    With ``raw_prompts`` each prompt is the model's whole input, with no chat template (text
    for the model to continue, as TGI's ``/generate`` takes it); the model itself is shared.
    """

    def __init__(
        self, local_model: LocalModel, *, model: str, top_n_tokens: int, raw_prompts: bool = False
    ) -> None:
        self.local_model = local_model
        self.model = model
        self.top_n_tokens = top_n_tokens
        self.raw_prompts = raw_prompts

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        top_n_tokens: int | None = None,
        context: CallContext | None = None,
    ) -> Generation:
        input_ids = self.local_model.encode(prompt, raw=self.raw_prompts)
        context = context or CallContext()
        detailed = self.local_model.generate(
            input_ids,
            max_new_tokens=max_new_tokens,
            top_n=top_n_tokens or self.top_n_tokens,
            fairness_key=context.fairness_key,
            cancelled=context.cancelled,
        )
        first = detailed.top_tokens[0] if detailed.top_tokens else []
        return Generation(
            text=detailed.text,
            first_token_candidates=tuple(
                TokenCandidate(token_id=t.id, text=t.text, logprob=t.logprob or 0.0) for t in first
            ),
            input_tokens=len(input_ids),
            output_tokens=len(detailed.tokens),
            finish_reason=detailed.finish_reason,
        )

    def label_token_count(self, label: str) -> int | None:
        return len(self._label_tokens(label))

    def score_labels(self, prompt: str, labels: Sequence[str]) -> LabelScores:
        """Each label's log-prob as the model's answer to the prompt (after the chat template's
        assistant turn opens, or after the raw prompt); what the model ran is counted as
        input, as the prompt and the label once per label."""
        input_ids = self.local_model.encode(prompt, raw=self.raw_prompts)
        raw = self.raw_prompts or not self.local_model.use_chat_template
        # A raw prompt is continued as TGI's would be: a space between it and the label.
        answers = [continuation(prompt, label)[len(prompt) :] if raw else label for label in labels]
        label_ids = [self._label_tokens(answer) for answer in answers]
        scores = self.local_model.score_continuations(input_ids, label_ids)
        return LabelScores(
            tuple(scores), input_tokens=sum(len(input_ids) + len(ids) for ids in label_ids)
        )

    def _label_tokens(self, label: str) -> list[int]:
        ids = self.local_model.tokenizer(label, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]
