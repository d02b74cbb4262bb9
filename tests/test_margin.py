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
    label_in_text,
    label_margin,
    margin_and_answer,
    scored_margin,
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


LABELS = ["positive", "negative"]
# A first token that starts no label: the model began with prose.
PROSE = [candidate(1, " The", 0.6), candidate(2, " It", 0.3), candidate(3, " Neutral", 0.05)]


def test_scored_labels_answer_a_label_with_the_margin_over_their_normalised_probabilities() -> None:
    text = "The review is positive, but it's also a bit negative."
    scores = [math.log(0.03), math.log(0.01)]  # p(label | prompt), normalised to 0.75 / 0.25
    margin, answer = margin_and_answer(PROSE, text, LABELS, label_logprobs=scores)
    assert answer == "positive"
    assert margin == pytest.approx(0.75 - 0.25)
    assert scored_margin(scores, LABELS, kind="logit") == (pytest.approx(math.log(3)), "positive")
    assert scored_margin(scores, LABELS, kind="share") == (pytest.approx(0.75), "positive")
    assert scored_margin([-900.0, -1.0], LABELS) == (pytest.approx(1.0), "negative")


def test_a_label_among_the_first_token_candidates_wins_over_the_scores() -> None:
    candidates = [*PROSE, candidate(4, " Negative", 0.02)]
    margin, answer = label_margin(candidates, "The", LABELS, label_logprobs=[-0.1, -5.0])
    assert (margin, answer) == (pytest.approx(0.02), "negative")


def test_unscored_labels_fall_back_to_the_text_then_the_candidates_with_no_margin() -> None:
    text = "Overall NEGATIVE, though parts are positive."
    assert label_margin(PROSE, text, LABELS) == (0.0, "negative")
    assert label_margin(PROSE, "The film was long.", ["long", "film"]) == (0.0, "film")
    named = [candidate(1, " Mixed", 0.5), candidate(2, "Pos.", 0.1), candidate(3, "(NEG", 0.3)]
    assert label_margin(named, "Mixed feelings", ["Pos", "Neg"]) == (0.0, "Neg")
    assert label_margin(PROSE, "I cannot say.", LABELS) == (0.0, "positive")


def test_a_label_is_found_in_text_as_a_whole_word_with_the_tenants_spelling() -> None:
    assert label_in_text("It is not good", ["no", "Not  good"]) == "Not  good"
    assert label_in_text("nothing here", ["no", "yes"]) is None
    assert label_in_text("very positive", ["positive", "very positive"]) == "very positive"
    assert label_in_text("(B) because", ["A", "B"]) == "B"
