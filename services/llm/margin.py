"""The first-token margin: how far the top-1 candidate is ahead of the top-2."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from services.llm.base import TokenCandidate

# "probability" is the paper's p1 - p2 and "logit" its code's log p1 - log p2; "share" goes
# beyond the paper: p1 / (sum over the candidates or classes), the top one's share of the mass
# the model put on the answers it could give (for two classes it ranks like "logit").
MarginKind = Literal["probability", "logit", "share"]

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
    if kind == "share":
        return math.exp(top.logprob) / sum(math.exp(c.logprob) for c in ranked)
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


def choice_margin(
    candidates: Iterable[TokenCandidate],
    choices: Sequence[str],
    *,
    kind: MarginKind = "probability",
) -> tuple[float, str | None]:
    """The margin over the class names, and the winning class (None if none was a candidate).

    Each candidate counts for the class whose name starts with it (its first sub-token), after
    dropping case and spaces, so " Positive", "positive" and "Pos" all count for "positive";
    a candidate that starts several class names is ambiguous and counts for none. A class's
    probability is the sum over its candidates; the margin is p(best class) - p(second class).
    """
    mass = class_probabilities(candidates, choices)
    if max(mass, default=0.0) == 0.0:
        return 0.0, None  # no class among the candidates: as unsure as it gets
    return _margin_over(mass, choices, kind=kind)


def scored_margin(
    label_logprobs: Sequence[float], choices: Sequence[str], *, kind: MarginKind = "probability"
) -> tuple[float, str]:
    """The margin over the labels' normalised probabilities, and the winning label.

    ``label_logprobs`` are the log-probs of each whole label as the prompt's continuation;
    normalised over the labels, p_i = exp(s_i) / sum_j exp(s_j), and the margin is taken over
    these as over the first-token class masses (for ``kind="logit"`` it is s_1 - s_2).
    """
    top = max(label_logprobs)
    weights = [math.exp(logprob - top) for logprob in label_logprobs]
    total = sum(weights)
    return _margin_over([weight / total for weight in weights], choices, kind=kind)


def _margin_over(
    mass: Sequence[float], choices: Sequence[str], *, kind: MarginKind
) -> tuple[float, str]:
    ranked = sorted(range(len(choices)), key=lambda i: mass[i], reverse=True)
    best, second = mass[ranked[0]], mass[ranked[1]] if len(ranked) > 1 else 0.0
    if kind == "logit":
        gap = math.log(best) - math.log(second) if second > 0 else MAX_LOGIT_MARGIN
        return min(gap, MAX_LOGIT_MARGIN), choices[ranked[0]]
    if kind == "share":
        return best / sum(mass), choices[ranked[0]]
    return best - second, choices[ranked[0]]


def class_probabilities(
    candidates: Iterable[TokenCandidate], choices: Sequence[str]
) -> list[float]:
    """Each class's probability mass among the candidates (see ``choice_margin``)."""
    names = [_normalised(choice) for choice in choices]
    mass = [0.0] * len(choices)
    for candidate in _dedupe(candidates):
        text = _normalised(candidate.text)
        owners = [i for i, name in enumerate(names) if text and name.startswith(text)]
        if len(owners) == 1:
            mass[owners[0]] += math.exp(candidate.logprob)
    return mass


def _normalised(text: str) -> str:
    return "".join(text.split()).lower()


def margin_and_answer(
    candidates: Sequence[TokenCandidate],
    text: str,
    choices: Sequence[str] | None,
    *,
    kind: MarginKind = "probability",
    skip_surface_variants: bool = False,
    label_logprobs: Sequence[float] | None = None,
) -> tuple[float, str]:
    """The decision's margin and the answer: with choices, over the labels, answering one of
    them (``label_margin``); without, over the whole vocabulary, answering the generated
    text."""
    if choices:
        return label_margin(candidates, text, choices, kind=kind, label_logprobs=label_logprobs)
    margin = first_token_margin(candidates, kind=kind, skip_surface_variants=skip_surface_variants)
    return margin, text


def label_margin(
    candidates: Sequence[TokenCandidate],
    text: str,
    choices: Sequence[str],
    *,
    kind: MarginKind = "probability",
    label_logprobs: Sequence[float] | None = None,
) -> tuple[float, str]:
    """The margin over the labels and the winning label, always one of ``choices`` as spelled
    there, from the first of these that applies:

    1. a label's first token is among the candidates: the margin over the candidates' class
       masses (``choice_margin``);
    2. the labels were scored (``label_logprobs``): the margin over their normalised
       probabilities (``scored_margin``);
    3. neither, as with a backend that cannot score (OpenAI chat): the label that the
       generated text starts with or else contains first, else the one named by the most
       probable candidate that names one, else the first label. The margin is then 0.0, as
       unsure as it gets: the model gave no label as its first token and no probabilities
       over the labels, so the policy ranks the query below every measured one.
    """
    margin, label = choice_margin(candidates, choices, kind=kind)
    if label is not None:
        return margin, label
    if label_logprobs is not None:
        return scored_margin(label_logprobs, choices, kind=kind)
    ranked = sorted(candidates, key=lambda c: c.logprob, reverse=True)
    named = (label_in_text(source, choices) for source in [text, *(c.text for c in ranked)])
    return 0.0, next((label for label in named if label is not None), choices[0])


def label_in_text(text: str, choices: Sequence[str]) -> str | None:
    """The label that occurs first in ``text`` as a whole word or phrase (case and runs of
    spaces aside; the longer label where two start at the same place), or None."""
    haystack = " ".join(text.split()).lower()
    found = []
    for index, choice in enumerate(choices):
        name = " ".join(choice.split()).lower()
        match = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", haystack) if name else None
        if match is not None:
            found.append((match.start(), -len(name), index))
    return choices[min(found)[2]] if found else None


def candidates_for(choices: Sequence[str] | None, *, default: int, most: int) -> int:
    """How many first-token candidates to ask for: enough to see every class (two spellings
    each), within what the server allows."""
    if not choices:
        return default
    return max(2, min(max(default, 2 * len(choices)), most))
