"""``twotier serve``, the embedded default, run as a user runs it: a subprocess on a free port,
SQLite, the in-process queue and the real local model; the large tier is an OpenAI-compatible
server here so that escalated answers can be told apart."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.llm.local_model import LocalBackend
from services.settings import get_settings
from tests.conftest import SECRETS_KEY
from tests.local_model_fixtures import load_bundled_model
from tests.scripted_openai import ScriptedOpenAI
from tests.server_thread import free_port
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

TWOTIER = [sys.executable, "-m", "services.cli"]


def without_twotier_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment less the test session's settings (which point at PostgreSQL and Redis)."""
    return {key: value for key, value in environ.items() if not key.startswith("TWOTIER_")}


class ServeProcess:
    def __init__(self, home: Path, large: ScriptedOpenAI) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "serve.log"
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("TWOTIER_")
        }
        self.env.update(
            {
                "TWOTIER_HOME": str(home),
                "TWOTIER_CACHE_DIR": str(get_settings().cache_dir),
                "TWOTIER_LARGE__BACKEND": "openai",
                "TWOTIER_LARGE__URL": large.url,
                "TWOTIER_LARGE__MODEL": large.model,
                "TWOTIER_LARGE__API_KEY": large.api_key or "",
                "TWOTIER_WARMUP_QUERIES": "2",
                "TWOTIER_DEFAULT_TARGET_ESCALATION_RATE": "0.5",
                "TWOTIER_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*TWOTIER, "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=log,
            )  # fmt: skip
        wait_for(self._ready, timeout=180, what=f"twotier serve to be ready (log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"twotier serve exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'demo-api-key').read_text().strip()}"}

    def submit(self, prompt: str, *, wait: float = 0) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/v1/queries",
            params={"wait": wait},
            json={"prompt": prompt, "max_new_tokens": 12},
            headers=self.headers,
            timeout=wait + 30,
        )
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    def get(self, query_id: str, *, wait: float = 0) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/v1/queries/{query_id}",
            params={"wait": wait},
            headers=self.headers,
            timeout=wait + 30,
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def large() -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI("big-model", api_key="sk-local-test").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, large: ScriptedOpenAI
) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("serve-home"), large).start()
    yield process
    process.kill()


def test_serve_answers_with_the_local_model_and_escalates_to_the_large_tier(
    serve: ServeProcess, large: ScriptedOpenAI, unique: Callable[[str], str]
) -> None:
    prompts = [
        unique(text)
        for text in (
            "What is the capital of France?",
            "Name a colour.",
            "Is 17 a prime number?",
            "Pick a random animal.",
            "What is 2 + 2?",
            "Say something surprising.",
            "Who wrote Hamlet?",
            "Give me a number.",
        )
    ]
    for prompt in prompts:
        large.script(prompt, answer=f"LARGE: {prompt}")
    finished = [serve.submit(prompt, wait=60) for prompt in prompts]
    assert all(query["status"] == "succeeded" for query in finished)
    assert [q["decision"] for q in finished[:2]] == ["warmup", "warmup"]

    local = LocalBackend(load_bundled_model(), model="local", top_n_tokens=5)
    tiers = set()
    for prompt, query in zip(prompts, finished, strict=True):
        tiers.add(query["tier"])
        assert 0.0 <= query["margin"] <= 1.0
        if query["tier"] == "small":
            assert query["answer"] == local.generate(prompt, max_new_tokens=12).text
        else:
            assert query["escalated"] is True
            assert query["answer"] == f"LARGE: {prompt}"
            assert query["margin"] < query["threshold"]
            assert large.calls[prompt] == 1
    assert tiers == {"small", "large"}


def test_serve_sends_signed_webhooks(serve: ServeProcess, unique: Callable[[str], str]) -> None:
    receiver = WebhookReceiver().start()
    try:
        secret = httpx.get(
            f"{serve.url}/v1/webhooks/callback-secret", headers=serve.headers, timeout=30
        ).json()["secret"]
        response = httpx.post(
            f"{serve.url}/v1/queries",
            json={"prompt": unique("Name a fruit."), "max_new_tokens": 4,
                  "webhook_url": f"{receiver.url}/serve"},
            headers=serve.headers,
            timeout=30,
        )  # fmt: skip
        assert response.status_code == 202, response.text
        finished = wait_for(
            lambda: [
                payload
                for delivery in receiver.at("/serve")
                if (payload := delivery.verified(secret))["type"] == "query.succeeded"
            ],
            timeout=120,
            what="query.succeeded at the receiver",
        )
        assert [payload["data"]["query_id"] for payload in finished] == [response.json()["id"]]
    finally:
        receiver.stop()


