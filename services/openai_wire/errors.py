"""twotier's errors in OpenAI's error shape, so that OpenAI's SDKs raise their own exceptions.

The body is ``{"error": {"message", "type", "param", "code"}}``. ``code`` is twotier's stable
code (services/errors.py), except where OpenAI has one for the same thing: over budget is
``insufficient_quota`` and over a rate limit ``rate_limit_exceeded``. The status is the one
the rest of the API answers, except two: an invalid request is 400, as OpenAI answers it (the
rest of the API says 422), and over budget is 429, as OpenAI answers an exhausted quota (the
rest of the API says 402, which OpenAI's SDKs know no exception for). A 429 for a budget is
final until the budget changes, so it comes with ``x-should-retry: false``, which OpenAI's
SDKs obey; so does every error after which sending the request again would not help or could
answer the same question twice (a query that failed, or one still being answered). Only a
rate limit and an overloaded server leave the SDK free to retry, after Retry-After.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.errors import InvalidParameter

OPENAI_CODES = {"budget_exceeded": "insufficient_quota", "rate_limited": "rate_limit_exceeded"}
RETRYABLE = {429, 503}
CUSTOM_TYPES = {"unsupported_value", "unsupported_parameter"}
# The names pydantic puts in an error's location for the member of a union it tried.
UNION_MEMBERS = {"str", "int", "float", "bool", "list", "dict", "none"}


@dataclass(frozen=True)
class OpenAIError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def openai_error(status: int, code: str, message: str, details: Any = None) -> OpenAIError:
    """The OpenAI-shaped answer to an error the rest of the API answers with ``status``,
    ``code``, ``message`` and ``details``."""
    if code == "budget_exceeded":
        status, kind = 429, "insufficient_quota"
    elif status == 422:
        status, kind = 400, "invalid_request_error"
    elif status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    is_final = status not in RETRYABLE or code == "budget_exceeded"
    body = {
        "message": message,
        "type": kind,
        "param": _param_of_details(details),
        "code": OPENAI_CODES.get(code, code),
    }
    if isinstance(details, Mapping) and "query_id" in details:
        body["query_id"] = details["query_id"]
    return OpenAIError(
        status=status,
        body={"error": body},
        headers={"x-should-retry": "false"} if is_final else {},
    )


def invalid_parameter(errors: Sequence[Mapping[str, Any]]) -> InvalidParameter:
    """The first thing wrong with a body, from pydantic's errors (a parameter twotier cannot
    honour before any other)."""
    chosen = next((error for error in errors if error["type"] in CUSTOM_TYPES), errors[0])
    param = param_of(chosen["loc"])
    kind = str(chosen["type"])
    if kind in CUSTOM_TYPES:
        return InvalidParameter(str(chosen["msg"]), param=param, code=kind)
    if kind == "extra_forbidden":
        return InvalidParameter(
            f"unknown parameter: {param!r}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        return InvalidParameter(
            f"missing required parameter: {param!r}", param=param, code="missing_required_parameter"
        )
    code = "invalid_type" if kind.endswith("_type") else "invalid_value"
    return InvalidParameter(f"invalid {param!r}: {chosen['msg']}", param=param, code=code)


def param_of(location: Sequence[int | str]) -> str | None:
    """``("body", "messages", 0, "content")`` as OpenAI names it: ``messages[0].content``."""
    named = ""
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(part, int):
            named += f"[{part}]"
        elif part.lower() not in UNION_MEMBERS and not any(c in part for c in "[("):
            named += f".{part}" if named else part
    return named or None


def _param_of_details(details: Any) -> str | None:
    if isinstance(details, Mapping):
        param = details.get("param")
        return str(param) if param is not None else None
    if isinstance(details, list) and details and isinstance(details[0], Mapping):
        return param_of(details[0].get("location", []))  # the rest of the API's 422 details
    return None
