"""bench/load.py's model server (bench/load_tgi.py) speaks TGI as the workers' client expects,
counts the calls in flight, and refuses calls beyond its limit with TGI's 429."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from services.llm.base import ModelOverloaded
from services.llm.margin import first_token_margin
from services.llm.tgi import TGIBackend
from tests.scripted_tgi import hashed_margin
from tests.waiting import wait_for

SERVER = Path(__file__).resolve().parents[1] / "bench" / "load_tgi.py"
LIMIT = 4


@pytest.fixture
def server_url() -> Iterator[str]:
    command = [sys.executable, str(SERVER), "--model", "bench/small",
               "--max-concurrent", str(LIMIT)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        wait_for(lambda: _healthy(url), timeout=30, what="bench/load_tgi.py")
        yield url
    finally:
        server.kill()
        server.communicate()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


def test_the_workers_client_reads_an_answer_and_a_margin(server_url: str) -> None:
    prompt = "Is the bench server TGI enough?"
    with TGIBackend(
        url=server_url, model="bench/small", timeout_s=5, top_n_tokens=5, attempts=1
    ) as client:
        generation = client.generate(prompt, max_new_tokens=3)
    assert generation.text == "The answer is"
    assert generation.output_tokens == 3
    margin = first_token_margin(generation.first_token_candidates)
    assert margin == pytest.approx(hashed_margin(prompt))
    assert httpx.get(f"{server_url}/info").json()["max_concurrent_requests"] == LIMIT


def test_calls_beyond_the_limit_are_refused_and_the_gauge_counts_those_in_flight(
    server_url: str,
) -> None:
    gauge_url = f"{server_url}/bench/gauge"
    httpx.post(f"{server_url}/bench/hold")

    def call(i: int) -> int:
        body = {"inputs": f"call {i}", "parameters": {"max_new_tokens": 2, "details": True}}
        return httpx.post(f"{server_url}/generate", json=body, timeout=30).status_code

    with ThreadPoolExecutor(LIMIT + 2) as pool:
        answers = [pool.submit(call, i) for i in range(LIMIT + 2)]
        wait_for(
            lambda: httpx.get(gauge_url).json()["refused"] == 2, timeout=30, what="two refusals"
        )
        held = httpx.get(gauge_url).json()
        refused = _generate_error(server_url)
        httpx.post(f"{server_url}/bench/release")
        statuses = Counter(answer.result() for answer in answers)
    assert statuses == {200: LIMIT, 429: 2}
    assert (held["current"], len(held["client_ports"])) == (LIMIT, LIMIT)
    assert isinstance(refused, ModelOverloaded)  # back-pressure: the workers wait and retry
    gauge = httpx.get(gauge_url).json()
    assert (gauge["current"], gauge["peak"], gauge["served"]) == (0, LIMIT, LIMIT)


def _generate_error(url: str) -> Exception | None:
    with TGIBackend(
        url=url,
        model="bench/small",
        timeout_s=5,
        top_n_tokens=2,
        attempts=1,
        overload_patience_s=0,  # answer at once instead of waiting for room
    ) as tgi:
        try:
            tgi.generate("one too many", max_new_tokens=2)
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            return exc
    return None


def test_an_instant_server_answers_without_waiting_for_the_clients_acknowledgement(
    server_url: str,
) -> None:
    # Without TCP_NODELAY on its connections the server holds each answer's body until the
    # client acknowledges the headers, which Linux delays by 40 ms: every call, however
    # instant the server, would take that long. The fastest of ten shows it.
    body = {"inputs": "instant?", "parameters": {"max_new_tokens": 2, "details": True}}
    with httpx.Client(base_url=server_url) as client:  # one kept-alive connection
        client.post("/generate", json=body).raise_for_status()
        seconds = []
        for _ in range(10):
            started = time.perf_counter()
            client.post("/generate", json=body).raise_for_status()
            seconds.append(time.perf_counter() - started)
    assert min(seconds) < 0.02, seconds
