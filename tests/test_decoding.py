"""The local model's decoder: concurrent generations share steps, a cancelled one stops at
once, and waiting requests are admitted in turns across tenants (the real bundled model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from services.llm.fair_queue import FairQueue
from services.llm.local_model import LocalModel
from services.llm.tgi_wire import DetailedGeneration
from tests.local_model_fixtures import load_bundled_model
from tests.waiting import wait_for

LONG = "Write a long story about a dragon who learns to fly."
SHORT = "What is the capital of France?"
MAX_LONG_TOKENS = 300


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return load_bundled_model()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def start_long(
    model: LocalModel, pool: ThreadPoolExecutor, cancelled: threading.Event, key: str = ""
) -> Future[DetailedGeneration]:
    """A generation that runs until cancelled, waited for until it is being decoded."""
    steps_before = model.decoder.stats.steps
    future = pool.submit(
        model.generate,
        model.encode(LONG),
        max_new_tokens=MAX_LONG_TOKENS,
        top_n=2,
        fairness_key=key,
        cancelled=cancelled,
    )
    wait_for(lambda: model.decoder.stats.steps > steps_before, timeout=60, what="decoding")
    return future


def test_a_cancelled_generation_stops_within_a_step(
    model: LocalModel, pool: ThreadPoolExecutor
) -> None:
    cancelled = threading.Event()
    running = start_long(model, pool, cancelled)
    steps_at_cancel = model.decoder.stats.steps
    cancelled.set()
    generation = running.result(timeout=60)
    assert generation.finish_reason == "cancelled"
    # One token from the prefill, one per step: at most one step after the cancel.
    assert len(generation.tokens) <= steps_at_cancel + 2
    assert len(generation.tokens) < MAX_LONG_TOKENS / 4
    assert generation.text.strip()


def test_concurrent_generations_are_decoded_in_the_same_steps(
    model: LocalModel, pool: ThreadPoolExecutor
) -> None:
    alone = model.generate(model.encode(SHORT), max_new_tokens=12, top_n=5)
    cancelled = threading.Event()
    running = start_long(model, pool, cancelled)
    stats = model.decoder.stats
    steps_before, stepped_before = stats.steps, stats.sequences_stepped
    together = model.generate(model.encode(SHORT), max_new_tokens=12, top_n=5)
    steps, stepped = stats.steps - steps_before, stats.sequences_stepped - stepped_before
    cancelled.set()
    running.result(timeout=60)
    assert stats.largest_batch >= 2
    # The steps that decoded two sequences at once: one per token of the short answer after
    # its first (which the prefill gives); give or take one read while a step ran.
    assert stepped - steps >= len(together.tokens) - 2 > 0
    # Greedy answers do not depend on batch-mates beyond float noise.
    assert [t.id for t in together.tokens] == [t.id for t in alone.tokens]
    assert together.text == alone.text
    for mine, theirs in zip(together.top_tokens[0], alone.top_tokens[0], strict=True):
        assert mine.id == theirs.id
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-3)


def test_a_flood_from_one_tenant_does_not_keep_another_waiting(
    model: LocalModel, pool: ThreadPoolExecutor
) -> None:
    one_at_a_time = LocalModel(model.source, max_batch_size=1)
    cancelled = threading.Event()
    running = start_long(one_at_a_time, pool, cancelled, key="flood")
    ids = one_at_a_time.encode(SHORT)
    flood = [
        pool.submit(one_at_a_time.generate, ids, max_new_tokens=1, top_n=2, fairness_key="flood")
        for _ in range(5)
    ]
    wait_for(lambda: one_at_a_time.decoder.waiting() == 5, timeout=30, what="the flood queued")
    other = pool.submit(one_at_a_time.generate, ids, max_new_tokens=1, top_n=2, fairness_key="b")
    wait_for(lambda: one_at_a_time.decoder.waiting() == 6, timeout=30, what="b queued")
    cancelled.set()
    for future in [running, *flood, other]:
        future.result(timeout=120)
    admitted = list(one_at_a_time.decoder.stats.admitted)
    # First come first served would admit b last, after the whole flood.
    assert admitted == ["flood", "flood", "b", "flood", "flood", "flood", "flood"]


def test_requests_admitted_together_are_prefilled_in_one_pass(
    model: LocalModel, pool: ThreadPoolExecutor
) -> None:
    """Two places free up at once (two generations cancelled together) with three waiting:
    two are admitted and prefilled in one pass, and answer as they would alone."""
    two_places = LocalModel(model.source, max_batch_size=2)
    prompts = [two_places.encode(text) for text in (SHORT, "Hi", "Name a colour.")]
    alone = [model.generate(ids, max_new_tokens=6, top_n=3) for ids in prompts]
    cancelled = threading.Event()
    running = [start_long(two_places, pool, cancelled) for _ in range(2)]
    wait_for(lambda: two_places.decoder.stats.current_batch == 2, timeout=60, what="a full batch")
    waiting = [pool.submit(two_places.generate, ids, max_new_tokens=6, top_n=3) for ids in prompts]
    wait_for(lambda: two_places.decoder.waiting() == 3, timeout=30, what="three queued")
    cancelled.set()
    together = [future.result(timeout=120) for future in waiting]
    for future in running:
        assert future.result(timeout=60).finish_reason == "cancelled"
    assert two_places.decoder.stats.largest_prefill == 2
    for mine, theirs in zip(together, alone, strict=True):
        assert [t.id for t in mine.tokens] == [t.id for t in theirs.tokens]
        assert [t.id for t in mine.top_tokens[0]] == [t.id for t in theirs.top_tokens[0]]
        for packed, single in zip(mine.top_tokens[0], theirs.top_tokens[0], strict=True):
            assert packed.logprob == pytest.approx(single.logprob, abs=1e-3)


def test_the_fair_queue_takes_keys_in_turn_and_each_key_in_order() -> None:
    waiting: FairQueue[str] = FairQueue()
    for item in ("a1", "a2", "a3", "b1", "c1", "b2"):
        waiting.put(item[0], item)
    taken = [waiting.pop() for _ in range(len(waiting))]
    assert taken == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert waiting.pop() is None
    assert len(waiting) == 0


def test_a_prompt_after_the_chat_templates_opening_runs_only_its_own_tokens(
    model: LocalModel,
) -> None:
    """Every templated prompt starts with the same tokens: they run once, and a prefill that
    reuses them gives the log-probs and tokens a full prefill gives."""
    input_ids = model.encode(SHORT)
    reused_before = model.decoder.stats.prefix_reused
    reused = model.generate(input_ids, max_new_tokens=8, top_n=2, prompt_logprobs=True)
    assert model.decoder.stats.prefix_reused == reused_before + 1

    full = load_bundled_model(chat_template=False)  # no template, so no shared prefix
    alone = full.generate(input_ids, max_new_tokens=8, top_n=2, prompt_logprobs=True)
    assert full.decoder.stats.prefix_reused == 0
    assert [t.id for t in reused.tokens] == [t.id for t in alone.tokens]
    assert [t.id for t in reused.prefill] == input_ids
    for with_prefix, without in zip(reused.prefill[1:], alone.prefill[1:], strict=True):
        assert with_prefix.logprob == pytest.approx(without.logprob, abs=1e-4)
