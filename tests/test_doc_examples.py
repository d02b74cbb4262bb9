"""Every shell example of README.md and docs/*.md that talks to twotier runs, as written, against
`twotier serve` (scripted TGI- and OpenAI-compatible model servers behind it) and gets no 4xx or
5xx answer; the error table of docs/api.md says what the service answers.

How examples are told apart (``bash`` runs, ``sh`` starts or deploys something and does not) is
in tests/doc_examples.py and docs/architecture.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.doc_examples import (
    ROOT,
    WEBHOOK_RECEIVER,
    Example,
    examples,
    examples_to_run,
    filled,
    misfenced,
)
from tests.scripted_openai import ScriptedOpenAI
from tests.scripted_tgi import ScriptedTGI
from tests.test_serve import ServeProcess
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

BASH = shutil.which("bash") or "/bin/bash"


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, small_tgi: ScriptedTGI
) -> Iterator[ServeProcess]:
    large = ScriptedOpenAI("big-model", api_key="sk-local-test").start()
    process = ServeProcess(tmp_path_factory.mktemp("serve-home"), large)
    process.env.update(
        {
            "TWOTIER_SMALL__BACKEND": "tgi",
            "TWOTIER_SMALL__URL": small_tgi.url,
            "TWOTIER_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    try:
        yield process.start()
    finally:
        process.kill()
        large.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def placeholders(serve: ServeProcess, receiver: WebhookReceiver) -> dict[str, str]:
    """What the examples' placeholders stand for, made in this run."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=serve.url, headers=serve.headers, timeout=60) as api:
        query = _created(api.post("/v1/queries", params={"wait": 30}, json={"prompt": "Hello?"}))
        endpoint = _created(api.post("/v1/webhooks", json={"url": f"{receiver.url}/registered"}))
        tenants = api.get("/v1/admin/tenants", headers=admin).json()
    [demo] = [tenant for tenant in tenants if tenant["name"] == "local-demo"]
    return {
        "<id>": query["id"],
        "<tenant id>": demo["id"],
        "<endpoint id>": endpoint["id"],
        "<scope>": str(query["threshold_scope"]),
        WEBHOOK_RECEIVER: receiver.url,
    }


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in {201, 202}, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture(scope="module")
def run_example(
    serve: ServeProcess, placeholders: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Example], subprocess.CompletedProcess[str]]:
    """Runs an example with its placeholders filled, in a folder of its own, with the server's
    settings, `KEY` the demo tenant's key, `twotier` (also as `.venv/bin/twotier`) this
    environment's, and `twotier ask` aimed at the server under test."""
    folder = tmp_path_factory.mktemp("examples")
    (folder / ".venv").symlink_to(sys.prefix)
    environment = dict(serve.env)
    environment.update(
        {
            "KEY": serve.headers["Authorization"].removeprefix("Bearer "),
            "TWOTIER_URL": serve.url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
        }
    )
    address = serve.url.removeprefix("http://")

    def run(example: Example) -> subprocess.CompletedProcess[str]:
        script = filled(example, address=address, values=placeholders)
        return subprocess.run(
            [BASH, "-c", script],
            cwd=folder, env=environment, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    return run


def test_every_example_that_talks_to_the_service_says_whether_it_is_run() -> None:
    found = examples()
    assert len(found) >= 10  # the documents were read
    assert misfenced(found) == []


def test_the_readme_has_examples_that_run() -> None:
    assert [e for e in examples_to_run() if e.document.name == "README.md" and e.talks_to_service]


@pytest.mark.parametrize("example", examples_to_run(), ids=lambda example: example.where)
def test_the_example_runs_as_written(
    example: Example, run_example: Callable[[Example], subprocess.CompletedProcess[str]]
) -> None:
    result = run_example(example)
    assert result.returncode == 0, f"{example.where}\n{result.stdout}\n{result.stderr}"


def test_the_endpoint_an_example_registers_receives_deliveries(
    serve: ServeProcess,
    receiver: WebhookReceiver,
    run_example: Callable[[Example], subprocess.CompletedProcess[str]],
) -> None:
    """docs/webhooks.md's first example registers an endpoint that later queries' events reach."""
    [registration, *_] = [e for e in examples_to_run() if e.document.name == "webhooks.md"]
    assert run_example(registration).returncode == 0
    response = httpx.post(
        f"{serve.url}/v1/queries", params={"wait": 30}, json={"prompt": "Name a colour."},
        headers=serve.headers, timeout=60,
    )  # fmt: skip
    assert response.json()["status"] == "succeeded", response.text
    query_id = response.json()["id"]
    wait_for(
        lambda: [
            r for r in receiver.at("/twotier") if r.payload["data"].get("query_id") == query_id
        ],
        timeout=60,
        what="the query's event at the example's endpoint",
    )


DOCUMENTED_ERRORS = (ROOT / "docs/api.md").read_text().split("\n## Errors\n", 1)[1]


NO_KEY: dict[str, str] = {}
UNKNOWN_KEY = {"Authorization": "Bearer tt_nope_x"}
NOT_BEARER = {"Authorization": "Basic dXNlcjpwYXNz"}
UTF16_BODY = '{"prompt": "hi"}'.encode("utf-16")
NO_QUERY = "/v1/queries/00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("method", "path", "request_options", "status", "code"),
    [
        ("POST", "/v1/queries", {"content": b"not json"}, 400, "bad_request"),
        ("POST", "/v1/queries", {"content": UTF16_BODY}, 400, "bad_request"),
        ("GET", "/v1/queries", {"headers": NO_KEY}, 401, "unauthenticated"),
        ("GET", "/v1/queries", {"headers": UNKNOWN_KEY}, 401, "invalid_api_key"),
        ("GET", "/v1/queries", {"headers": NOT_BEARER}, 401, "invalid_api_key"),
        ("GET", "/v1/admin/tenants", {}, 401, "admin_token_required"),  # a tenant's key
        ("GET", "/v1/admin/tenants", {"headers": NO_KEY}, 401, "admin_token_required"),
        ("GET", NO_QUERY, {}, 404, "not_found"),
        ("GET", "/v1/webhooks/not-a-uuid", {}, 404, "not_found"),
        ("PUT", "/v1/queries", {}, 405, "method_not_allowed"),
        ("POST", "/v1/queries", {"json": {"prompt": 12}}, 422, "invalid_request"),
    ],
)
def test_the_error_table_says_what_the_service_answers(
    serve: ServeProcess,
    method: str,
    path: str,
    request_options: dict[str, Any],
    status: int,
    code: str,
) -> None:
    options = {"headers": serve.headers, **request_options}
    response = httpx.request(method, f"{serve.url}{path}", timeout=30, **options)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    row = next(line for line in DOCUMENTED_ERRORS.splitlines() if f"`{code}`" in line)
    assert row.startswith(f"| {status} |"), row
