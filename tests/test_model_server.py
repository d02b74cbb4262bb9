"""``twotier model-server`` speaks TGI's wire format: the same expectations hold for it and for
the scripted TGI server, checked through huggingface_hub's client and the project's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from services.llm.base import CallContext
from services.llm.labels import continuation
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
    assert details.prefill == []  # TGI 3.x: prefill log-probs are off unless asked for


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
    assert {"model_id", "version", "max_best_of", "max_concurrent_requests"} <= set(info)


def test_prompt_tokens_come_as_tgi_sends_them(tgi_url: str, unique: Callable[[str], str]) -> None:
    """The ``x-prompt-tokens`` header of /generate and /tokenize agree on the prompt's count."""
    prompt = unique(PROMPT)
    generated = httpx.post(
        f"{tgi_url}/generate",
        json={"inputs": prompt, "parameters": {"max_new_tokens": 2, "details": True}},
        timeout=60,
    )
    tokens = httpx.post(f"{tgi_url}/tokenize", json={"inputs": prompt}, timeout=60).json()
    assert int(generated.headers["x-prompt-tokens"]) == len(tokens) > 0
    assert (
        int(generated.headers["x-generated-tokens"])
        == generated.json()["details"]["generated_tokens"]
    )
    assert {"id", "text", "start", "stop"} <= set(tokens[0])


def test_an_empty_input_with_too_many_top_tokens_names_the_limit(tgi_url: str) -> None:
    """TGI checks top_n_tokens before the empty input: a probe learns the limit for free."""
    too_many = {"inputs": "", "parameters": {"top_n_tokens": 9, "max_new_tokens": 1}}
    assert "must be >= 0 and <= 5" in httpx.post(f"{tgi_url}/generate", json=too_many).text
    allowed = {"inputs": "", "parameters": {"top_n_tokens": 5, "max_new_tokens": 1}}
    assert "cannot be empty" in httpx.post(f"{tgi_url}/generate", json=allowed).text


def test_model_server_counts_the_chat_template_and_prefill_only_when_enabled(
    model: LocalModel,
) -> None:
    server = ServerThread(
        create_model_server(model, model_id="smol", prefill_logprobs=True)
    ).start()
    try:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 1, "details": True,
                                                 "decoder_input_details": True}}  # fmt: skip
        response = httpx.post(f"{server.url}/generate", json=body, timeout=60)
    finally:
        server.stop()
    ran = model.encode(PROMPT)  # the prompt in the chat template
    assert len(ran) > len(model.tokenizer(PROMPT)["input_ids"])
    assert int(response.headers["x-prompt-tokens"]) == len(ran)
    prefill = response.json()["details"]["prefill"]
    assert [token["id"] for token in prefill] == ran
    assert prefill[0]["logprob"] is None


def test_model_server_answers_429_beyond_its_concurrent_requests(model: LocalModel) -> None:
    server = ServerThread(
        create_model_server(model, model_id="smol", max_concurrent_requests=1)
    ).start()
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 24}}
    try:
        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(
                pool.map(
                    lambda _: httpx.post(f"{server.url}/generate", json=body, timeout=120),
                    range(4),
                ),
                key=lambda response: response.status_code,
            )
    finally:
        server.stop()
    codes = [response.status_code for response in statuses]
    assert codes[0] == 200
    assert 429 in codes
    overloaded = statuses[-1].json()
    assert overloaded == {"error": "Model is overloaded", "error_type": "overloaded"}


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


def test_labels_are_counted_without_the_chat_template_that_leaves_them_unscored(
    model: LocalModel,
) -> None:
    """The model-server wraps every input in the chat template: /tokenize counts it (and is
    corrected for it), and a label sent after the prompt lies inside the user's turn, so its
    prefill does not score it as the answer."""
    labels = ["yes", "no", "it depends"]
    server = ServerThread(
        create_model_server(model, model_id="smol", prefill_logprobs=True)
    ).start()
    try:
        with TGIBackend(
            url=server.url, model="smol", timeout_s=60, top_n_tokens=5, attempts=1
        ) as client:
            counts = [client.label_token_count(label) for label in labels]
            scores = client.score_labels(PROMPT, labels)
    finally:
        server.stop()
    local = LocalBackend(model, model="smol", top_n_tokens=5)
    assert counts == [local.label_token_count(label) for label in labels]
    assert scores.logprobs is None
    assert scores.input_tokens == len(model.encode(continuation(PROMPT, labels[0])))


def test_the_worker_client_takes_turns_by_tenant_at_the_model_server(
    model_server: ServerThread, model: LocalModel
) -> None:
    """A distributed worker's call names its tenant; the model-server takes turns by it."""
    with TGIBackend(
        url=model_server.url, model="smollm2-q4", timeout_s=60, top_n_tokens=5, attempts=1
    ) as client:
        client.generate(PROMPT, max_new_tokens=2, context=CallContext(fairness_key="tenant-7"))
    assert model.decoder.stats.admitted[-1] == "tenant-7"
