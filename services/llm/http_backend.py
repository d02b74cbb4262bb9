"""What the HTTP backends share: a pooled client, timeouts, retries of transient errors, and
patience with a server that is full.

A failure (timeout, connection error, 5xx) is retried ``attempts`` times and then counts
towards the circuit breaker. Overload is different: a server at its concurrency limit answers
429 (TGI: "Model is overloaded"), or 503 with Retry-After or an "overloaded" message (hosted
APIs). That is back-pressure: the call waits as long as the server asks (Retry-After, else an
exponential backoff), with jitter so that workers do not come back in step, for up to
``overload_patience_s``; then it raises ModelOverloaded, which the breaker ignores and which
puts the query back in the queue. A bare 503 stays a failure: it is what a proxy in front of a
dead server ("no healthy upstream") answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from services.llm.base import ModelError, ModelOverloaded, TransientModelError

# 408 and 5xx are the server's momentary state; 424 is TGI's "generation error" (e.g. a
# CUDA OOM on one batch), which also clears on retry.
TRANSIENT_STATUS = frozenset({408, 424, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503})
RETRY_AFTER_JITTER = 0.2  # a Retry-After of s seconds waits s to 1.2 s


@dataclass(frozen=True)
class ServerAnswer:
    body: dict[str, Any]
    headers: httpx.Headers


class HttpBackend:
    def __init__(
        self,
        *,
        url: str,
        model: str,
        timeout_s: float,
        attempts: int,
        headers: dict[str, str] | None = None,
        overload_patience_s: float = 60.0,
        max_connections: int = 100,
    ) -> None:
        """``max_connections``: the calls this process makes to the server at once; each
        thread of a worker's pool holds one connection while its call runs, and keeps it for
        the next call."""
        self.model = model
        self.attempts = attempts
        self.overload_patience_s = overload_patience_s
        self._client = httpx.Client(
            base_url=url if url.endswith("/") else f"{url}/",
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers=headers,
        )

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post(path, body).body

    def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> ServerAnswer:
        """POST with retries of failures, waiting out overload for up to the patience."""
        overload = Retrying(
            retry=retry_if_exception_type(ModelOverloaded),
            stop=stop_before_delay(self.overload_patience_s),
            wait=wait_out_overload,
            reraise=True,
        )
        return overload(self._post_with_retries, path, body, headers)

    def _post_with_retries(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None
    ) -> ServerAnswer:
        failures = Retrying(
            retry=retry_if_exception(_is_failure),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
            reraise=True,
        )
        return failures(self._post_once, path, body, headers)

    def _post_once(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None
    ) -> ServerAnswer:
        try:
            response = self._client.post(path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientModelError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            return ServerAnswer(response.json(), response.headers)
        message = f"{self.model}: HTTP {response.status_code}: {_error_text(response)}"
        if _is_overload(response):
            raise ModelOverloaded(message, retry_after_s=retry_after_s(response.headers))
        if response.status_code in TRANSIENT_STATUS:
            raise TransientModelError(message)
        raise ModelError(message)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, TransientModelError) and not isinstance(exc, ModelOverloaded)


def _is_overload(response: httpx.Response) -> bool:
    if response.status_code == 429:
        return True
    if response.status_code != 503:
        return False
    says_so = "overloaded" in response.text[:2000].lower()
    return says_so or retry_after_s(response.headers) is not None


def retry_after_s(headers: httpx.Headers) -> float | None:
    """The wait a server asks for: ``retry-after-ms`` (Azure), or Retry-After in seconds or as
    an HTTP date; None when it asks for none."""
    try:
        if "retry-after-ms" in headers:
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            pass  # not seconds: an HTTP date
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (ValueError, TypeError):
        return None


_backoff = wait_exponential_jitter(multiplier=0.5, max=30.0)


def wait_out_overload(state: RetryCallState) -> float:
    """Retry-After (plus up to 20 % jitter) when the server gave one, else backoff with jitter."""
    error = state.outcome.exception() if state.outcome else None
    asked = error.retry_after_s if isinstance(error, ModelOverloaded) else None
    if asked is None:
        return float(_backoff(state))
    return asked * (1 + random.uniform(0, RETRY_AFTER_JITTER))


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        if isinstance(error, dict):  # OpenAI: {"error": {"message", "type"}}
            return f"{error.get('type', 'error')}: {error.get('message', error)}"
        return f"{payload.get('error_type', 'error')}: {error}"
    return str(payload)[:500]