def test_ask_prints_the_answer_tier_margin_and_threshold(
    serve: ServeProcess, unique: Callable[[str], str]
) -> None:
    result = subprocess.run(
        [*TWOTIER, "ask", "--url", serve.url, unique("What colour is the sky?")],
        env=serve.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "tier: " in result.stdout
    assert "margin " in result.stdout
    assert "threshold " in result.stdout


def test_sigterm_stops_cleanly_and_a_restart_finishes_every_accepted_query(
    tmp_path: Path, large: ScriptedOpenAI, unique: Callable[[str], str]
) -> None:
    first = ServeProcess(tmp_path, large).start()
    try:
        ids = [first.submit(unique(f"Write a haiku about the number {i}."))["id"] for i in range(6)]
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
        assert first.terminate() in {0, -signal.SIGTERM}
    finally:
        first.kill()
    assert "Stopped; queries not yet answered resume at the next start." in first.log.read_text()

    second = ServeProcess(tmp_path, large).start()
    try:
        finished = [second.get(query_id, wait=60) for query_id in ids]
        assert [query["status"] for query in finished] == ["succeeded"] * 6
    finally:
        second.kill()


def test_the_banners_ask_command_works_as_printed(serve: ServeProcess) -> None:
    printed = [line for line in serve.log.read_text().splitlines() if line.startswith("  or:")]
    assert len(printed) == 1, serve.log.read_text()
    command = shlex.split(printed[0].removeprefix("  or:"))
    assert command[:2] == [sys.executable, "-m"]
    assert command[command.index("--url") + 1] == serve.url
    result = subprocess.run(
        command, env=serve.env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "tier: " in result.stdout


def test_serve_on_a_taken_port_says_so_in_one_line_before_loading_anything(
    tmp_path: Path,
) -> None:
    env = without_twotier_settings(os.environ)
    env["TWOTIER_HOME"] = str(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*TWOTIER, "serve", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "twotier is ready" not in result.stdout + result.stderr
    assert not (tmp_path / "twotier.db").exists()  # nothing was set up


def test_serve_refuses_to_start_when_a_broker_is_configured(tmp_path: Path) -> None:
    env = without_twotier_settings(os.environ)
    env.update({"TWOTIER_HOME": str(tmp_path), "TWOTIER_BROKER_URL": "redis://127.0.0.1:6379/0",
                "TWOTIER_SECRETS_KEYS": SECRETS_KEY})  # fmt: skip
    result = subprocess.run(
        [*TWOTIER, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "TWOTIER_BROKER_URL is set" in result.stderr


@pytest.mark.parametrize("command", ["api", "worker", "beat"])
def test_distributed_commands_refuse_to_start_without_a_broker(
    tmp_path: Path, command: str
) -> None:
    env = without_twotier_settings(os.environ)
    env["TWOTIER_HOME"] = str(tmp_path)
    result = subprocess.run(
        [*TWOTIER, command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "TWOTIER_BROKER_URL is not set" in result.stderr


def test_cancelling_a_query_stops_its_running_generation(
    serve: ServeProcess, unique: Callable[[str], str]
) -> None:
    prompt = unique("Write a long story about a dragon who learns to fly.")
    response = httpx.post(
        f"{serve.url}/v1/queries",
        json={"prompt": prompt, "max_new_tokens": 400},
        headers=serve.headers,
        timeout=30,
    )
    query_id = response.json()["id"]
    wait_for(lambda: serve.get(query_id)["status"] == "running", timeout=60, what="the call")
    cancelled = httpx.delete(f"{serve.url}/v1/queries/{query_id}", headers=serve.headers)
    assert cancelled.status_code == 200, cancelled.text
    # The call is charged when it ends: a stopped generation soon, for the tokens it made; one
    # left running, only after 400 tokens (minutes on a CPU).
    small_cost = wait_for(
        lambda: Decimal(serve.get(query_id)["cost"]["small"]), timeout=60, what="the charge"
    )
    price_per_token = Decimal("0.1") / 1_000_000  # the small tier's default, in and out
    assert small_cost < (len(prompt) + 100) * price_per_token  # well under 400 output tokens
    assert serve.get(query_id)["status"] == "cancelled"
