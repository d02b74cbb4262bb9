"""The TGI client against a server speaking TGI's wire format."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import httpx
import pytest

from services.llm.base import ModelError, ModelOverloaded, TransientModelError
from services.llm.margin import first_token_margin
from services.llm.tgi import TGIBackend
from services.llm.token_count import estimate_tokens
from tests.scripted_tgi import MAX_TOP_N_TOKENS, ScriptedTGI


def backend(server: ScriptedTGI, *, top_n_tokens: int = 5, attempts: int = 2) -> TGIBackend:
    return TGIBackend(
        url=server.url, model=server.model_id, timeout_s=5, top_n_tokens=top_n_tokens,
        attempts=attempts,
    )  # fmt: skip


def test_generate_returns_answer_first_token_candidates_and_token_counts(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("Is water wet?")
    small_tgi.script(prompt, answer="Yes mostly", first_token=[("No", 0.3), ("Yes", 0.6)])
    with backend(small_tgi) as client:
        generation = client.generate(prompt, max_new_tokens=10)
    assert generation.text == "Yes mostly"
    assert generation.output_tokens == 2
    assert generation.input_tokens == len(prompt.split())
    assert generation.finish_reason == "eos_token"
    assert [c.text for c in generation.first_token_candidates] == ["Yes", "No"]
    assert first_token_margin(generation.first_token_candidates) == pytest.approx(0.3)


def test_server_validation_errors_are_permanent_and_not_retried(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("too many top tokens")
    with (
        backend(small_tgi, top_n_tokens=MAX_TOP_N_TOKENS + 1) as client,
        pytest.raises(ModelError, match=r"HTTP 422: validation: .*top_n_tokens") as raised,
    ):
        client.generate(prompt, max_new_tokens=4)
    assert not isinstance(raised.value, TransientModelError)
    assert small_tgi.calls[prompt] == 1


def test_a_bare_503_is_a_failure_retried_up_to_the_attempt_limit(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("down behind a proxy")
    small_tgi.script(prompt, failures=[503, 503, 503])
    with backend(small_tgi, attempts=2) as client:
        with pytest.raises(TransientModelError, match="HTTP 503") as raised:
            client.generate(prompt, max_new_tokens=4)
        assert not isinstance(raised.value, ModelOverloaded)
        assert small_tgi.calls[prompt] == 2
        assert client.generate(prompt, max_new_tokens=4).text == "Yes"


def test_overload_is_waited_out_as_long_as_retry_after_asks(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("full server")
    asks = {"Retry-After": "1"}
    # More 429s than attempts: overload is not a failure and does not use them up.
    small_tgi.script(prompt, answer="Yes", failures=[(429, asks), (503, asks), (429, asks)])
    with backend(small_tgi, attempts=1) as client:
        assert client.generate(prompt, max_new_tokens=4).text == "Yes"
    arrivals = small_tgi.arrivals[prompt]
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= 1.0, gaps


def test_overload_beyond_the_patience_is_handed_back_with_the_wait_asked(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("full for long")
    small_tgi.script(prompt, failures=[(429, {"Retry-After": "30"}), 429])
    with (
        TGIBackend(
            url=small_tgi.url, model=small_tgi.model_id, timeout_s=5, top_n_tokens=5,
            attempts=3, overload_patience_s=5,
        ) as client,
        pytest.raises(ModelOverloaded, match="HTTP 429: overloaded: Model is overloaded") as raised,
    ):  # fmt: skip
        client.generate(prompt, max_new_tokens=4)
    assert raised.value.retry_after_s == 30
    assert small_tgi.calls[prompt] == 1  # a 30 s wait would outlast the patience: not waited


def test_input_tokens_come_from_the_header_then_tokenize_then_an_estimate(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    """TGI 3.x sends no prefill by default: the x-prompt-tokens header counts the prompt; a
    server without it is asked /tokenize; one without either gets a marked estimate."""
    prompt = unique("How many tokens are in this prompt of eleven words?")
    words = len(prompt.split())
    with backend(small_tgi) as client:
        by_header = client.generate(prompt, max_new_tokens=4)
        assert (by_header.input_tokens, by_header.input_tokens_estimated) == (words, False)
        assert small_tgi.tokenize_calls[prompt] == 0
        try:
            small_tgi.sends_prompt_tokens_header = False
            by_tokenize = client.generate(prompt, max_new_tokens=4)
            assert (by_tokenize.input_tokens, by_tokenize.input_tokens_estimated) == (words, False)
            assert small_tgi.tokenize_calls[prompt] == 1
            small_tgi.has_tokenize_route = False
            estimated = client.generate(prompt, max_new_tokens=4)
        finally:
            small_tgi.sends_prompt_tokens_header = small_tgi.has_tokenize_route = True
    assert estimated.input_tokens_estimated
    assert estimated.input_tokens == estimate_tokens(prompt) > 0


def test_prefill_counts_the_prompt_on_a_server_run_with_prefill_logprobs(
    unique: Callable[[str], str],
) -> None:
    server = ScriptedTGI("old-tgi", prefill_logprobs=True).start()
    server.sends_prompt_tokens_header = False
    server.has_tokenize_route = False
    try:
        with backend(server) as client:
            generation = client.generate(unique("count me by prefill"), max_new_tokens=2)
    finally:
        server.stop()
    assert (generation.input_tokens, generation.input_tokens_estimated) == (5, False)


def test_unreachable_server_is_transient() -> None:
    with (
        TGIBackend(
            url="http://127.0.0.1:9", model="m", timeout_s=1, top_n_tokens=2, attempts=1
        ) as dead,
        pytest.raises(TransientModelError, match="ConnectError"),
    ):
        dead.generate("hello", max_new_tokens=1)


def test_scripted_server_speaks_tgi_info_and_health(small_tgi: ScriptedTGI) -> None:
    assert httpx.get(f"{small_tgi.url}/health").status_code == 200
    info = httpx.get(f"{small_tgi.url}/info").json()
    assert info["model_id"] == small_tgi.model_id
    assert {"max_input_tokens", "max_total_tokens", "version"} <= set(info)
    raw = httpx.post(
        f"{small_tgi.url}/generate",
        json={"inputs": "hi", "parameters": {"top_n_tokens": 9, "details": True}},
    )
    assert raw.status_code == 422
    assert raw.json() == {
        "error": "Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 9",
        "error_type": "validation",
    }
