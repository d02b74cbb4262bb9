"""services.llm.http_backend against a scripted TGI server over real HTTP: failures (5xx,
timeouts, refused connections) are retried ``attempts`` times, a refusal (4xx) is not, and
overload (429, or a 503 with Retry-After) is waited out for up to the patience, then raised
as ModelOverloaded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tenacity import RetryCallState, Retrying

from services.llm.base import ModelError, ModelOverloaded, TransientModelError
from services.llm.http_backend import (
    RETRY_AFTER_JITTER,
    HttpBackend,
    retry_after_s,
    wait_out_overload,
)
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import free_port


@pytest.fixture(scope="module")
def tgi() -> Iterator[ScriptedTGI]:
    server = ScriptedTGI("test/http-backend").start()
    yield server
    server.stop()


@pytest.fixture
def prompt() -> str:
    return f"Is this a test {uuid.uuid4().hex[:8]}?"


@pytest.fixture
def backend(tgi: ScriptedTGI) -> Iterator[Callable[..., HttpBackend]]:
    made: list[HttpBackend] = []

    def make(**options: Any) -> HttpBackend:
        options = {"timeout_s": 10.0, "attempts": 3, "overload_patience_s": 5.0, **options}
        made.append(HttpBackend(url=options.pop("url", tgi.url), model="m", **options))
        return made[-1]

    yield make
    for client in made:
        client.close()


def generate(prompt: str) -> dict[str, Any]:
    return {"inputs": prompt, "parameters": {"max_new_tokens": 4, "details": True}}


def test_an_answer_comes_back_with_its_headers(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, answer="Yes indeed")
    answer = backend().post("generate", generate(prompt))
    assert answer.body["generated_text"] == "Yes indeed"
    assert "x-prompt-tokens" in answer.headers
    assert tgi.calls[prompt] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 424])
def test_a_transient_failure_is_retried(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str, status: int
) -> None:
    tgi.script(prompt, answer="Yes", failures=[status, status])
    assert backend(attempts=3).post_json("generate", generate(prompt))["generated_text"] == "Yes"
    assert tgi.calls[prompt] == 3


def test_failures_beyond_the_attempts_raise_a_transient_error(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, failures=[500] * 5)
    with pytest.raises(TransientModelError) as raised:
        backend(attempts=2).post("generate", generate(prompt))
    assert not isinstance(raised.value, ModelOverloaded)
    assert "HTTP 500" in str(raised.value)
    assert tgi.calls[prompt] == 2


def test_a_bare_503_is_a_failure_not_overload(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, failures=[503] * 5)
    with pytest.raises(TransientModelError) as raised:
        backend(attempts=2).post("generate", generate(prompt))
    assert not isinstance(raised.value, ModelOverloaded)
    assert tgi.calls[prompt] == 2  # the attempts, not the overload patience


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_refusal_is_not_retried(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str, status: int
) -> None:
    tgi.script(prompt, failures=[status])
    with pytest.raises(ModelError) as raised:
        backend(attempts=3).post("generate", generate(prompt))
    assert not isinstance(raised.value, TransientModelError)
    assert f"m: HTTP {status}: unavailable: scripted failure {status}" == str(raised.value)
    assert tgi.calls[prompt] == 1


@pytest.mark.parametrize("failure", [429, (429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})])
def test_overload_is_waited_out_however_many_attempts(
    tgi: ScriptedTGI,
    backend: Callable[..., HttpBackend],
    prompt: str,
    failure: int | tuple[int, dict[str, str]],
) -> None:
    tgi.script(prompt, answer="Yes", failures=[failure] * 2)
    answer = backend(attempts=1, overload_patience_s=30).post_json("generate", generate(prompt))
    assert answer["generated_text"] == "Yes"
    assert tgi.calls[prompt] == 3


def test_overload_past_the_patience_raises_model_overloaded_with_the_servers_wait(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, failures=[(429, {"Retry-After": "0.2"})] * 100)
    began = time.monotonic()
    with pytest.raises(ModelOverloaded) as raised:
        backend(overload_patience_s=0.5).post("generate", generate(prompt))
    took = time.monotonic() - began
    assert raised.value.retry_after_s == pytest.approx(0.2)
    assert "Model is overloaded" in str(raised.value)
    assert 2 <= tgi.calls[prompt] <= 4  # each wait 0.2-0.24 s, within the patience
    assert 0.3 <= took < 3


def test_the_retry_after_the_server_asks_for_is_kept(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, answer="Yes", failures=[(429, {"Retry-After": "0.4"})])
    backend().post("generate", generate(prompt))
    first, second = tgi.arrivals[prompt]
    assert 0.4 <= second - first < 0.4 * (1 + RETRY_AFTER_JITTER) + 0.5


def test_a_read_timeout_is_a_transient_failure_retried(
    tgi: ScriptedTGI, backend: Callable[..., HttpBackend], prompt: str
) -> None:
    tgi.script(prompt, hold=True)
    try:
        with pytest.raises(TransientModelError, match="ReadTimeout"):
            backend(timeout_s=0.3, attempts=2).post("generate", generate(prompt))
        assert tgi.calls[prompt] == 2
    finally:
        tgi.release(prompt)


def test_a_refused_connection_is_a_transient_failure() -> None:
    with (
        HttpBackend(
            url=f"http://127.0.0.1:{free_port()}", model="m", timeout_s=2, attempts=2
        ) as backend,
        pytest.raises(TransientModelError, match="ConnectError"),
    ):
        backend.post("generate", generate("x"))


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({name.replace("_", "-"): value for name, value in values.items()})


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    assert retry_after_s(headers()) is None
    assert retry_after_s(headers(retry_after="3")) == 3.0
    assert retry_after_s(headers(retry_after="1.5")) == 1.5
    assert retry_after_s(headers(retry_after="-4")) == 0.0
    assert retry_after_s(headers(retry_after_ms="250")) == 0.25
    assert retry_after_s(headers(retry_after_ms="250", retry_after="9")) == 0.25  # ms first
    assert retry_after_s(headers(retry_after="soon")) is None
    assert retry_after_s(headers(retry_after_ms="soon")) is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 < (retry_after_s(headers(retry_after=in_a_minute)) or 0) <= 60
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_s(headers(retry_after=past)) == 0.0


@given(st.floats(0, 1e6, allow_nan=False))
def test_retry_after_in_seconds_is_read_back(seconds: float) -> None:
    assert retry_after_s(headers(retry_after=repr(seconds))) == seconds


def state_after(error: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


@given(st.floats(0, 3600, allow_nan=False))
def test_an_asked_wait_gets_at_most_a_fifth_more(asked: float) -> None:
    wait = wait_out_overload(state_after(ModelOverloaded("full", retry_after_s=asked)))
    assert asked <= wait <= asked * (1 + RETRY_AFTER_JITTER)


@given(st.integers(1, 20))
def test_without_an_asked_wait_the_backoff_is_capped(attempt: int) -> None:
    wait = wait_out_overload(state_after(ModelOverloaded("full"), attempt))
    assert 0 <= wait <= 30.0 + 1.0  # the cap plus tenacity's jitter
