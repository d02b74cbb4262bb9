"""The first-token margin: how far the top-1 candidate is ahead of the top-2."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

from services.llm.base import TokenCandidate

MarginKind = Literal["probability", "logit"]

# A first token with a single candidate has no runner-up; a logit margin then has no finite
# value, so it is capped here (a log-prob gap of 100 is far beyond any real runner-up).
MAX_LOGIT_MARGIN = 100.0


class MarginUnavailable(ValueError):
    """The model returned no first-token candidates (top_n_tokens was not honoured)."""


def first_token_margin(
    candidates: Iterable[TokenCandidate],
    *,
    kind: MarginKind = "probability",
    skip_surface_variants: bool = False,
) -> float:
    """p(top-1) - p(top-2) (or the log-prob difference for ``kind="logit"``).

    Candidates are sorted here: servers may return them unsorted, and ties can return more
    than n. With ``skip_surface_variants`` a runner-up that is a surface variant of the top-1
    token (" Paris" vs "Paris") is not counted as a competitor.
    """
    ranked = sorted(_dedupe(candidates), key=lambda c: c.logprob, reverse=True)
    if not ranked:
        raise MarginUnavailable("the model returned no first-token candidates")
    top = ranked[0]
    runner_up = next(
        (c for c in ranked[1:] if not (skip_surface_variants and _is_variant(top.text, c.text))),
        None,
    )
    if kind == "logit":
        if runner_up is None:
            return MAX_LOGIT_MARGIN
        return min(top.logprob - runner_up.logprob, MAX_LOGIT_MARGIN)
    second = math.exp(runner_up.logprob) if runner_up is not None else 0.0
    return math.exp(top.logprob) - second


def _dedupe(candidates: Iterable[TokenCandidate]) -> list[TokenCandidate]:
    seen: set[int] = set()
    unique = []
    for candidate in candidates:
        if candidate.token_id not in seen and math.isfinite(candidate.logprob):
            seen.add(candidate.token_id)
            unique.append(candidate)
    return unique


def _is_variant(a: str, b: str) -> bool:
    a_norm, b_norm = a.strip().lower(), b.strip().lower()
    if not a_norm or not b_norm:
        return a_norm == b_norm
    return a_norm in b_norm or b_norm in a_norm
