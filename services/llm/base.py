"""What every backend returns, and the two kinds of failure the cascade tells apart."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TokenCandidate:
    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Generation:
    text: str
    first_token_candidates: tuple[TokenCandidate, ...]
    input_tokens: int
    output_tokens: int
    finish_reason: str
    # True when the server reported no prompt token count and ``input_tokens`` is this
    # project's estimate (services/llm/token_count.py); the ledger keeps the mark.
    input_tokens_estimated: bool = False
    # With choices whose first tokens were not among the candidates: each label's log-prob as
    # the prompt's continuation, in the order of the choices (None: the labels were not scored).
    label_logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LabelScores:
    """Each label's log-prob as the prompt's continuation, and what the scoring calls ran.

    ``logprobs`` is None when the backend cannot score; the tokens of any call it made to
    find that out are still counted, to be charged.
    """

    logprobs: tuple[float, ...] | None
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_estimated: bool = False


@dataclass(frozen=True)
class CallContext:
    """Whom a model call is for and whether its caller still wants it. A backend that
    schedules its calls itself (the local model) takes turns by ``fairness_key`` and stops a
    call once ``cancelled`` is set; one that sends calls to a server leaves that to the server.
    """

    fairness_key: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)


class ModelError(Exception):
    """The model server refused or broke the request; trying again will not help."""


class TransientModelError(ModelError):
    """Timeout, connection failure, overload or 5xx: the same call may succeed later."""


class ModelOverloaded(TransientModelError):
    """The server is full (429, or 503 that says so): back-pressure, not a failure.

    It slows the caller down and never counts towards the circuit breaker; the query waits
    in the queue instead of failing or falling back.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Backend(Protocol):
    model: str

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        top_n_tokens: int | None = None,
        context: CallContext | None = None,
    ) -> Generation:
        """Greedy answer and first-token candidates (``top_n_tokens`` overrides the default)."""
        ...

    def label_token_count(self, label: str) -> int | None:
        """How many tokens the model makes of ``label``; None if the backend cannot count."""
        ...

    def score_labels(self, prompt: str, labels: Sequence[str]) -> LabelScores:
        """Each label's log-prob as the continuation of ``prompt``, if the backend can tell."""
        ...
