"""Domain errors. Each carries a stable machine-readable code; the API maps them to HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class TwotierError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(TwotierError):
    code = "invalid_request"


class NotFound(TwotierError):
    code = "not_found"


class TenantNameTaken(TwotierError):
    """Another tenant has this name: names are unique, so the request conflicts with it."""

    code = "tenant_name_taken"


class IdempotencyConflict(TwotierError):
    code = "idempotency_key_reused"


class QueryAlreadyFinished(TwotierError):
    code = "query_already_finished"


class BatchAlreadyFinished(TwotierError):
    """A cancel of a batch that is finalizing or finished."""

    code = "batch_already_finished"


class Unauthenticated(TwotierError):
    """No Authorization header at all."""

    code = "unauthenticated"


class InvalidApiKey(TwotierError):
    code = "invalid_api_key"


class TenantDisabled(TwotierError):
    code = "tenant_disabled"


class BudgetExceeded(TwotierError):
    code = "budget_exceeded"

    def __init__(self, message: str, *, period_start: datetime, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.period_start = period_start  # of the budget period that could not pay


class AdminOnly(TwotierError):
    code = "admin_token_required"


class RateLimited(TwotierError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str = "rate_limited") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code


class WebhookUrlRefused(TwotierError):
    """The URL is not one webhooks may be sent to (scheme, credentials, or an address inside
    a private network that the allowlist does not name)."""

    code = "webhook_url_refused"


class WebhookUrlUnresolvable(TwotierError):
    code = "webhook_url_unresolvable"


class WebhookNotReplayable(TwotierError):
    code = "webhook_not_replayable"


class ServiceOverloaded(TwotierError):
    """More requests than the process can serve right now; the client should retry."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidParameter(InvalidRequest):
    """One parameter of a request in OpenAI's format is invalid, or one the cascade cannot
    honour; ``param`` names it as OpenAI does (``messages[0].content``)."""

    def __init__(self, message: str, *, param: str | None, code: str) -> None:
        super().__init__(message, details={"param": param})
        self.param = param
        self.code = code


class ModelNotFound(NotFound):
    code = "model_not_found"


class QueryFailed(TwotierError):
    """A synchronous call's query failed; ``code`` is the query's own error code."""

    def __init__(self, message: str, *, code: str, query_id: str) -> None:
        super().__init__(message, details={"query_id": query_id})
        self.code = code


class QueryCancelled(TwotierError):
    """A synchronous call's query was cancelled (``DELETE /v1/queries/{id}``) while it waited."""

    code = "query_cancelled"

    def __init__(self, message: str, *, query_id: str) -> None:
        super().__init__(message, details={"query_id": query_id})


class AnswerNotReady(TwotierError):
    """A synchronous call waited its limit and the query has not finished; it goes on, and
    its answer can be polled."""

    code = "query_not_finished"

    def __init__(self, message: str, *, query_id: str) -> None:
        super().__init__(message, details={"query_id": query_id})
