"""At start, ask each tier's model server what it allows, and stop when the settings ask more.

A worker whose settings ask a server for more than it allows would fail every query at the
first call (TGI refuses ``top_n_tokens`` above ``--max-top-n-tokens`` with 422) or flood it
with more concurrent calls than ``--max-concurrent-requests``; better to stop at start with a
message that names the setting. The same look-up names the tier's model after the server's own
id when ``TWOTIER_{SMALL,LARGE}__MODEL`` is unset, so that the ledger never names the wrong one.

- TGI: ``GET /info`` gives ``model_id``, ``max_concurrent_requests``, ``max_input_tokens`` and
  ``max_total_tokens``. TGI 3.x's ``/info`` does not report ``max_top_n_tokens``; where it is
  missing, a ``/generate`` with an empty input and the wanted ``top_n_tokens`` learns it
  without running the model: TGI checks ``top_n_tokens`` just before refusing the empty input,
  so the 422 names either the limit or the empty input.
- OpenAI-compatible servers: ``GET /v1/models`` lists the model ids served; ``top_logprobs``
  is at most 20 in the OpenAI API (and vLLM's default ``--max-logprobs``).

A server that does not answer yet (starting, or down) is asked again with backoff for
``TWOTIER_MODEL_SERVER_START_WAIT_S``, then the process stops with a message naming the URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from services.llm.local_extra import INSTALL_LOCAL, missing_local_packages
from services.settings import Settings, TierSettings, tier_variable

log = structlog.get_logger(__name__)

OPENAI_MAX_TOP_LOGPROBS = 20
_TOP_N_LIMIT = re.compile(r"`top_n_tokens` must be >= 0 and <= (\d+)")


class ModelServerUnfit(Exception):
    """The settings ask a model server for more than it allows, or it cannot be reached."""


class _NotAnswering(Exception):
    """No answer yet (connection refused, timeout, 5xx, 429): ask again until the wait ends."""


@dataclass(frozen=True)
class ServerInfo:
    model_ids: tuple[str, ...]
    max_top_n_tokens: int | None = None  # None: unknown
    max_concurrent_requests: int | None = None
    max_total_tokens: int | None = None


def check_or_exit(settings: Settings, *, tiers: list[str], tasks_at_once: int, who: str) -> None:
    """``check_model_servers``, stopping the process with the problems as its message."""
    try:
        check_model_servers(settings, tiers=tiers, tasks_at_once=tasks_at_once)
    except ModelServerUnfit as exc:
        log.error("model_server.unfit", problems=str(exc))
        raise SystemExit(f"{who} cannot start:\n{exc}") from None


def check_before_work(settings: Settings, *, queues: list[str], tasks_at_once: object) -> None:
    """A worker's check at start: the tiers whose queues it consumes. ``tasks_at_once`` is
    its pool's concurrency; a tier's calls in flight are at most that and its
    ``max_concurrent_calls``."""
    check_or_exit(
        settings,
        tiers=[tier for tier in settings.tier_names if tier in queues],
        tasks_at_once=tasks_at_once if isinstance(tasks_at_once, int) else 1,
        who="this twotier worker",
    )


def check_model_servers(settings: Settings, *, tiers: list[str], tasks_at_once: int) -> None:
    """Check each named tier's server (``small``, ``large``) that is reached over HTTP, adopt
    its model id when none is set, and raise ModelServerUnfit naming what to change."""
    problems = []
    for name in tiers:
        tier: TierSettings = settings.tier(name)
        if tier.backend == "local":
            if missing := missing_local_packages():
                problems.append(
                    f"{tier_variable(name, 'backend')} is local, which needs the `local` extra "
                    f"({', '.join(missing)} not installed): {INSTALL_LOCAL}; or point the tier "
                    "at a model server (tgi, openai)"
                )
            continue
        info = read_server_info(tier, name=name, settings=settings)
        problems += limit_problems(
            settings, tier, name=name, info=info, tasks_at_once=tasks_at_once
        )
        problems += adopt_model_id(tier, name=name, info=info)
    if problems:
        raise ModelServerUnfit("\n".join(problems))


def name_models_if_reachable(settings: Settings) -> None:
    """For the API process: name the tiers whose model is unset after their servers, asking
    each once (the workers check the limits). A server down now leaves the name unset, and the
    tier's price settings apply until a restart; set TWOTIER_{SMALL,LARGE}__MODEL to avoid it."""
    for name in settings.tier_names:
        tier: TierSettings = settings.tier(name)
        if tier.backend == "local" or tier.model:
            continue
        try:
            info = read_server_info(tier, name=name, settings=settings, wait_s=0)
            problems = adopt_model_id(tier, name=name, info=info)
        except ModelServerUnfit as exc:
            problems = [str(exc)]
        for problem in problems:
            log.warning("model_server.model_not_named", tier=name, problem=problem)


def read_server_info(
    tier: TierSettings, *, name: str, settings: Settings, wait_s: float | None = None
) -> ServerInfo:
    wanted_top_n = max(settings.top_n_tokens, settings.max_top_n_tokens)
    headers = {}
    if tier.api_key is not None:
        headers["Authorization"] = f"Bearer {tier.api_key.get_secret_value()}"
    url = str(tier.url).rstrip("/")
    if tier.backend == "openai":
        url = url if url.endswith("/v1") else f"{url}/v1"
    timeout = httpx.Timeout(min(tier.timeout_s, 10.0))
    wait = settings.model_server_start_wait_s if wait_s is None else wait_s
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        asking = Retrying(
            retry=retry_if_exception_type(_NotAnswering),
            stop=stop_after_delay(wait),
            wait=wait_exponential_jitter(multiplier=0.5, max=10.0),
            reraise=True,
        )
        try:
            if tier.backend == "openai":
                return asking(_openai_info, client)
            return asking(_tgi_info, client, wanted_top_n)
        except _NotAnswering as exc:
            raise ModelServerUnfit(
                f"the {name} model server at {url} did not answer for "
                f"{wait:g} s (TWOTIER_MODEL_SERVER_START_WAIT_S): "
                f"{exc}. Start it, or point {tier_variable(name, 'url')} at it."
            ) from exc


