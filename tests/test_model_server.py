"""``twotier model-server`` speaks TGI's wire format: the same expectations hold for it and for
the scripted TGI server, checked through huggingface_hub's client and the project's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from services.llm.local_model import LocalBackend, LocalModel
from services.llm.margin import first_token_margin
from services.llm.model_server import create_model_server
from services.llm.tgi import TGIBackend
from tests.local_model_fixtures import load_bundled_model
from tests.scripted_tgi import ScriptedTGI
from tests.server_thread import ServerThread

PROMPT = "Is water wet? Answer yes or no."


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return load_bundled_model()


@pytest.fixture(scope="module")
def model_server(model: LocalModel) -> Iterator[ServerThread]:
    server = ServerThread(create_model_server(model, model_id="smollm2-q4")).start()
    yield server
    server.stop()


@pytest.fixture(params=["scripted TGI", "model-server"])
def tgi_url(request: pytest.FixtureRequest, small_tgi: ScriptedTGI) -> str:
    if request.param == "scripted TGI":
        return small_tgi.url
    server: ServerThread = request.getfixturevalue("model_server")
    return server.url


def test_details_through_huggingface_hub(tgi_url: str, unique: Callable[[str], str]) -> None:
    client = InferenceClient(model=tgi_url)
    output = client.text_generation(
        unique(PROMPT),
        max_new_tokens=5,
        details=True,
        decoder_input_details=True,
        top_n_tokens=3,
        do_sample=False,
    )
    details = output.details
    assert details is not None
    assert output.generated_text
    assert details.finish_reason in {"length", "eos_token"}
    assert details.generated_tokens == len(details.tokens) <= 5
    assert len(details.top_tokens) == len(details.tokens)
    assert all(len(step) == 3 for step in details.top_tokens)
    first_step = details.top_tokens[0]
    assert details.tokens[0].id == first_step[0]["id"]
    assert [t["logprob"] for t in first_step] == sorted(
        (t["logprob"] for t in first_step), reverse=True
    )
    assert details.prefill
    assert details.prefill[0].logprob is None


def test_bad_input_gets_tgi_style_errors(tgi_url: str) -> None:
    client = InferenceClient(model=tgi_url)
    with pytest.raises(ValidationError, match=r"`top_n_tokens` must be >= 0 and <= 5\. Given: 9"):
        client.text_generation(PROMPT, details=True, top_n_tokens=9, max_new_tokens=2)
    empty = httpx.post(f"{tgi_url}/generate", json={"inputs": "", "parameters": {}})
    assert empty.status_code == 422
    assert empty.json() == {
        "error": "Input validation error: `inputs` cannot be empty",
        "error_type": "validation",
    }
    zero = httpx.post(
        f"{tgi_url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 0}}
    )
    assert zero.status_code == 422
    assert "max_new_tokens" in zero.json()["error"]


def test_health_and_info(tgi_url: str) -> None:
    assert httpx.get(f"{tgi_url}/health").status_code == 200
    info = httpx.get(f"{tgi_url}/info").json()
    assert info["max_total_tokens"] > info["max_input_tokens"] > 0
    assert {"model_id", "version", "max_best_of"} <= set(info)


def test_model_server_refuses_non_json_and_reports_metrics(model_server: ServerThread) -> None:
    not_json = httpx.post(
        f"{model_server.url}/generate",
        content=b"{inputs:",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 400
    assert not_json.json()["error_type"] == "validation"
    assert httpx.post(f"{model_server.url}/generate", json={"parameters": {}}).status_code == 422
    metrics = httpx.get(f"{model_server.url}/metrics").text
    for name in ("tgi_request_count", "tgi_request_success", "tgi_queue_size"):
        assert name in metrics
    assert 'tgi_request_failure_total{err="validation"}' in metrics


def test_the_worker_client_gets_the_local_model_answer_over_http(
    model_server: ServerThread, model: LocalModel
) -> None:
    with TGIBackend(
        url=model_server.url, model="smollm2-q4", timeout_s=60, top_n_tokens=5, attempts=1
    ) as client:
        over_http = client.generate(PROMPT, max_new_tokens=8)
    in_process = LocalBackend(model, model="smollm2-q4", top_n_tokens=5).generate(
        PROMPT, max_new_tokens=8
    )
    assert over_http.text == in_process.text
    assert over_http.input_tokens == in_process.input_tokens
    margin = first_token_margin(over_http.first_token_candidates)
    assert 0.0 <= margin <= 1.0
    assert margin == pytest.approx(first_token_margin(in_process.first_token_candidates))
