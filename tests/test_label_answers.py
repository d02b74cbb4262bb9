"""A model call for a query with choices, over TGI's wire format: bounded by the labels'
length, and the labels scored from the prefill when the first token starts none of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from services.llm import labels
from services.llm.base import Generation
from services.llm.margin import margin_and_answer
from services.llm.tgi import TGIBackend, label_logprob
from tests.scripted_tgi import ScriptedTGI

CHOICES = ["positive", "very negative"]  # one word and two: a token each, in ScriptedTGI
# A first token that starts no label: the model began with prose.
PROSE = [(" The", 0.6), (" It", 0.3), (" Neutral", 0.05)]


@pytest.fixture(scope="module")
def prefill_tgi() -> Iterator[ScriptedTGI]:
    """A TGI run with ``--enable-prefill-logprobs``."""
    server = ScriptedTGI("test/prefill", prefill_logprobs=True).start()
    yield server
    server.stop()


def backend(server: ScriptedTGI) -> TGIBackend:
    return TGIBackend(
        url=server.url, model=server.model_id, timeout_s=5, top_n_tokens=5, attempts=2
    )


def answer(client: TGIBackend, prompt: str, *, max_new_tokens: int = 64) -> Generation:
    return labels.generate(
        client, prompt, choices=CHOICES, max_new_tokens=max_new_tokens, top_n_tokens=5
    )


def test_the_call_asks_for_no_more_tokens_than_the_longest_label_needs(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("Review: a fine film. Sentiment?")
    small_tgi.script(prompt, answer="Positive indeed, and well acted", first_token=[
        (" Positive", 0.8), (" Very", 0.1),
    ])  # fmt: skip
    with backend(small_tgi) as client:
        generation = answer(client, prompt)
        shorter = answer(client, prompt, max_new_tokens=1)
    longest = 2 + labels.LABEL_TOKEN_SLACK  # "very negative"
    assert [p.max_new_tokens for p in small_tgi.parameters[prompt]] == [longest, 1]
    assert (generation.text, generation.output_tokens) == ("Positive indeed, and", longest)
    assert shorter.output_tokens == 1
    assert generation.label_logprobs is None  # a label started the answer: nothing scored
    assert all(small_tgi.calls[labels.continuation(prompt, c)] == 0 for c in CHOICES)


def test_labels_are_scored_from_the_prefill_when_the_first_token_starts_none(
    prefill_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("Review: it was fine I guess. Sentiment?")
    prefill_tgi.script(prompt, answer="The review is mixed", first_token=PROSE)
    prefill_tgi.script_labels(prompt, {"positive": -2.0, "very negative": -0.5})
    with backend(prefill_tgi) as client:
        generation = answer(client, prompt)
    assert generation.label_logprobs == (-2.0, -0.5)
    for choice in CHOICES:
        [scoring] = prefill_tgi.parameters[labels.continuation(prompt, choice)]
        assert (scoring.max_new_tokens, scoring.decoder_input_details) == (1, True)
    words = len(prompt.split())
    # The generation and both scoring calls, each charged what it ran.
    assert generation.input_tokens == words + (words + 1) + (words + 2)
    assert generation.output_tokens == 3 + 1 + 1
    margin, label = margin_and_answer(
        generation.first_token_candidates,
        generation.text,
        CHOICES,
        label_logprobs=generation.label_logprobs,
    )
    p_best = 1 / (1 + math.exp(-1.5))
    assert (margin, label) == (pytest.approx(p_best - (1 - p_best)), "very negative")


def test_without_prefill_the_labels_go_unscored_and_the_server_is_not_asked_again(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    first, second = unique("Is it good? A"), unique("Is it good? B")
    for prompt in (first, second):
        small_tgi.script(prompt, answer="Honestly positive, mostly", first_token=PROSE)
    with backend(small_tgi) as client:
        unscored = answer(client, first)
        again = answer(client, second)
    assert unscored.label_logprobs is None
    asked = [small_tgi.calls[labels.continuation(first, c)] for c in CHOICES]
    assert asked == [1, 0]  # one call found no prefill; it is charged all the same
    assert unscored.input_tokens == 2 * len(first.split()) + 1
    assert unscored.output_tokens == 3 + 1
    assert all(small_tgi.calls[labels.continuation(second, c)] == 0 for c in CHOICES)
    assert again.input_tokens == len(second.split())
    margin_label = margin_and_answer(
        again.first_token_candidates, again.text, CHOICES, label_logprobs=again.label_logprobs
    )
    assert margin_label == (0.0, "positive")  # the label the text names, with no margin


def test_a_label_is_read_only_from_the_prefills_last_tokens() -> None:
    def token(text: str, logprob: float | None) -> dict[str, object]:
        return {"id": 0, "text": text, "logprob": logprob}

    raw = [token("Sentiment", None), token(":", -1.0), token(" very", -0.25), token(" neg", -0.5),
           token("ative", -0.125)]  # fmt: skip
    assert label_logprob(raw, "very negative") == pytest.approx(-0.875)
    assert label_logprob(raw, "negative") == pytest.approx(-0.625)
    assert label_logprob(raw, "positive") is None
    chat = [*raw, token("<|im_end|>", -3.0), token("\n", -0.1)]  # behind a chat template
    assert label_logprob(chat, "very negative") is None
    assert label_logprob([token("negative", None)], "negative") is None