def limit_problems(
    settings: Settings, tier: TierSettings, *, name: str, info: ServerInfo, tasks_at_once: int
) -> list[str]:
    """What the settings ask of the server beyond its limits, each naming the setting."""
    server = f"the {name} model server at {str(tier.url).rstrip('/')}"
    problems = []
    top_n_limit = info.max_top_n_tokens
    for setting, value in (
        ("TWOTIER_TOP_N_TOKENS", settings.top_n_tokens),
        ("TWOTIER_MAX_TOP_N_TOKENS", settings.max_top_n_tokens),
    ):
        if top_n_limit is not None and value > top_n_limit:
            problems.append(
                f"{setting}={value} is above the limit of {server}: {top_n_limit} "
                f"candidates per token (TGI: --max-top-n-tokens; OpenAI: top_logprobs <= 20); "
                f"lower {setting} or raise the server's limit."
            )
    concurrent = info.max_concurrent_requests
    calls = min(tasks_at_once, tier.calls_in_flight)
    if concurrent is not None and calls > concurrent:
        problems.append(
            f"this worker keeps up to {calls} calls in flight to {server}, more than it "
            f"accepts (max_concurrent_requests={concurrent}); lower "
            f"{tier_variable(name, 'max_concurrent_calls')} (or --concurrency) or raise TGI's "
            "--max-concurrent-requests."
        )
    total = info.max_total_tokens
    if total is not None and settings.default_max_new_tokens >= total:
        problems.append(
            f"TWOTIER_DEFAULT_MAX_NEW_TOKENS={settings.default_max_new_tokens} leaves no room "
            f"for a prompt within the max_total_tokens={total} of {server}."
        )
    elif total is not None and settings.max_new_tokens_limit >= total:
        log.warning(
            "model_server.max_new_tokens_above_server_limit",
            tier=name,
            setting="TWOTIER_MAX_NEW_TOKENS_LIMIT",
            value=settings.max_new_tokens_limit,
            max_total_tokens=total,
            hint="queries asking for that many new tokens fail with model_error",
        )
    return problems


def adopt_model_id(tier: TierSettings, *, name: str, info: ServerInfo) -> list[str]:
    """Name the tier after the server's model when the settings name none (this process and
    the processes it starts: the pool, uvicorn's workers)."""
    variable = tier_variable(name, "model")
    if tier.model:
        if tier.backend == "openai" and info.model_ids and tier.model not in info.model_ids:
            served = ", ".join(info.model_ids[:10])
            return [f"{variable}={tier.model} is not served by {tier.url} (it serves: {served})."]
        return []
    if len(info.model_ids) != 1:
        served = ", ".join(info.model_ids[:10]) or "none listed"
        return [f"{variable} is not set and {tier.url} serves {served}: set {variable}."]
    tier.model = info.model_ids[0]
    if name in ("small", "large"):  # a middle tier's is one entry of a JSON list: set `model`
        os.environ[variable] = tier.model
    log.info("model_server.model_adopted", tier=name, model=tier.model)
    return []


def _tgi_info(client: httpx.Client, wanted_top_n: int) -> ServerInfo:
    info = _get(client, "info")
    model_id = str(info.get("model_id") or "")
    top_n_limit = info.get("max_top_n_tokens")
    if top_n_limit is None:
        top_n_limit = _probe_top_n_limit(client, wanted_top_n)
    return ServerInfo(
        model_ids=(model_id,) if model_id else (),
        max_top_n_tokens=None if top_n_limit is None else int(top_n_limit),
        max_concurrent_requests=_optional_int(info.get("max_concurrent_requests")),
        max_total_tokens=_optional_int(info.get("max_total_tokens")),
    )


def _probe_top_n_limit(client: httpx.Client, wanted: int) -> int | None:
    """The server's top-n limit if it is below ``wanted``; ``wanted`` if it allows that many;
    None if the answer says neither."""
    body = {"inputs": "", "parameters": {"top_n_tokens": wanted, "max_new_tokens": 1}}
    response = _send(client, "POST", "generate", json=body)
    limit = _TOP_N_LIMIT.search(response.text)
    if limit is not None:
        return int(limit.group(1))
    if response.status_code == 200 or "cannot be empty" in response.text:
        return wanted
    return None


def _openai_info(client: httpx.Client) -> ServerInfo:
    try:
        models = _get(client, "models")
    except ModelServerUnfit as exc:
        if "HTTP 404" not in str(exc):
            raise
        models = {}  # a server without the listing: nothing to check the model against
    ids = tuple(str(m["id"]) for m in models.get("data", []) if isinstance(m, dict) and "id" in m)
    return ServerInfo(model_ids=ids, max_top_n_tokens=OPENAI_MAX_TOP_LOGPROBS)


def _get(client: httpx.Client, path: str) -> dict[str, Any]:
    response = _send(client, "GET", path)
    if response.status_code != 200:
        raise ModelServerUnfit(
            f"GET {client.base_url}{path} answered HTTP {response.status_code}: "
            f"{response.text[:300]}"
        )
    payload = response.json()
    return payload if isinstance(payload, dict) else {}


def _send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise _NotAnswering(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise _NotAnswering(f"{method} {path}: HTTP {response.status_code}")
    return response


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) else None
