"""A ``multipart/form-data`` body (RFC 7578) read into its fields, for `POST /v1/files`.

The upload is held in memory whole anyway (it is stored in one row), so the body is split at
its boundaries with ``bytes.find``: fast on a 100 MiB file, and no dependency for one route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from starlette.exceptions import HTTPException

_NAME = re.compile(rb'\bname="([^"]*)"')
_FILENAME = re.compile(rb'\bfilename="([^"]*)"')


@dataclass(frozen=True)
class FormField:
    value: bytes
    filename: str | None  # set for a file field


def parse_form(body: bytes, content_type: str | None) -> dict[str, FormField]:
    """The body's fields by name (the first of each name); 400 for a body that is not
    ``multipart/form-data``."""
    boundary = _boundary(content_type)
    delimiter = b"--" + boundary
    fields: dict[str, FormField] = {}
    position = body.find(delimiter)
    if position < 0:
        raise HTTPException(400, "the multipart body has no part")
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return fields  # the closing delimiter
        headers_end = body.find(b"\r\n\r\n", position)
        next_delimiter = body.find(b"\r\n" + delimiter, position)
        if headers_end < 0 or next_delimiter < 0 or headers_end > next_delimiter:
            raise HTTPException(400, "the multipart body is cut short or malformed")
        headers = body[position:headers_end]
        name = _NAME.search(headers)
        if name is not None and name.group(1).decode() not in fields:
            filename = _FILENAME.search(headers)
            fields[name.group(1).decode()] = FormField(
                value=body[headers_end + 4 : next_delimiter],
                filename=filename.group(1).decode(errors="replace") if filename else None,
            )
        position = next_delimiter + 2


def _boundary(content_type: str | None) -> bytes:
    message = Message()
    message["content-type"] = content_type or ""
    boundary = message.get_param("boundary")
    if message.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise HTTPException(
            400, "send the file as multipart/form-data, with fields `file` and `purpose`"
        )
    return boundary.encode()
