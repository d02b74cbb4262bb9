"""At start a worker asks its model servers what they allow: it stops with a message naming the
setting when the settings ask for more, adopts the server's model id when none is set, and
stops with a message (not a crash loop) when a server never answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.llm.server_limits import (
    ModelServerUnfit,
    check_model_servers,
    name_models_if_reachable,
)
from services.settings import Settings
from tests.scripted_openai import ScriptedOpenAI
from tests.scripted_tgi import MAX_CONCURRENT_REQUESTS, MAX_TOP_N_TOKENS, ScriptedTGI

DEAD_URL = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def openai_server() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI("served-model", api_key="sk-limits").start()
    yield server
    server.stop()


def settings_for(small: dict[str, Any], **overrides: Any) -> Settings:
    return Settings(small={**small}, **overrides)


def tgi(server: ScriptedTGI, model: str = "") -> dict[str, Any]:
    return {"backend": "tgi", "url": server.url, "model": model}


def test_tgi_limits_are_learnt_and_a_top_n_above_them_is_named(small_tgi: ScriptedTGI) -> None:
    # TGI 3.x's /info has no max_top_n_tokens: the limit comes from the probe's 422.
    fits = settings_for(tgi(small_tgi, "named"), top_n_tokens=MAX_TOP_N_TOKENS)
    check_model_servers(fits, tiers=["small"], tasks_at_once=MAX_CONCURRENT_REQUESTS)
    asks_more = settings_for(tgi(small_tgi, "named"), top_n_tokens=9, max_top_n_tokens=9)
    with pytest.raises(ModelServerUnfit) as raised:
        check_model_servers(asks_more, tiers=["small"], tasks_at_once=1)
    message = str(raised.value)
    assert (
        f"TWOTIER_TOP_N_TOKENS=9 is above the limit of the small model server at {small_tgi.url}: "
        f"{MAX_TOP_N_TOKENS} candidates per token" in message
    )
    assert "TWOTIER_MAX_TOP_N_TOKENS=9" in message


def test_more_calls_in_flight_than_the_server_accepts_is_named(small_tgi: ScriptedTGI) -> None:
    tier = {**tgi(small_tgi, "x"), "max_concurrent_calls": 200}
    check_model_servers(settings_for(tier), tiers=["small"], tasks_at_once=8)  # 8 fit
    with pytest.raises(ModelServerUnfit, match=r"keeps up to 200 calls in flight") as e:
        check_model_servers(settings_for(tier), tiers=["small"], tasks_at_once=200)
    assert f"max_concurrent_requests={MAX_CONCURRENT_REQUESTS}" in str(e.value)
    assert "TWOTIER_SMALL__MAX_CONCURRENT_CALLS" in str(e.value)


def test_the_servers_model_id_is_adopted_when_none_is_set(
    small_tgi: ScriptedTGI, openai_server: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWOTIER_SMALL__MODEL", raising=False)
    monkeypatch.delenv("TWOTIER_LARGE__MODEL", raising=False)
    large = {"backend": "openai", "url": openai_server.url, "api_key": "sk-limits"}
    settings = Settings(small=tgi(small_tgi), large=large)
    assert settings.small.model == settings.large.model == ""
    check_model_servers(settings, tiers=["small", "large"], tasks_at_once=1)
    assert settings.small.model == small_tgi.model_id
    assert settings.large.model == "served-model"
    # Processes started from here on (the pool, uvicorn's workers) name it the same.
    assert os.environ["TWOTIER_SMALL__MODEL"] == small_tgi.model_id


def test_openai_model_and_top_logprobs_are_checked(openai_server: ScriptedOpenAI) -> None:
    small = {"backend": "openai", "url": openai_server.url, "api_key": "sk-limits"}
    wrong = settings_for({**small, "model": "gpt-nope"})
    with pytest.raises(ModelServerUnfit, match=r"TWOTIER_SMALL__MODEL=gpt-nope is not served"):
        check_model_servers(wrong, tiers=["small"], tasks_at_once=1)
    greedy = settings_for({**small, "model": "served-model"}, max_top_n_tokens=25)
    with pytest.raises(
        ModelServerUnfit, match=r"TWOTIER_MAX_TOP_N_TOKENS=25 is above the limit .*: 20 candidates"
    ):
        check_model_servers(greedy, tiers=["small"], tasks_at_once=1)


def test_a_server_that_never_answers_stops_the_start_after_the_wait() -> None:
    settings = settings_for(
        {"backend": "tgi", "url": DEAD_URL, "model": "m"}, model_server_start_wait_s=1.5
    )
    started = time.monotonic()
    with pytest.raises(ModelServerUnfit) as raised:
        check_model_servers(settings, tiers=["small"], tasks_at_once=1)
    assert 1.0 <= time.monotonic() - started < 15
    message = str(raised.value)
    assert f"the small model server at {DEAD_URL} did not answer for 1.5 s" in message
    assert "TWOTIER_MODEL_SERVER_START_WAIT_S" in message
    assert "TWOTIER_SMALL__URL" in message


def start_worker_until_it_exits(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--queues", "small",
        "--concurrency", "1", "--pool", "solo", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_worker_asked_for_more_than_its_server_allows_exits_naming_the_setting() -> None:
    result = start_worker_until_it_exits({"TWOTIER_TOP_N_TOKENS": "9"})
    assert result.returncode != 0
    assert "this twotier worker cannot start" in result.stderr
    assert "TWOTIER_TOP_N_TOKENS=9 is above the limit of the small model server" in result.stderr


def test_a_worker_whose_server_is_down_exits_with_a_message() -> None:
    result = start_worker_until_it_exits(
        {"TWOTIER_SMALL__URL": DEAD_URL, "TWOTIER_MODEL_SERVER_START_WAIT_S": "1"}
    )
    assert result.returncode != 0
    assert f"the small model server at {DEAD_URL} did not answer for 1 s" in result.stderr


def test_the_api_names_models_it_can_reach_and_starts_anyway_when_it_cannot(
    small_tgi: ScriptedTGI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWOTIER_SMALL__MODEL", raising=False)
    monkeypatch.delenv("TWOTIER_LARGE__MODEL", raising=False)
    dead = {"backend": "tgi", "url": DEAD_URL, "model": ""}
    settings = Settings(small=tgi(small_tgi), large=dead, model_server_start_wait_s=30)
    started = time.monotonic()
    name_models_if_reachable(settings)
    assert time.monotonic() - started < 10  # asked once, not for the start wait
    assert settings.small.model == small_tgi.model_id
    assert settings.large.model == ""  # its price settings apply meanwhile
