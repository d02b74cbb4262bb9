"""Queries with choices end to end (API -> real worker -> scripted TGI -> Postgres): the answer
is always one of the labels, the call asks for no more tokens than a label needs, and scoring
the labels is charged with the tier's call.

The tests run in this order: the worker's TGI client remembers a server that sent no prefill,
so the test without prefill log-probs comes last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import select

from services import budgets
from services.accounting import current_price
from services.db import session_scope
from services.llm.labels import LABEL_TOKEN_SLACK, continuation
from services.models import ModelCall
from services.settings import get_settings
from tests.conftest import WARMUP, TenantApi
from tests.scripted_tgi import ScriptedTGI

pytestmark = pytest.mark.usefixtures("worker")

LABELS = ["positive", "negative"]
# The first token starts no label: the model began with prose.
PROSE = [(" The", 0.6), (" It", 0.3), (" Overall", 0.05)]
RAMBLING = "The review is positive, but it's also a bit negative. It depends on the reader."


def ledger(query_id: str) -> dict[str, ModelCall]:
    with session_scope() as session:
        calls = session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)).all()
        return {call.tier: call for call in calls}


@pytest.fixture
def prefill_logprobs(small_tgi: ScriptedTGI, large_tgi: ScriptedTGI) -> Iterator[None]:
    """Both model servers run with ``--enable-prefill-logprobs``."""
    small_tgi.prefill_logprobs = large_tgi.prefill_logprobs = True
    yield
    small_tgi.prefill_logprobs = large_tgi.prefill_logprobs = False


@pytest.mark.usefixtures("prefill_logprobs")
def test_a_first_token_that_starts_no_label_still_answers_a_scored_label(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("Review: long, but the ending works. Positive or negative?")
    small_tgi.script(prompt, answer=RAMBLING, first_token=PROSE)
    small_tgi.script_labels(prompt, {"positive": -0.4, "negative": -1.5})
    query = tenant.wait_finished(tenant.submit(prompt, choices=LABELS)["id"])

    assert (query["status"], query["tier"], query["decision"]) == ("succeeded", "small", "warmup")
    assert query["answer"] == "positive"
    p_positive = 1 / (1 + math.exp(-1.1))  # the labels' probabilities, normalised over them
    assert query["margin"] == pytest.approx(p_positive - (1 - p_positive))
    [call] = small_tgi.parameters[prompt]
    assert call.max_new_tokens == 1 + LABEL_TOKEN_SLACK  # not the default 64
    assert all(small_tgi.calls[continuation(prompt, label)] == 1 for label in LABELS)
    words = len(prompt.split())
    charged = ledger(query["id"])["small"]  # one row: the generation and both scoring calls
    assert (charged.input_tokens, charged.output_tokens) == (3 * words + 2, 2 + 2)
    assert Decimal(query["cost"]["total"]) == charged.cost


@pytest.mark.usefixtures("prefill_logprobs")
def test_the_large_tier_answers_a_label_as_spelled_by_the_tenant(
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.5)
    for i in range(WARMUP):
        warm = unique(f"sure review {i}")
        small_tgi.script(warm, first_token=[(" Positive", 0.9 - i / 100), (" Negative", 0.01)])
        tenant.wait_finished(tenant.submit(warm, task="reviews", choices=LABELS)["id"])
    labels = ["Thumbs Up", "Thumbs Down"]
    prompt = unique("Review: I laughed, I cried. Verdict?")
    small_tgi.script(prompt, answer="Thumbs up", first_token=[(" Thumbs", 0.7), (" I", 0.2)])
    small_tgi.script_labels(prompt, {"Thumbs Up": -0.7, "Thumbs Down": -0.8})
    large_tgi.script(prompt, answer="It is a thumbs down from me", first_token=PROSE)
    large_tgi.script_labels(prompt, {"Thumbs Up": -3.0, "Thumbs Down": -0.2})
    query = tenant.wait_finished(tenant.submit(prompt, task="reviews", choices=labels)["id"])

    # " Thumbs" starts both labels, so it is neither's: the labels are scored, nearly a tie.
    assert query["margin"] == pytest.approx(math.tanh(0.05))
    assert (query["tier"], query["decision"]) == ("large", "below_threshold")
    assert query["answer"] == "Thumbs Down"
    assert [p.max_new_tokens for p in large_tgi.parameters[prompt]] == [2 + LABEL_TOKEN_SLACK]
    words = len(prompt.split())
    charged = ledger(query["id"])
    assert charged["large"].input_tokens == words + 2 * (words + 2)
    assert charged["small"].input_tokens == words + 2 * (words + 2)


def test_without_prefill_log_probs_the_answer_is_the_label_the_text_names(
    make_tenant: Callable[..., TenantApi], small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    tenant = make_tenant()
    prompt = unique("Review: could not stop watching. Positive or negative?")
    small_tgi.script(prompt, answer="Clearly negative about the pacing", first_token=PROSE)
    query = tenant.wait_finished(tenant.submit(prompt, choices=LABELS)["id"])

    assert (query["status"], query["answer"], query["margin"]) == ("succeeded", "negative", 0.0)
    words = len(prompt.split())
    charged = ledger(query["id"])["small"]  # the scoring call that found no prefill, too
    assert (charged.input_tokens, charged.output_tokens) == (2 * words + 1, 2 + 1)


def test_the_budget_reserves_for_scoring_the_labels() -> None:
    settings = get_settings()
    prompt = "Which is it?"
    with session_scope() as session:
        small, _ = budgets.worst_case_costs(
            session, settings, prompt=prompt, max_new_tokens=8, choices=["yes", "no"]
        )
        price = current_price(session, settings.small)
    prompt_tokens = len(prompt) + settings.prompt_overhead_tokens
    # The generation, then per label the prompt, a space and the label, and one new token.
    scoring = (prompt_tokens + 1 + 3) + (prompt_tokens + 1 + 2)
    assert small == price.cost(input_tokens=prompt_tokens + scoring, output_tokens=8 + 2)
