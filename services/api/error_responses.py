"""One error body shape, ``{"error": {"code", "message", "details"}}``, for every failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match

from services import errors
from services.api.openai_routes import speaks_openai
from services.api.schemas import ErrorBody
from services.openai_wire.errors import invalid_parameter, openai_error

log = structlog.get_logger(__name__)

HTTP_STATUS = {
    errors.InvalidRequest: 422,
    errors.NotFound: 404,
    errors.TenantNameTaken: 409,
    errors.IdempotencyConflict: 409,
    errors.QueryAlreadyFinished: 409,
    errors.BatchAlreadyFinished: 409,
    errors.Unauthenticated: 401,
    errors.InvalidApiKey: 401,
    errors.TenantDisabled: 403,
    errors.BudgetExceeded: 402,
    errors.AdminOnly: 401,
    errors.RateLimited: 429,
    errors.WebhookUrlRefused: 422,
    errors.WebhookUrlUnresolvable: 422,
    errors.WebhookNotReplayable: 409,
    errors.ServiceOverloaded: 503,
    errors.InvalidParameter: 400,
    errors.ModelNotFound: 404,
    errors.QueryFailed: 502,
    errors.QueryCancelled: 409,
    errors.AnswerNotReady: 504,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


class RequestTooLarge(HTTPException):
    """A request body over ``TWOTIER_MAX_REQUEST_BYTES``. Raised while the body streams in;
    FastAPI passes HTTPExceptions from body reading through to the handlers unchanged."""

    code = "request_too_large"

    def __init__(
        self, limit_bytes: int, *, hint: str = "send a shorter prompt or less metadata"
    ) -> None:
        super().__init__(413, f"the request body is larger than {limit_bytes} bytes; {hint}")
        self.details = {"limit_bytes": limit_bytes}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "The request body is not JSON in UTF-8.",
        401: "Missing, malformed, unknown or revoked API key.",
        403: "The tenant is disabled.",
        413: "The request body is over `TWOTIER_MAX_REQUEST_BYTES`.",
        422: "The request is invalid; `error.details` says where.",
        429: "Over the tenant's rate limit or unfinished-query limit; see Retry-After.",
        503: "Overloaded, or the database is unreachable; retry after Retry-After seconds.",
    }.items()
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error in the API's one shape, or in OpenAI's on the OpenAI-compatible routes
    (``path``: the request's)."""
    if speaks_openai(path):
        shaped = openai_error(status, code, message, details)
        return JSONResponse(
            status_code=shaped.status,
            content=shaped.body,
            headers={**(headers or {}), **shaped.headers},
        )
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status, content=body, headers=headers)


# The methods the API's routes use; a 405 names those of them that the path answers.
ROUTE_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path. Starlette's own 405 names only
    the first route that matched the path, and FastAPI has one route per method."""

    def answers(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)

    return [method for method in ROUTE_METHODS if answers(method)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.TwotierError)
    async def _domain_error(request: Request, exc: errors.TwotierError) -> JSONResponse:
        status = HTTP_STATUS.get(type(exc), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, errors.RateLimited | errors.ServiceOverloaded):
            headers = {"Retry-After": str(exc.retry_after_s)}
        path = request.url.path
        return error_response(status, exc.code, exc.message, exc.details, headers, path=path)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        unparsable = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if unparsable:
            error = unparsable[0]
            reason = error.get("ctx", {}).get("error", "a syntax error")
            message = (
                f"the request body is not valid JSON: {reason} at character {error['loc'][-1]}"
            )
            return error_response(400, "bad_request", message, path=path)
        if speaks_openai(path):
            invalid = invalid_parameter(exc.errors())
            return error_response(400, invalid.code, invalid.message, invalid.details, path=path)
        details = [
            {"location": list(e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        where = ", ".join(".".join(str(p) for p in d["location"]) for d in details)
        return error_response(422, "invalid_request", f"invalid fields: {where}", details)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        details: Any = exc.details if isinstance(exc, RequestTooLarge) else None
        headers = exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            details = {"allowed_methods": allowed}
        return error_response(
            exc.status_code, code, str(exc.detail), details, headers, path=request.url.path
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database_unavailable", error=str(exc.orig))
        return error_response(
            503,
            "database_unavailable",
            "the database is unreachable; retry shortly",
            headers={"Retry-After": "5"},
            path=request.url.path,
        )

    @app.exception_handler(PoolTimeout)
    async def _no_connection(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database_pool_exhausted", error=str(exc))
        return error_response(
            503,
            "overloaded",
            "no database connection was free; retry shortly",
            headers={"Retry-After": "1"},
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error")
        return error_response(
            500, "internal_error", "an unexpected error occurred", path=request.url.path
        )
