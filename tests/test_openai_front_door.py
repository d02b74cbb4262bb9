"""The OpenAI-compatible routes, called with OpenAI's own Python SDK over real HTTP: the API
server in a thread of this process, a real worker process, scripted TGI servers behind it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import func, select

from services.db import session_scope
from services.models import ModelCall, Query, Tenant
from services.settings import get_settings
from services.tenants import set_budget
from tests.conftest import WARMUP, TenantApi
from tests.openai_sdk import api_with, sdk_clients
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread

pytestmark = pytest.mark.usefixtures("worker")

ALIAS = "gpt-4o-mini"


@pytest.fixture(scope="module")
def api_server() -> Iterator[ServerThread]:
    """The API over HTTP with a model alias configured."""
    with api_with({"TWOTIER_OPENAI_MODEL_ALIASES": f'["{ALIAS}"]'}) as server:
        yield server


@pytest.fixture
def sdk(api_server: ServerThread) -> Iterator[Callable[[str], openai.OpenAI]]:
    """OpenAI's client, pointed at twotier, with an API key (closed after the test)."""
    with sdk_clients(api_server) as client_of:
        yield client_of


def ledger(query_id: str) -> dict[str, ModelCall]:
    with session_scope() as session:
        rows = session.scalars(select(ModelCall).where(ModelCall.query_id == query_id)).all()
        return {row.tier: row for row in rows}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def warm_up(tenant: TenantApi, small_tgi: ScriptedTGI, unique: Callable[[str], str]) -> None:
    for i in range(WARMUP):
        prompt = unique(f"warm-up {i}")
        small_tgi.script(prompt, answer="fine", margin=0.8 + i / 100)
        assert tenant.wait_finished(tenant.submit(prompt)["id"])["decision"] == "warmup"


