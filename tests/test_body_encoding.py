"""Request bodies must be JSON in UTF-8 without a byte order mark
(services/api/body_encoding.py): UTF-16, UTF-32, a BOM, a NUL byte or bytes that are not UTF-8
all end as ``400 bad_request`` in the one error shape, however the body is cut into chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from services.api.body_encoding import NOT_UTF8, Utf8Body
from services.api.error_responses import install_error_handlers
from tests.asgi_driver import post_chunks

BODY = {"prompt": "café ☕ 𝄞"}


def small_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(Utf8Body)
    install_error_handlers(app)

    @app.post("/echo")
    def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(small_app()) as test_client:
        yield test_client


def post(client: TestClient, content: bytes) -> tuple[int, dict[str, object]]:
    response = client.post("/echo", content=content, headers={"Content-Type": "application/json"})
    return response.status_code, response.json()


NOT_UTF8_ERROR = {"error": {"code": "bad_request", "message": NOT_UTF8, "details": None}}


def test_utf8_json_is_read(client: TestClient) -> None:
    assert post(client, json.dumps(BODY, ensure_ascii=False).encode()) == (200, BODY)


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xef\xbb\xbf" + json.dumps(BODY).encode(),  # UTF-8 with a BOM
        json.dumps(BODY).encode("utf-16"),  # with its BOM, in this machine's byte order
        json.dumps(BODY).encode("utf-16-le"),
        json.dumps(BODY).encode("utf-16-be"),
        json.dumps(BODY).encode("utf-32"),
        json.dumps(BODY).encode("utf-32-le"),
        json.dumps(BODY).encode("utf-32-be"),
        b'{"prompt": "a\x00b"}',  # a raw NUL byte, which UTF-8 JSON never holds
    ],
    ids=["utf8-bom", "utf16", "utf16le", "utf16be", "utf32", "utf32le", "utf32be", "nul"],
)
def test_other_encodings_and_byte_order_marks_are_a_400(client: TestClient, encoded: bytes) -> None:
    assert post(client, encoded) == (400, NOT_UTF8_ERROR)


def test_bytes_that_are_not_utf8_are_a_400_from_the_decoding(client: TestClient) -> None:
    status, body = post(client, '{"prompt": "café"}'.encode("latin-1"))
    assert status == 400
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "bad_request"


def test_an_escaped_nul_is_json_and_passes_the_encoding_check(client: TestClient) -> None:
    assert post(client, b'{"prompt": "a\\u0000b"}') == (200, {"prompt": "a\x00b"})


def test_a_bom_cut_across_chunks_is_still_seen() -> None:
    body = b"\xef\xbb\xbf" + json.dumps(BODY).encode()
    response = post_chunks(small_app(), "/echo", [body[:1], body[1:2], body[2:]])
    assert (response.status, response.json()) == (400, NOT_UTF8_ERROR)


def test_a_nul_in_a_later_chunk_is_seen() -> None:
    body = json.dumps({"prompt": "x" * 50}).encode()
    response = post_chunks(small_app(), "/echo", [body[:20], b"\x00", body[20:]])
    assert (response.status, response.json()) == (400, NOT_UTF8_ERROR)


def test_an_empty_first_chunk_does_not_hide_a_bom() -> None:
    body = b"\xff\xfe" + json.dumps(BODY).encode("utf-16-le")
    response = post_chunks(small_app(), "/echo", [b"", body])
    assert response.status == 400


@given(
    text=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
)
def test_utf8_json_in_any_chunks_is_read_unchanged(text: str, cuts: list[int]) -> None:
    body = json.dumps({"prompt": text}, ensure_ascii=False).encode()
    points = sorted({min(cut, len(body)) for cut in cuts})
    chunks = [
        body[start:end] for start, end in zip([0, *points], [*points, len(body)], strict=True)
    ]
    response = post_chunks(small_app(), "/echo", chunks)
    assert (response.status, response.json()) == (200, {"prompt": text})


@given(text=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1))
def test_utf16_and_utf32_are_refused_whatever_the_text(text: str) -> None:
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        encoded = json.dumps({"prompt": text}).encode(encoding)
        response = post_chunks(small_app(), "/echo", [encoded])
        assert response.status == 400, encoding
