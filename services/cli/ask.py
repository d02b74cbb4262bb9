"""``twotier ask``: submit one query to a running server and wait for its answer."""

from __future__ import annotations

import time
from typing import Any

import click
import httpx

from services.settings import get_settings

DEFAULT_URL = "http://127.0.0.1:8000"  # where `twotier serve` listens by default

MAX_WAIT_PER_REQUEST_S = 60


def ask_and_wait(
    prompt: str,
    *,
    url: str,
    api_key: str | None,
    task: str | None,
    max_new_tokens: int | None,
    timeout: float,
) -> dict[str, Any]:
    key = api_key or _demo_key()
    body: dict[str, Any] = {"prompt": prompt}
    if task:
        body["task"] = task
    if max_new_tokens:
        body["max_new_tokens"] = max_new_tokens
    deadline = time.monotonic() + timeout
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout + 10
    ) as client:
        try:
            response = client.post("/v1/queries", json=body, params={"wait": _wait(deadline)})
            query = _checked(response)
            while query["status"] not in {"succeeded", "failed", "cancelled"}:
                if time.monotonic() >= deadline:
                    raise click.ClickException(
                        f"no answer within {timeout:.0f} s; the query is {query['status']}: "
                        f"{url}/v1/queries/{query['id']}"
                    )
                response = client.get(
                    f"/v1/queries/{query['id']}", params={"wait": _wait(deadline)}
                )
                query = _checked(response)
        except httpx.TransportError as exc:
            raise click.ClickException(
                f"cannot reach {url} ({exc}); is `twotier serve` running?"
            ) from exc
    return query


def describe(query: dict[str, Any]) -> str:
    if query["status"] != "succeeded":
        error = query.get("error") or {}
        return f"{query['status']}: {error.get('code')}: {error.get('message')}"
    threshold = query["threshold"]
    decided = (
        "warm-up, no threshold yet"
        if threshold is None
        else f"threshold {threshold:.4f} (version {query['threshold_version']})"
    )
    return (
        f"{query['answer']}\n\n"
        f"tier: {query['tier']} · margin {query['margin']:.4f} · {decided} · "
        f"cost {query['cost']['total']}"
    )


def _demo_key() -> str:
    path = get_settings().demo_key_file
    if not path.is_file():
        raise click.ClickException(
            f"no API key: pass --api-key (or TWOTIER_API_KEY), or start `twotier serve` "
            f"once to create the demo tenant ({path})"
        )
    return path.read_text().strip()


def _wait(deadline: float) -> float:
    return max(0.0, min(MAX_WAIT_PER_REQUEST_S, deadline - time.monotonic()))


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise click.ClickException(f"HTTP {response.status_code}: {message}")
    result: dict[str, Any] = response.json()
    return result


@click.command()
@click.argument("prompt")
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="TWOTIER_URL")
@click.option("--api-key", envvar="TWOTIER_API_KEY", help="Default: the local demo tenant's key.")
@click.option("--task", default=None, help="Task label (queries with one label share a threshold).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
def ask(
    prompt: str,
    url: str,
    api_key: str | None,
    task: str | None,
    max_new_tokens: int | None,
    timeout: float,
) -> None:
    """Ask a running twotier server and print the answer, tier, margin and threshold."""
    query = ask_and_wait(
        prompt, url=url, api_key=api_key, task=task, max_new_tokens=max_new_tokens, timeout=timeout
    )
    click.echo(describe(query))
    if query["status"] != "succeeded":
        raise SystemExit(1)
