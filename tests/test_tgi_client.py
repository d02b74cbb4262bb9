"""The TGI client against a server speaking TGI's wire format."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.llm.base import ModelError, TransientModelError
from services.llm.margin import first_token_margin
from services.llm.tgi import TGIBackend
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


def test_overload_is_transient_and_retried_up_to_the_attempt_limit(
    small_tgi: ScriptedTGI, unique: Callable[[str], str]
) -> None:
    prompt = unique("busy server")
    small_tgi.script(prompt, failures=[429, 503, 503])
    with backend(small_tgi, attempts=2) as client:
        with pytest.raises(TransientModelError, match="HTTP 503"):
            client.generate(prompt, max_new_tokens=4)
        assert small_tgi.calls[prompt] == 2
        assert client.generate(prompt, max_new_tokens=4).text == "Yes"


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
