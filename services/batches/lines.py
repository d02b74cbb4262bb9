"""A batch's input lines: each one checked, and turned into the query it asks for, by the
same conversion the OpenAI-compatible routes use (services/openai_wire/conversion.py).

A line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}``. A line
that is not such a request, or whose body the route would refuse, goes to the batch's error
file; the other lines run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.errors import InvalidParameter, TwotierError
from services.openai_wire import conversion
from services.openai_wire.errors import OPENAI_CODES
from services.queries import NewQuery

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
ENDPOINTS = (CHAT_ENDPOINT, COMPLETIONS_ENDPOINT)
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class RequestLine:
    line: int
    custom_id: str | None
    body: dict[str, Any] | None  # None when the line is refused
    error_code: str | None = None
    error_message: str | None = None


def new_query(endpoint: str, body: Mapping[str, Any], *, models: Sequence[str]) -> NewQuery:
    """The query a request body asks for, or the error the endpoint's route would answer."""
    if body.get("stream"):
        raise InvalidParameter(
            "stream must be false in a batch: its answers go to the output file",
            param="body.stream",
            code="unsupported_value",
        )
    if endpoint == CHAT_ENDPOINT:
        return conversion.chat_query(conversion.parse_chat_body(body), models=models)
    return conversion.completion_query(conversion.parse_completion_body(body), models=models)


def error_code(error: TwotierError) -> str:
    """The code a refused request shows in the error file: OpenAI's where it has one."""
    return OPENAI_CODES.get(error.code, error.code)


def read_lines(
    lines: Sequence[tuple[int, str]], *, endpoint: str, models: Sequence[str]
) -> list[RequestLine]:
    """Every line of the file, each checked on its own."""
    seen: set[str] = set()
    return [_read_line(number, text, endpoint, models, seen) for number, text in lines]


class _Refused(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


def _read_line(
    number: int, text: str, endpoint: str, models: Sequence[str], seen: set[str]
) -> RequestLine:
    try:
        custom_id, body = _checked(text, endpoint, models, seen)
    except _Refused as refused:
        return RequestLine(
            line=number,
            custom_id=refused.custom_id,
            body=None,
            error_code=refused.code,
            error_message=f"line {number}: {refused.message}"[:2000],
        )
    return RequestLine(line=number, custom_id=custom_id, body=body)


def _checked(
    text: str, endpoint: str, models: Sequence[str], seen: set[str]
) -> tuple[str, dict[str, Any]]:
    try:
        request = json.loads(text)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        raise _Refused("invalid_jsonl", "the line is not a JSON object")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        message = f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
        raise _Refused("invalid_custom_id", message)
    if custom_id in seen:
        message = f"custom_id {custom_id!r} is on an earlier line: each request needs its own"
        raise _Refused("duplicate_custom_id", message, custom_id)
    seen.add(custom_id)
    if request.get("method") != "POST":
        raise _Refused("invalid_method", 'method must be "POST"', custom_id)
    if request.get("url") != endpoint:
        message = f"url is {request.get('url')!r}; this batch's endpoint is {endpoint!r}"
        raise _Refused("invalid_url", message, custom_id)
    body = request.get("body")
    if not isinstance(body, dict):
        raise _Refused("invalid_body", "body must be a JSON object", custom_id)
    try:
        new_query(endpoint, body, models=models)
    except TwotierError as refused:
        raise _Refused(error_code(refused), refused.message, custom_id) from None
    return custom_id, body
