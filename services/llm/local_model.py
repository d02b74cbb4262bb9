"""A causal language model run in this process on the CPU with torch + transformers.

Decoding is greedy, one token at a time with the KV cache, so that every step's real logits
give the top-n log-probs TGI would report; the prompt's own log-probs come from the same
first forward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.llm.base import Generation, LabelScores, TokenCandidate
from services.llm.labels import continuation
from services.llm.tgi_wire import DetailedGeneration, FinishReason, WireToken


class LocalModel:
    def __init__(self, source: str, *, chat_template: bool = True) -> None:
        self.source = source
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        self.model: Any = model.eval()
        self.use_chat_template = chat_template and self.tokenizer.chat_template is not None
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.max_total_tokens = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()  # one generation at a time; torch uses every core

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the prompt, wrapped in the model's chat template when it has one."""
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}]
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
            return [int(i) for i in ids]
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def generate(
        self, input_ids: list[int], *, max_new_tokens: int, top_n: int
    ) -> DetailedGeneration:
        with self._lock, torch.inference_mode():
            ids = torch.tensor([input_ids])
            output = self.model(ids, use_cache=True)
            prefill = self._prefill(input_ids, output.logits[0])
            next_logits, past = output.logits[0, -1], output.cache
            tokens: list[WireToken] = []
            top_tokens: list[list[WireToken]] = []
            finish_reason: FinishReason = "length"
            for _ in range(max_new_tokens):
                logprobs = torch.log_softmax(next_logits.float(), dim=-1)
                best = torch.topk(logprobs, max(top_n, 1))
                token_id = int(best.indices[0])
                tokens.append(self._token(token_id, float(best.values[0])))
                candidates = zip(best.values[:top_n], best.indices[:top_n], strict=True)
                top_tokens.append([self._token(int(i), float(v)) for v, i in candidates])
                if token_id in self.eos_ids:
                    finish_reason = "eos_token"
                    break
                output = self.model(torch.tensor([[token_id]]), cache=past, use_cache=True)
                next_logits, past = output.logits[0, -1], output.cache
        text = self.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True)
        return DetailedGeneration(
            text=text,
            prefill=prefill,
            tokens=tokens,
            top_tokens=top_tokens,
            finish_reason=finish_reason,
        )

    def score_continuations(
        self, input_ids: list[int], continuations: Sequence[list[int]]
    ) -> list[float]:
        """Each continuation's log-prob after ``input_ids``: the sum of its tokens' log-probs,
        each given the prompt and the continuation's tokens before it (one forward pass per
        continuation, keeping only the logits that score it)."""
        scores = []
        with self._lock, torch.inference_mode():
            for tokens in continuations:
                output = self.model(
                    torch.tensor([input_ids + tokens]), logits_to_keep=len(tokens) + 1
                )
                logprobs = torch.log_softmax(output.logits[0, :-1].float(), dim=-1)
                picked = logprobs.gather(1, torch.tensor(tokens).unsqueeze(1))
                scores.append(float(picked.sum()))
        return scores

    def _prefill(self, input_ids: list[int], logits: torch.Tensor) -> list[WireToken]:
        """Each prompt token with its log-prob given the tokens before it (none for the first)."""
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        targets = torch.tensor(input_ids[1:]).unsqueeze(1)
        scores = logprobs.gather(1, targets).squeeze(1).tolist() if len(input_ids) > 1 else []
        return [self._token(input_ids[0], None)] + [
            self._token(token_id, score)
            for token_id, score in zip(input_ids[1:], scores, strict=True)
        ]

    def _token(self, token_id: int, logprob: float | None) -> WireToken:
        return WireToken(
            id=token_id,
            text=self.tokenizer.decode([token_id]),
            logprob=logprob,
            special=token_id in self.special_ids,
        )


class LocalBackend:
    """The cascade's backend interface over a LocalModel (no HTTP: the embedded default)."""

    def __init__(self, local_model: LocalModel, *, model: str, top_n_tokens: int) -> None:
        self.local_model = local_model
        self.model = model
        self.top_n_tokens = top_n_tokens

    def generate(
        self, prompt: str, *, max_new_tokens: int, top_n_tokens: int | None = None
    ) -> Generation:
        input_ids = self.local_model.encode(prompt)
        detailed = self.local_model.generate(
            input_ids, max_new_tokens=max_new_tokens, top_n=top_n_tokens or self.top_n_tokens
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
        input_ids = self.local_model.encode(prompt)
        raw = not self.local_model.use_chat_template
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
