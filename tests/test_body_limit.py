"""The request body limit (services/api/body_limit.py) as a client sees it: a declared
Content-Length over the limit is refused before the body is read, a chunked body is refused
once it passes the limit, and the refusal is a 413 in the one error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from services.api.body_encoding import Utf8Body
from services.api.body_limit import RequestBodyLimit
from services.api.error_responses import install_error_handlers
from tests.asgi_driver import post_chunks
from tests.server_thread import ServerThread

LIMIT = 1000


def small_app() -> FastAPI:
    """The API's body middleware, in the API's order, around one echoing route."""
    app = FastAPI()
    app.add_middleware(Utf8Body)
    app.add_middleware(RequestBodyLimit, max_bytes=LIMIT)
    install_error_handlers(app)

    @app.post("/echo")
    def echo(body: dict[str, str]) -> dict[str, int]:
        return {"chars": sum(len(value) for value in body.values())}

    @app.post("/ignore")
    def ignore() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(small_app()).start()
    yield running
    running.stop()


def post(server: ServerThread, path: str, content: bytes | Iterator[bytes]) -> httpx.Response:
    json_type = {"Content-Type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=content, headers=json_type)


def body_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 12)."""
    body = json.dumps({"text": "x" * (size - 12)}).encode()
    assert len(body) == size
    return body


def assert_refused(status: int, body: dict[str, object]) -> None:
    assert status == 413
    assert body == {
        "error": {
            "code": "request_too_large",
            "message": f"the request body is larger than {LIMIT} bytes; "
            "send a shorter prompt or less metadata",
            "details": {"limit_bytes": LIMIT},
        }
    }


def test_a_body_of_exactly_the_limit_is_read(server: ServerThread) -> None:
    response = post(server, "/echo", body_of(LIMIT))
    assert response.status_code == 200
    assert response.json() == {"chars": LIMIT - 12}


def test_a_declared_length_over_the_limit_is_refused_and_the_connection_closed(
    server: ServerThread,
) -> None:
    response = post(server, "/echo", body_of(LIMIT + 1))
    assert_refused(response.status_code, response.json())
    assert response.headers["Connection"] == "close"


def test_a_declared_length_over_the_limit_is_refused_on_a_route_that_reads_no_body(
    server: ServerThread,
) -> None:
    response = post(server, "/ignore", body_of(LIMIT * 5))
    assert_refused(response.status_code, response.json())


def test_a_chunked_body_over_the_limit_is_refused(server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:
        body = body_of(LIMIT + 200)
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = post(server, "/echo", chunks())
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert_refused(response.status_code, response.json())


def test_a_chunked_body_within_the_limit_is_read(server: ServerThread) -> None:
    body = body_of(LIMIT)
    response = post(server, "/echo", iter([body[:300], body[300:]]))
    assert response.status_code == 200


@settings(max_examples=25, deadline=None)
@given(size=st.integers(min_value=12, max_value=LIMIT * 2))
def test_a_body_is_refused_exactly_when_it_is_over_the_limit(size: int) -> None:
    response = post_chunks(small_app(), "/echo", [body_of(size)], content_length=size)
    assert response.status == (413 if size > LIMIT else 200)


def test_a_body_without_a_length_is_refused_before_the_rest_is_read() -> None:
    chunk = b" " * 400  # JSON allows leading white space
    response = post_chunks(small_app(), "/echo", [chunk] * 10 + [b"{}"])
    assert_refused(response.status, response.json())
    assert response.chunks_read == 3  # 1200 bytes: over the limit, and nothing more read


def test_a_malformed_content_length_is_left_to_the_server_and_the_body_still_counted() -> None:
    body = b" " * (LIMIT + 1)
    response = post_chunks(small_app(), "/echo", [body], content_length="not a number")
    assert_refused(response.status, response.json())
