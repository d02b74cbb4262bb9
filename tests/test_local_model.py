"""The local backend on the real 4-bit SmolLM2 GGUF, run on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from services.llm import labels
from services.llm.local_model import LocalBackend, LocalModel
from services.llm.margin import first_token_margin, margin_and_answer
from services.llm.model_files import ModelUnavailable, prepare_local_model
from tests.local_model_fixtures import load_bundled_model

EASY = "What is the capital of France?"
HARD = "Pick a random number between 1 and 100."


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return load_bundled_model()


def test_greedy_answers_are_deterministic(model: LocalModel) -> None:
    backend = LocalBackend(model, model="smol", top_n_tokens=5)
    first = backend.generate(EASY, max_new_tokens=12)
    second = backend.generate(EASY, max_new_tokens=12)
    assert first == second
    assert "Paris" in first.text
    assert first.input_tokens == len(model.encode(EASY)) > 5
    assert 1 <= first.output_tokens <= 12


def test_first_step_top_1_is_the_first_generated_token(model: LocalModel) -> None:
    generation = model.generate(model.encode(HARD), max_new_tokens=4, top_n=5, prompt_logprobs=True)
    assert generation.tokens[0].id == generation.top_tokens[0][0].id
    assert generation.tokens[0].logprob == generation.top_tokens[0][0].logprob
    for step in generation.top_tokens:
        logprobs = [token.logprob or 0.0 for token in step]
        assert logprobs == sorted(logprobs, reverse=True)
        assert len(step) == 5
    assert sum(math.exp(t.logprob or 0.0) for t in generation.top_tokens[0]) <= 1.0 + 1e-6
    assert generation.prefill[0].logprob is None
    assert len(generation.prefill) == len(model.encode(HARD))


def test_margins_are_probabilities_and_differ_between_easy_and_hard_prompts(
    model: LocalModel,
) -> None:
    backend = LocalBackend(model, model="smol", top_n_tokens=5)
    prompts = (EASY, HARD, "Translate 'chat' from French to English.")
    margins = [
        first_token_margin(backend.generate(prompt, max_new_tokens=2).first_token_candidates)
        for prompt in prompts
    ]
    assert all(0.0 <= margin <= 1.0 for margin in margins)
    assert len({round(margin, 6) for margin in margins}) == 3


def test_stops_at_end_of_sequence_or_length(model: LocalModel) -> None:
    short = model.generate(model.encode(EASY), max_new_tokens=3, top_n=2)
    assert short.finish_reason == "length"
    assert len(short.tokens) == 3
    full = model.generate(model.encode(EASY), max_new_tokens=64, top_n=2)
    assert full.finish_reason == "eos_token"
    assert full.tokens[-1].special


def test_a_labels_score_is_its_log_prob_as_the_answer_and_every_scored_token_counts(
    model: LocalModel,
) -> None:
    backend = LocalBackend(model, model="smol", top_n_tokens=5)
    choices = ["Berlin", "Paris", "a banana split"]
    scores = backend.score_labels(EASY, choices)
    assert scores.logprobs is not None
    prompt_ids = model.encode(EASY)
    label_ids = [model.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    # The same log-probs as the prefill of the prompt followed by the label.
    for score, ids in zip(scores.logprobs, label_ids, strict=True):
        prefill = model.generate(
            prompt_ids + ids, max_new_tokens=1, top_n=1, prompt_logprobs=True
        ).prefill
        assert score == pytest.approx(sum(t.logprob or 0.0 for t in prefill[-len(ids) :]), abs=1e-3)
    assert scores.logprobs[1] > scores.logprobs[0] > scores.logprobs[2]
    assert scores.input_tokens == sum(len(prompt_ids) + len(ids) for ids in label_ids)
    assert [backend.label_token_count(c) for c in choices] == [len(ids) for ids in label_ids]


def test_an_answer_that_starts_with_prose_still_answers_the_likeliest_label(
    model: LocalModel,
) -> None:
    backend = LocalBackend(model, model="smol", top_n_tokens=5)
    choices = ["Rome", "Paris", "Berlin"]
    generation = labels.generate(backend, EASY, choices=choices, max_new_tokens=64, top_n_tokens=5)
    assert generation.first_token_candidates[0].text.strip() == "The"  # "The capital of ..."
    assert generation.output_tokens <= labels.label_token_bound(backend, choices) < 64
    assert generation.label_logprobs is not None
    margin, answer = margin_and_answer(
        generation.first_token_candidates,
        generation.text,
        choices,
        label_logprobs=generation.label_logprobs,
    )
    assert answer == "Paris"
    assert 0.0 < margin <= 1.0


def test_a_named_model_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    console = Console(stderr=True)
    with pytest.raises(ModelUnavailable, match=r"no config\.json"):
        prepare_local_model(str(tmp_path), cache_dir=tmp_path, console=console)
    with pytest.raises(ModelUnavailable, match=r"neither a model folder nor a \.gguf"):
        prepare_local_model(str(tmp_path / "missing.gguf"), cache_dir=tmp_path, console=console)
