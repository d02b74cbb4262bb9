"""The ledger's input tokens on each kind of model server, as those servers behave by default:
API -> Redis -> a real Celery worker -> the server over HTTP -> PostgreSQL.

- TGI 3.x (scripted): no prefill; the count comes from the ``x-prompt-tokens`` header.
- ``twotier model-server`` on the real local model: the same, and the count is exactly the
  tokens the model ran (the prompt in the chat template), which its tokenizer confirms.
- OpenAI-compatible (scripted): ``usage.prompt_tokens``; a server with no usage is charged
  the estimate, marked ``input_tokens_estimated``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from services.db import session_scope
from services.llm.local_model import LocalModel
from services.llm.model_server import create_model_server
from services.llm.token_count import estimate_tokens
from services.models import ModelCall
from services.settings import get_settings
from tests.celery_workers import CeleryWorker
from tests.conftest import TenantApi
from tests.local_model_fixtures import load_bundled_model
from tests.scripted_openai import ScriptedOpenAI
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread

LOCAL_MODEL_ID = "smollm2-via-model-server"


def ledger_row(query_id: str) -> ModelCall:
    with session_scope() as session:
        [row] = session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)).all()
        return row


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    small = get_settings().small
    prices = Decimal(str(small.price_input_per_mtok)), Decimal(str(small.price_output_per_mtok))
    return (input_tokens * prices[0] + output_tokens * prices[1]) / Decimal(1_000_000)


@pytest.fixture
def small_worker(log_dir: Path) -> Iterator[Callable[[dict[str, str]], CeleryWorker]]:
    """A worker whose small tier the test points elsewhere (the API's settings stay as they
    are: they do not take part in the small call)."""
    started: list[CeleryWorker] = []

    def start(env: dict[str, str]) -> CeleryWorker:
        name = f"tokens-{uuid.uuid4().hex[:6]}"
        started.append(CeleryWorker(name, log_dir=log_dir, env=env).start())
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def test_tgi_3_without_prefill_is_charged_the_servers_count(
    small_worker: Callable[[dict[str, str]], CeleryWorker],
    make_tenant: Callable[..., TenantApi],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    small_worker({})
    tenant = make_tenant()
    prompt = unique("Is the Atlantic larger than the Indian Ocean?")
    small_tgi.script(prompt, answer="Yes it is")
    query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=8)["id"])
    assert query["status"] == "succeeded"
    row = ledger_row(query["id"])
    assert (row.model, row.tier, row.input_tokens_estimated) == ("test/small-4bit", "small", False)
    assert row.input_tokens == len(prompt.split()) > 0
    assert row.cost == expected_cost(row.input_tokens, 3)

    # A TGI-like server with neither the header nor /tokenize: a marked estimate, never 0.
    other = unique("Is the Pacific larger still?")
    small_tgi.sends_prompt_tokens_header = small_tgi.has_tokenize_route = False
    try:
        query = tenant.wait_finished(tenant.submit(other, max_new_tokens=8)["id"])
    finally:
        small_tgi.sends_prompt_tokens_header = small_tgi.has_tokenize_route = True
    row = ledger_row(query["id"])
    assert row.input_tokens_estimated
    assert row.input_tokens == estimate_tokens(other) > 0


def test_openai_compatible_servers_are_charged_usage_or_a_marked_estimate(
    small_worker: Callable[[dict[str, str]], CeleryWorker],
    make_tenant: Callable[..., TenantApi],
    unique: Callable[[str], str],
) -> None:
    server = ScriptedOpenAI("small-chat-model", api_key="sk-small").start()
    try:
        small_worker({
            "TWOTIER_SMALL__BACKEND": "openai", "TWOTIER_SMALL__URL": server.url,
            "TWOTIER_SMALL__MODEL": "", "TWOTIER_SMALL__API_KEY": "sk-small",
        })  # fmt: skip
        tenant = make_tenant()
        prompt = unique("Is a tomato a fruit?")
        server.script(prompt, answer="Yes botanically")
        query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=8)["id"])
        with_usage = ledger_row(query["id"])

        server.sends_usage = False
        bare = unique("Is a cucumber a fruit?")
        server.script(bare, answer="Yes it is too")
        query = tenant.wait_finished(tenant.submit(bare, max_new_tokens=8)["id"])
        without_usage = ledger_row(query["id"])
    finally:
        server.stop()
    # The model's name is the server's (TWOTIER_SMALL__MODEL is unset): read at start.
    assert with_usage.model == without_usage.model == "small-chat-model"
    assert (with_usage.input_tokens, with_usage.output_tokens) == (len(prompt.split()), 2)
    assert not with_usage.input_tokens_estimated
    assert without_usage.input_tokens_estimated
    assert without_usage.input_tokens == estimate_tokens(bare) > 0
    assert without_usage.output_tokens == 4  # one log-prob entry per generated token
    assert without_usage.cost == expected_cost(without_usage.input_tokens, 4)


@pytest.fixture(scope="module")
def local_model() -> LocalModel:
    return load_bundled_model()


def test_model_server_on_the_real_model_is_charged_the_tokens_it_ran(
    small_worker: Callable[[dict[str, str]], CeleryWorker],
    make_tenant: Callable[..., TenantApi],
    local_model: LocalModel,
    unique: Callable[[str], str],
) -> None:
    server = ServerThread(create_model_server(local_model, model_id=LOCAL_MODEL_ID)).start()
    try:
        small_worker({"TWOTIER_SMALL__URL": server.url, "TWOTIER_SMALL__MODEL": ""})
        tenant = make_tenant()
        prompt = unique("What is the capital of France?")
        query = tenant.wait_finished(tenant.submit(prompt, max_new_tokens=4)["id"])
    finally:
        server.stop()
    assert query["status"] == "succeeded"
    row = ledger_row(query["id"])
    assert (row.model, row.input_tokens_estimated) == (LOCAL_MODEL_ID, False)
    # What the server ran is the prompt in the chat template: the tokenizer's count of it.
    ran = len(local_model.encode(prompt))
    assert abs(row.input_tokens - ran) <= 2
    bare_prompt = len(local_model.tokenizer(prompt)["input_ids"])
    assert row.input_tokens > bare_prompt  # the template's tokens are charged too
    assert 1 <= row.output_tokens <= 4
    assert row.cost == expected_cost(row.input_tokens, row.output_tokens)
