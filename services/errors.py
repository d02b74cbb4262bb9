"""Domain errors. Each carries a stable machine-readable code; the API maps them to HTTP."""

from __future__ import annotations

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


class IdempotencyConflict(TwotierError):
    code = "idempotency_key_reused"


class QueryAlreadyFinished(TwotierError):
    code = "query_already_finished"


class InvalidApiKey(TwotierError):
    code = "invalid_api_key"


class TenantDisabled(TwotierError):
    code = "tenant_disabled"


class BudgetExceeded(TwotierError):
    code = "budget_exceeded"


class AdminOnly(TwotierError):
    code = "admin_token_required"


class RateLimited(TwotierError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str = "rate_limited") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.code = code
