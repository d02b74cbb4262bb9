"""What the HTTP backends share: a pooled client, timeouts, and retries of transient errors."""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from services.llm.base import ModelError, TransientModelError

# 408/429 and 5xx are the server's momentary state; 424 is TGI's "generation error" (e.g. a
# CUDA OOM on one batch), which also clears on retry.
TRANSIENT_STATUS = frozenset({408, 424, 429, 500, 502, 503, 504})


class HttpBackend:
    def __init__(
        self,
        *,
        url: str,
        model: str,
        timeout_s: float,
        attempts: int,
        headers: dict[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        """``max_connections``: the calls this process makes to the server at once; each
        thread of a worker's pool holds one connection while its call runs, and keeps it for
        the next call."""
        self.model = model
        self._client = httpx.Client(
            base_url=url if url.endswith("/") else f"{url}/",
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers=headers,
        )
        self.post_json = retry(
            retry=retry_if_exception_type(TransientModelError),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
            reraise=True,
        )(self._post_once)

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.post(path, json=body)
        except httpx.TransportError as exc:
            raise TransientModelError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            payload: dict[str, Any] = response.json()
            return payload
        message = f"{self.model}: HTTP {response.status_code}: {_error_text(response)}"
        if response.status_code in TRANSIENT_STATUS:
            raise TransientModelError(message)
        raise ModelError(message)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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
