"""The first-token margin, from the candidates a server returns."""

from __future__ import annotations

import math

import pytest

from services.llm.base import TokenCandidate
from services.llm.margin import (
    MAX_LOGIT_MARGIN,
    MarginUnavailable,
    choice_margin,
    first_token_margin,
)


def candidate(token_id: int, text: str, p: float) -> TokenCandidate:
    return TokenCandidate(token_id=token_id, text=text, logprob=math.log(p))


def test_probability_margin_sorts_unsorted_candidates() -> None:
    candidates = [candidate(2, " No", 0.3), candidate(3, " Maybe", 0.1), candidate(1, " Yes", 0.6)]
    assert first_token_margin(candidates) == pytest.approx(0.3)


def test_logit_margin_is_the_log_probability_gap() -> None:
    candidates = [candidate(1, "A", 0.6), candidate(2, "B", 0.2)]
    assert first_token_margin(candidates, kind="logit") == pytest.approx(math.log(3))


def test_duplicate_candidates_from_ties_count_once() -> None:
    candidates = [candidate(1, "A", 0.5), candidate(1, "A", 0.5), candidate(2, "B", 0.4)]
    assert first_token_margin(candidates) == pytest.approx(0.1)


def test_a_single_candidate_has_no_runner_up() -> None:
    assert first_token_margin([candidate(1, "A", 0.97)]) == pytest.approx(0.97)
    assert first_token_margin([candidate(1, "A", 0.97)], kind="logit") == MAX_LOGIT_MARGIN


def test_surface_variants_of_the_top_token_are_skipped_when_asked() -> None:
    candidates = [
        candidate(1, " Paris", 0.5),
        candidate(2, "Paris", 0.3),
        candidate(3, " Rome", 0.1),
    ]
    assert first_token_margin(candidates) == pytest.approx(0.2)
    assert first_token_margin(candidates, skip_surface_variants=True) == pytest.approx(0.4)


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(MarginUnavailable):
        first_token_margin([])


def test_choice_margin_merges_surface_variants_of_each_class() -> None:
    candidates = [
        candidate(1, " Positive", 0.30),
        candidate(2, "positive", 0.20),
        candidate(3, " Neg", 0.25),
        candidate(4, " The", 0.15),
    ]
    margin, label = choice_margin(candidates, ["positive", "negative"])
    assert label == "positive"
    assert margin == pytest.approx(0.50 - 0.25)
    logit, _ = choice_margin(candidates, ["positive", "negative"], kind="logit")
    assert logit == pytest.approx(math.log(0.5 / 0.25))


def test_choice_margin_ignores_ambiguous_prefixes_and_reports_no_class_seen() -> None:
    candidates = [candidate(1, " P", 0.6), candidate(2, " Pizza", 0.1)]
    margin, label = choice_margin(candidates, ["pasta", "pizza"])
    assert (margin, label) == (pytest.approx(0.1), "pizza")  # " P" starts both names
    assert choice_margin([candidate(1, "The", 0.9)], ["A", "B"]) == (0.0, None)
    letters, winner = choice_margin([candidate(1, " B", 0.7), candidate(2, "C", 0.2)], "ABCD")
    assert winner == "B"
    assert letters == pytest.approx(0.5)


def test_share_is_the_top_candidates_part_of_the_mass() -> None:
    candidates = [candidate(1, " Yes", 0.6), candidate(2, " No", 0.2)]
    assert first_token_margin(candidates, kind="share") == pytest.approx(0.75)
    share, label = choice_margin(candidates, ["yes", "no"], kind="share")
    assert (share, label) == (pytest.approx(0.75), "yes")
