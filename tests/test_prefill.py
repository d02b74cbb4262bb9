"""Prompts prefilled together in one packed forward pass get what each gets alone: the logits
after its last token, its prompt log-probs and its cache row (the real bundled model)."""

from __future__ import annotations

import pytest
import torch

from services.llm.local_model import LocalModel
from services.llm.prefill import MAX_PACKED_TOKENS, PromptPrefix, packs, prefill
from tests.local_model_fixtures import load_bundled_model

TEXTS = (
    "What is the capital of France?",
    "Hi",
    "Is the sentiment of this review positive or negative?\n\nA gorgeous, witty, seductive film.",
)


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return load_bundled_model()


def test_prompts_prefilled_together_get_what_each_gets_alone(model: LocalModel) -> None:
    # Templated prompts (after the shared prefix) and one without the template (all of it).
    prompts = [model.encode(text) for text in TEXTS] + [[1, 2060, 3714, 314, 253]]
    with torch.inference_mode():
        prefix = PromptPrefix.run(model.model, model.template_prefix())
        together = prefill(model.model, prompts, prefix=prefix, logprobs=[True] * len(prompts))
        alone = [prefill(model.model, [ids], prefix=prefix, logprobs=[True]) for ids in prompts]
    assert together.prefix_reused == len(TEXTS)
    assert together.lengths == [len(ids) for ids in prompts]
    width = max(together.lengths)
    for row, (ids, single) in enumerate(zip(prompts, alone, strict=True)):
        assert together.next_logits[row].argmax() == single.next_logits[0].argmax()
        torch.testing.assert_close(
            together.next_logits[row], single.next_logits[0], atol=1e-3, rtol=0
        )
        assert len(together.prompt_logprobs[row]) == len(ids) - 1
        assert together.prompt_logprobs[row] == pytest.approx(single.prompt_logprobs[0], abs=1e-4)
        for packed, own in zip(together.cache.layers, single.cache.layers, strict=True):
            # Left-padded with zeros to the longest prompt, then the prompt's own columns.
            assert not packed.keys[row, :, : width - len(ids)].any()
            torch.testing.assert_close(
                packed.keys[row, :, width - len(ids) :], own.keys[0], atol=1e-3, rtol=0
            )
            torch.testing.assert_close(
                packed.values[row, :, width - len(ids) :], own.values[0], atol=1e-3, rtol=0
            )


def test_prompt_log_probs_cost_nothing_unless_asked_for(model: LocalModel) -> None:
    prompts = [model.encode(text) for text in TEXTS]
    with torch.inference_mode():
        asked = prefill(model.model, prompts, prefix=None, logprobs=[False, True, False])
        unasked = prefill(model.model, prompts, prefix=None, logprobs=[False] * 3)
    assert [len(lp) for lp in asked.prompt_logprobs] == [0, len(prompts[1]) - 1, 0]
    assert unasked.prompt_logprobs == [[], [], []]
    torch.testing.assert_close(asked.next_logits, unasked.next_logits, atol=1e-3, rtol=0)


def test_packs_keep_the_order_and_the_token_budget() -> None:
    short, long = [7] * 100, [7] * (MAX_PACKED_TOKENS + 1)
    assert packs([short] * 3, None) == [[0, 1, 2]]
    assert packs([short] * 6, None) == [[0, 1, 2, 3, 4], [5]]
    assert packs([short, long, short], None) == [[0], [1], [2]]
    prefix = PromptPrefix(ids=[1, 2], cache=None, logprobs=[0.0], next_logits=torch.zeros(1))
    # Only what follows the shared prefix counts.
    assert packs([[1, 2, *short[:-2]]] * 5 + [[1, 2, 7]], prefix) == [[0, 1, 2, 3, 4, 5]]
    assert packs([], None) == []
