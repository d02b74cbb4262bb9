"""The multipart/form-data reader of `POST /v1/files`: fields, file names, malformed bodies."""

from __future__ import annotations

import httpx
import pytest
from starlette.exceptions import HTTPException

from services.api.multipart import parse_form


def encoded(files: dict[str, tuple[str, bytes]], data: dict[str, str]) -> tuple[bytes, str]:
    """A body and Content-Type as httpx (which OpenAI's SDK uses) sends them."""
    request = httpx.Request("POST", "http://test/v1/files", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_fields_and_the_file_come_back_as_sent() -> None:
    content = b'{"custom_id": "a"}\r\n{"custom_id": "b"}\n\r\n--not-a-boundary\n'
    body, content_type = encoded({"file": ("in.jsonl", content)}, {"purpose": "batch"})
    form = parse_form(body, content_type)
    assert form["file"].value == content
    assert form["file"].filename == "in.jsonl"
    assert form["purpose"].value == b"batch"
    assert form["purpose"].filename is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"purpose": "batch"}', "application/json"),
        (b"no parts at all", "multipart/form-data; boundary=xyz"),
        (
            b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\ncut short',
            "multipart/form-data; boundary=xyz",
        ),
        (b"", None),
    ],
)
def test_a_body_that_is_not_multipart_is_a_400(body: bytes, content_type: str | None) -> None:
    with pytest.raises(HTTPException) as refused:
        parse_form(body, content_type)
    assert refused.value.status_code == 400
