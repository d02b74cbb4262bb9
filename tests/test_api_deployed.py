"""`twotier api` as deployed, in its own process: every line it writes is JSON (its own and the
web server's), no query string reaches its log, malformed HTTP is answered in the one error
shape, and the metrics are served on their own port, not on the API's."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api_process import ApiProcess
from tests.conftest import TenantApi
from tests.server_thread import free_port
from tests.waiting import wait_for

SECRET = "SECRET-0f9e8d7c6b5a"


def log_lines(api: ApiProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as JSON (a line that is not fails here)."""
    lines = [line for line in api.output().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON log line: {line!r}") from exc
    return parsed


def test_every_line_is_json_and_no_query_string_reaches_the_log(
    api_process: Callable[..., ApiProcess],
) -> None:
    api = api_process(log_json="true")
    refused = httpx.get(f"{api.url}/v1/queries", params={"api_key": SECRET, "limit": "5"})
    assert refused.status_code == 401
    assert httpx.get(f"{api.url}/healthz?token={SECRET}").status_code == 200

    def access_lines() -> list[dict[str, Any]]:
        return [line for line in log_lines(api) if line.get("event") == "http_request"]

    wait_for(lambda: len(access_lines()) >= 2, timeout=10, what="the access log lines")
    api.stop()
    assert SECRET not in api.output()
    by_path = {line["path"]: line for line in access_lines()}
    assert {"method": "GET", "path": "/v1/queries", "status": 401}.items() <= by_path[
        "/v1/queries"
    ].items()
    assert by_path["/healthz"]["status"] == 200
    # The web server's own lines (startup, shutdown) come through the same renderer.
    server_lines = [line for line in log_lines(api) if line.get("logger", "").startswith("uvicorn")]
    events = " ".join(line["event"] for line in server_lines)
    assert "Application startup complete" in events
    assert "Shutting down" in events or "Finished server process" in events
    assert all({"level", "timestamp"} <= line.keys() for line in server_lines)


def test_malformed_http_gets_the_one_error_shape(api_process: Callable[..., ApiProcess]) -> None:
    api = api_process()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line.startswith("HTTP/1.1 400"), answer
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "bad_request"
    assert httpx.get(f"{api.url}/healthz").status_code == 200  # the server is fine


def test_metrics_are_served_on_their_own_port_for_every_api_process(
    api_process: Callable[..., ApiProcess], make_tenant: Callable[..., TenantApi]
) -> None:
    metrics_port = free_port()
    api = api_process(workers=2, api_metrics_port=str(metrics_port))
    public = httpx.get(f"{api.url}/metrics")
    assert public.status_code == 404
    assert public.json()["error"]["code"] == "not_found"

    tenant = make_tenant()
    submitted = []
    for attempt in range(4):  # over a few connections, so that both processes may take some
        response = httpx.post(
            f"{api.url}/v1/queries", json={"prompt": f"metrics {attempt}"}, headers=tenant.headers
        )
        assert response.status_code == 202, response.text
        submitted.append(response.json()["id"])

    def queued() -> float:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "twotier_queries_total"
            and sample.labels == {"status": "queued", "tier": "small"}
        )

    assert wait_for(lambda: queued() >= len(submitted), timeout=10, what="the queued count")
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert "twotier_queue_depth" in scraped
    assert "twotier_unfinished_queries" in scraped
    for query_id in submitted:  # nothing left queued for a later test's worker
        assert tenant.client.delete(f"/v1/queries/{query_id}", headers=tenant.headers).is_success