def test_a_chat_completion_is_the_cascade_answer_with_usage_and_the_extension(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    large_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant(target_escalation_rate=0.3)
    warm_up(tenant, small_tgi, unique)
    prompt = unique("Who wrote the Voynich manuscript?")
    small_tgi.script(prompt, answer="Maybe Bacon", margin=0.02)
    large_tgi.script(prompt, answer="Nobody knows who")

    raw = sdk(tenant.api_key).chat.completions.with_raw_response.create(
        model="twotier", messages=user(prompt), max_tokens=12
    )
    completion = raw.parse()

    query_id = raw.headers["x-twotier-query-id"]
    assert completion.id == f"chatcmpl-{uuid.UUID(query_id).hex}"
    assert completion.object == "chat.completion"
    assert completion.model == "twotier"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Nobody knows who"
    assert choice.finish_reason == "stop"
    calls = ledger(query_id)
    assert set(calls) == {"small", "large"}  # charged over both tiers
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == sum(c.input_tokens for c in calls.values())
    assert completion.usage.completion_tokens == sum(c.output_tokens for c in calls.values())
    assert calls["large"].output_tokens == 3  # "Nobody knows who", one token a word
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    extension = (completion.model_extra or {})["twotier"]
    assert extension["query_id"] == query_id
    assert extension["tier"] == "large"
    assert extension["model"] == "test/large"
    assert extension["escalated"] is True
    assert extension["decision"] == "below_threshold"
    assert extension["margin"] == pytest.approx(0.02)
    assert extension["margin"] < extension["threshold"]
    total = sum((c.cost for c in calls.values()), Decimal(0))
    assert Decimal(extension["cost"]["total"]) == total > 0
    assert Decimal(extension["cost"]["large"]) == calls["large"].cost
    assert raw.headers["x-twotier-tier"] == "large"
    assert raw.headers["x-twotier-decision"] == "below_threshold"
    assert float(raw.headers["x-twotier-margin"]) == pytest.approx(0.02)
    assert Decimal(raw.headers["x-twotier-cost"]) == total
    # The same query as `POST /v1/queries` makes: the prompt as sent, its limit, its answer.
    with session_scope() as session:
        stored = session.get_one(Query, uuid.UUID(query_id))
        assert (stored.prompt, stored.max_new_tokens) == (prompt, 12)
        assert (stored.status, stored.answer) == ("succeeded", "Nobody knows who")


def test_an_answer_cut_at_max_tokens_finishes_with_length_and_an_alias_names_the_cascade(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("Count to five")
    small_tgi.script(prompt, answer="one two three four five", margin=0.9)
    completion = sdk(tenant.api_key).chat.completions.create(
        model=ALIAS, messages=user(prompt), max_completion_tokens=2
    )
    assert completion.model == ALIAS
    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"
    assert (completion.model_extra or {})["twotier"]["tier"] == "small"


def test_stream_true_sends_the_answer_as_openai_chunks(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("Is water wet?")
    small_tgi.script(prompt, answer="Yes it is", margin=0.9)
    stream = sdk(tenant.api_key).chat.completions.create(
        model="twotier",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Yes it is"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert (finish[0].model_extra or {})["twotier"]["tier"] == "small"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.completion_tokens == 3


def test_the_model_list_names_the_cascade_and_its_aliases(
    make_tenant: Callable[..., TenantApi], sdk: Callable[[str], openai.OpenAI]
) -> None:
    client = sdk(make_tenant().api_key)
    assert [model.id for model in client.models.list()] == ["twotier", ALIAS]
    assert client.models.retrieve(ALIAS).owned_by == "twotier"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-5")
    assert missing.value.code == "model_not_found"


def test_legacy_completions_answer_too(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("The capital of France is")
    small_tgi.script(prompt, answer="Paris", margin=0.9)
    completion = sdk(tenant.api_key).completions.create(
        model="twotier", prompt=prompt, max_tokens=4
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Paris"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 1


def test_a_bad_key_is_the_sdks_authentication_error(
    make_tenant: Callable[..., TenantApi], sdk: Callable[[str], openai.OpenAI]
) -> None:
    make_tenant()  # a tenant exists; the key is none of its
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(f"tt_{'0' * 16}_{'x' * 43}").chat.completions.create(
            model="twotier", messages=user("hi")
        )
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    assert refused.value.type == "invalid_request_error"


def test_over_budget_is_the_sdks_rate_limit_error_and_is_not_retried(
    make_tenant: Callable[..., TenantApi],
    api_server: ServerThread,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    with session_scope() as session:
        name = session.get_one(Tenant, tenant.tenant_id).name
        set_budget(session, name=name, period="monthly", hard_limit=Decimal(0), soft_limit=None)
    sent: list[httpx.URL] = []
    client = openai.OpenAI(
        base_url=f"{api_server.url}/v1",
        api_key=tenant.api_key,
        max_retries=2,
        http_client=openai.DefaultHttpxClient(
            event_hooks={"request": [lambda request: sent.append(request.url)]}
        ),
    )
    with client, pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="twotier", messages=user(unique("costly")))
    assert refused.value.code == "insufficient_quota"
    assert refused.value.type == "insufficient_quota"
    assert "budget" in refused.value.message
    assert len(sent) == 1  # x-should-retry: false; the SDK would retry a 429 twice otherwise
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(Query).where(Query.tenant_id == tenant.tenant_id)
        )
    assert count == 0


@pytest.mark.parametrize(
    ("options", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"temperature": 0.7}, "temperature", "unsupported_value"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"extra_body": {"guided_json": {}}}, "guided_json", "unknown_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
    ],
)
def test_what_the_cascade_cannot_honour_is_the_sdks_bad_request_error(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    options: dict[str, object],
    param: str,
    code: str,
) -> None:
    body: dict[str, object] = {"model": "twotier", "messages": user("hi"), **options}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(make_tenant().api_key).chat.completions.create(**body)  # type: ignore[call-overload]
    assert refused.value.status_code == 400
    assert (refused.value.param, refused.value.code) == (param, code)
    assert refused.value.type == "invalid_request_error"
    assert param in refused.value.message


def test_an_unknown_model_is_not_found_and_an_unfinished_query_names_its_id(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = make_tenant()
    client = sdk(tenant.api_key)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-5", messages=user("hi"))
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")

    prompt = unique("A slow question")
    small_tgi.script(prompt, answer="Slowly", hold=True)
    monkeypatch.setenv("TWOTIER_OPENAI_WAIT_S", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(openai.APIStatusError) as waiting:
            client.chat.completions.create(model="twotier", messages=user(prompt))
    finally:
        monkeypatch.delenv("TWOTIER_OPENAI_WAIT_S")
        get_settings.cache_clear()
        small_tgi.release(prompt)
    assert waiting.value.status_code == 504
    assert waiting.value.code == "query_not_finished"
    query_id = (waiting.value.body or {})["query_id"]  # type: ignore[index]
    assert f"/v1/queries/{query_id}" in waiting.value.message
    # Not sent again (x-should-retry: false): one query, which goes on and finishes.
    assert tenant.wait_finished(query_id)["answer"] == "Slowly"
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(Query).where(Query.tenant_id == tenant.tenant_id)
        )
    assert count == 1


def test_an_idempotency_key_answers_with_the_same_query(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    prompt = unique("Once only")
    small_tgi.script(prompt, answer="Done", margin=0.9)
    client = sdk(tenant.api_key)
    key = {"Idempotency-Key": unique("order")}
    first = client.chat.completions.create(
        model="twotier", messages=user(prompt), extra_headers=key
    )
    again = client.chat.completions.create(
        model="twotier", messages=user(prompt), extra_headers=key
    )
    assert first.id == again.id
    assert small_tgi.calls[prompt] == 1


def test_a_conversation_is_one_prompt_naming_its_speakers_and_twotier_fields_ride_along(
    make_tenant: Callable[..., TenantApi],
    sdk: Callable[[str], openai.OpenAI],
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    question = unique("And in French?")
    prompt = f"System: Be brief.\n\nUser: Say hello.\n\nAssistant: Hello.\n\nUser: {question}"
    small_tgi.script(prompt, answer="Bonjour", margin=0.9)
    raw = sdk(tenant.api_key).chat.completions.with_raw_response.create(
        model="twotier",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ],
        metadata={"ticket": "81"},
        extra_body={"twotier": {"task": "greetings"}},
    )
    assert raw.parse().choices[0].message.content == "Bonjour"
    with session_scope() as session:
        stored = session.get_one(Query, uuid.UUID(raw.headers["x-twotier-query-id"]))
        assert (stored.prompt, stored.task_label) == (prompt, "greetings")
        assert stored.request_metadata == {"ticket": "81"}
