"""The OpenAI-compatible backend against a server speaking that wire format."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.llm.base import ModelError
from services.llm.margin import first_token_margin
from services.llm.openai_compat import OpenAIBackend
from services.llm.token_count import estimate_tokens
from tests.scripted_openai import ScriptedOpenAI


@pytest.fixture(scope="module")
def openai_server() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI("big-model", api_key="sk-test").start()
    yield server
    server.stop()


def client(server: ScriptedOpenAI, api: str, **overrides: object) -> OpenAIBackend:
    options: dict[str, object] = {
        "url": server.url, "model": server.model, "api": api, "api_key": server.api_key,
        "timeout_s": 5.0, "top_n_tokens": 5, "attempts": 1,
    }  # fmt: skip
    return OpenAIBackend(**{**options, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_answer_margin_and_usage_from_either_api(
    openai_server: ScriptedOpenAI, unique: Callable[[str], str], api: str
) -> None:
    prompt = unique("Is the review positive?")
    openai_server.script(prompt, answer="Yes, clearly", margin=0.4)
    with client(openai_server, api) as backend:
        generation = backend.generate(prompt, max_new_tokens=8)
    assert generation.text == "Yes, clearly"
    assert first_token_margin(generation.first_token_candidates) == pytest.approx(0.4)
    assert generation.input_tokens == len(prompt.split())
    assert generation.output_tokens == 2
    sent = openai_server.requests[-1]
    assert sent["temperature"] == 0
    assert sent["max_tokens"] == 8
    if api == "chat":
        assert sent["logprobs"] is True
        assert sent["top_logprobs"] == 5
        assert sent["messages"] == [{"role": "user", "content": prompt}]
    else:
        assert sent["logprobs"] == 5


def test_a_url_with_or_without_v1_reaches_the_same_endpoint(
    openai_server: ScriptedOpenAI, unique: Callable[[str], str]
) -> None:
    prompt = unique("hello")
    with client(openai_server, "chat", url=f"{openai_server.url}/v1/") as backend:
        assert backend.generate(prompt, max_new_tokens=4).text == "large answer"


def test_wrong_key_or_model_is_a_permanent_error(
    openai_server: ScriptedOpenAI, unique: Callable[[str], str]
) -> None:
    with (
        client(openai_server, "chat", api_key="sk-wrong") as backend,
        pytest.raises(ModelError, match="HTTP 401: invalid_api_key"),
    ):
        backend.generate(unique("hi"), max_new_tokens=4)
    with (
        client(openai_server, "chat", model="nope") as backend,
        pytest.raises(ModelError, match="HTTP 404: model_not_found"),
    ):
        backend.generate(unique("hi"), max_new_tokens=4)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_server_without_usage_is_charged_an_estimate_marked_as_such(
    openai_server: ScriptedOpenAI, unique: Callable[[str], str], api: str
) -> None:
    prompt = unique("Is the review positive?")
    openai_server.script(prompt, answer="Yes, clearly so", margin=0.4)
    openai_server.sends_usage = False
    try:
        with client(openai_server, api) as backend:
            generation = backend.generate(prompt, max_new_tokens=8)
    finally:
        openai_server.sends_usage = True
    assert generation.input_tokens_estimated
    assert generation.input_tokens == estimate_tokens(prompt) >= len(prompt.split())
    assert generation.output_tokens == 3  # one log-prob entry per generated token


def test_more_than_20_top_logprobs_is_refused_as_openai_does(
    openai_server: ScriptedOpenAI, unique: Callable[[str], str]
) -> None:
    with (
        client(openai_server, "chat", top_n_tokens=21) as backend,
        pytest.raises(ModelError, match="HTTP 400: invalid_request_error"),
    ):
        backend.generate(unique("hi"), max_new_tokens=4)
