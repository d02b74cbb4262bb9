"""Continuous batching for the local model: one thread owns the model and decodes every
running sequence in each step.

Callers submit a ``DecodeRequest`` and wait for it. Between steps the thread admits waiting
requests into the running batch, up to ``max_batch_size``, taking them round-robin across
their fairness keys (services/llm/fair_queue.py); those admitted together are prefilled
together (services/llm/prefill.py), which yields each one's first token (and its prompt's
log-probs when asked for). Each step then runs one forward pass over every
running sequence's last token and picks each one's next token greedily, with its top-n
log-probs. A sequence leaves when it ends (end of sequence, its token limit) or when its
``cancelled`` event is set: that is looked at before every step, so a cancelled generation
runs at most one more step. A step on a CPU costs about as much for eight sequences as for
one, which is where the throughput comes from.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch

from services.llm.decode_batch import DecodeBatch, can_batch
from services.llm.fair_queue import FairQueue
from services.llm.prefill import PromptPrefix, packs, prefill
from services.llm.tgi_wire import FinishReason

log = structlog.get_logger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8

Candidate = tuple[int, float]  # a token id and its log-prob


@dataclass(eq=False)
class DecodeRequest:
    """One generation: what the caller asks, and what the decoder has produced so far."""

    input_ids: list[int]
    max_new_tokens: int
    top_n: int
    fairness_key: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    wants_prompt_logprobs: bool = False
    prefill_logprobs: list[float] = field(default_factory=list)
    tokens: list[Candidate] = field(default_factory=list)
    top_tokens: list[list[Candidate]] = field(default_factory=list)
    finish_reason: FinishReason = "length"
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def next_token(self) -> int:
        return self.tokens[-1][0]

    def record(self, ids: list[int], logprobs: list[float], eos_ids: set[int]) -> bool:
        """Take the best of a step's candidates (best first) as the next token; True if the
        sequence has ended."""
        self.tokens.append((ids[0], logprobs[0]))
        self.top_tokens.append(list(zip(ids[: self.top_n], logprobs[: self.top_n], strict=True)))
        if ids[0] in eos_ids:
            self.finish_reason = "eos_token"
            return True
        return len(self.tokens) >= self.max_new_tokens


@dataclass
class DecodeStats:
    """What the decoder has done since it started: for metrics and for tests."""

    steps: int = 0
    sequences_stepped: int = 0  # the sum of the batch sizes of all steps
    current_batch: int = 0
    largest_batch: int = 0
    admitted: deque[str] = field(default_factory=lambda: deque(maxlen=1000))  # fairness keys
    prefix_reused: int = 0  # prefills that ran only what followed the shared prefix
    prefill_passes: int = 0  # forward passes that prefilled prompts
    largest_prefill: int = 0  # the most prompts one of those passes prefilled together


class DecodeScheduler:
    def __init__(
        self, model: Any, *, eos_ids: set[int], max_batch_size: int, prefix_ids: list[int]
    ) -> None:
        self._model = model
        self._eos_ids = eos_ids
        batchable = can_batch(model)
        self.max_batch_size = max_batch_size if batchable else 1
        # Two tokens at least (one gives no log-prob to reuse); plain caches only (copied).
        self._prefix_ids = prefix_ids if batchable and len(prefix_ids) >= 2 else []
        self._prefix: PromptPrefix | None = None
        self.stats = DecodeStats()
        self._condition = threading.Condition()
        self._waiting: FairQueue[DecodeRequest] = FairQueue()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0

    def submit(self, request: DecodeRequest) -> None:
        with self._condition:
            self._waiting.put(request.fairness_key, request)
            self._start_thread()
            self._condition.notify()

    def waiting(self) -> int:
        """Requests not yet admitted into the running batch."""
        with self._condition:
            return len(self._waiting)

    def _start_thread(self) -> None:
        """Start the decoding thread, once per process (again in a forked child)."""
        if self._thread is not None and self._thread_pid == os.getpid():
            return
        self._thread_pid = os.getpid()
        self._thread = threading.Thread(target=self._decode_forever, name="local-decoder")
        self._thread.daemon = True
        self._thread.start()

    def _decode_forever(self) -> None:
        batch: DecodeBatch[DecodeRequest] = DecodeBatch()
        with torch.inference_mode():
            while True:
                self._prefill_and_join(batch, self._admit(len(batch)))
                self._leave(batch, [r.cancelled.is_set() for r in batch.rows], "cancelled")
                if not batch:
                    continue
                try:
                    self._step(batch)
                except Exception as exc:  # the batch's state is unknown: end every sequence in it
                    log.exception("decode_step_failed", batch=len(batch))
                    self._fail(batch.rows, exc)
                    batch = DecodeBatch()

    def _admit(self, running: int) -> list[DecodeRequest]:
        """The waiting requests to join the batch now, in turn; waits while there is no work."""
        with self._condition:
            while not running and not len(self._waiting):
                self._condition.wait()
            joining: list[DecodeRequest] = []
            while running + len(joining) < self.max_batch_size:
                request = self._waiting.pop()
                if request is None:
                    break
                joining.append(request)
                self.stats.admitted.append(request.fairness_key)
            return joining

    def _prefill_and_join(
        self, batch: DecodeBatch[DecodeRequest], requests: list[DecodeRequest]
    ) -> None:
        """Prefill the admitted requests (in packs) and let those not yet ended join."""
        live = []
        for request in requests:
            if request.cancelled.is_set():
                request.finish_reason = "cancelled"
                request.done.set()
            else:
                live.append(request)
        if live and self._prefix_ids and self._prefix is None:
            try:
                self._prefix = PromptPrefix.run(self._model, self._prefix_ids)
            except Exception:  # prompts then run whole
                log.exception("prompt_prefix_failed", prefix_tokens=len(self._prefix_ids))
                self._prefix_ids = []
        for pack in packs([r.input_ids for r in live], self._prefix):
            self._prefill_pack(batch, [live[i] for i in pack])

    def _prefill_pack(
        self, batch: DecodeBatch[DecodeRequest], requests: list[DecodeRequest]
    ) -> None:
        try:
            prefilled = prefill(
                self._model,
                [r.input_ids for r in requests],
                prefix=self._prefix,
                logprobs=[r.wants_prompt_logprobs for r in requests],
            )
        except Exception as exc:
            if len(requests) > 1:  # one prompt may be at fault: the others run on their own
                for request in requests:
                    self._prefill_pack(batch, [request])
                return
            log.exception("prefill_failed", input_tokens=len(requests[0].input_ids))
            self._fail(requests, exc)
            return
        self.stats.prefix_reused += prefilled.prefix_reused
        self.stats.prefill_passes += 1
        self.stats.largest_prefill = max(self.stats.largest_prefill, len(requests))
        for request, logprobs in zip(requests, prefilled.prompt_logprobs, strict=True):
            request.prefill_logprobs = logprobs
        batch.join(requests, prefilled.cache, lengths=prefilled.lengths)
        # The prefill's last logits give each request its first token (none asked: it ends).
        generating = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        ended = [True] * len(requests)
        if generating:
            chosen = self._choose(
                [requests[i] for i in generating], prefilled.next_logits[generating]
            )
            for i, is_over in zip(generating, chosen, strict=True):
                ended[i] = is_over
        self._leave(batch, [False] * (len(batch) - len(requests)) + ended, None)

    def _step(self, batch: DecodeBatch[DecodeRequest]) -> None:
        self.stats.steps += 1
        self.stats.sequences_stepped += len(batch)
        self.stats.current_batch = len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        logits = batch.step(self._model, [request.next_token for request in batch.rows])
        self._leave(batch, self._choose(batch.rows, logits), None)

    def _choose(self, requests: list[DecodeRequest], logits: torch.Tensor) -> list[bool]:
        """Record each request's next token from its row of ``logits``; which have ended."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        best = torch.topk(logprobs, max(1, *(request.top_n for request in requests)))
        return [
            request.record(ids, values, self._eos_ids)
            for request, ids, values in zip(
                requests, best.indices.tolist(), best.values.tolist(), strict=True
            )
        ]

    def _leave(
        self, batch: DecodeBatch[DecodeRequest], ended: list[bool], reason: FinishReason | None
    ) -> None:
        """Let the ended rows go (their callers wake up), keeping the others."""
        if not any(ended):
            return
        for request, is_over in zip(batch.rows, ended, strict=True):
            if is_over:
                request.finish_reason = reason or request.finish_reason
                request.done.set()
        batch.keep([i for i, is_over in enumerate(ended) if not is_over])
        self.stats.current_batch = len(batch)

    @staticmethod
    def _fail(requests: list[DecodeRequest], error: BaseException) -> None:
        for request in requests:
            request.error = error
            request.done.set()
