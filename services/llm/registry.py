"""One backend per tier and process, built lazily from the settings.

A worker's threads all ask for the tier's backend and circuit breaker; a lock makes sure the
first of them builds the one the others share (one HTTP connection pool, one failure count).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.console import Console

from services.lazy import built_once
from services.llm.base import Backend
from services.llm.circuit import CircuitBreaker
from services.llm.http_backend import HttpBackend
from services.llm.local_extra import require_local_extra
from services.models import Tier
from services.settings import TierSettings, get_settings

if TYPE_CHECKING:
    from services.llm.local_model import LocalModel

_backends: dict[Tier, Backend] = {}
_breakers: dict[Tier, CircuitBreaker] = {}
_lock = threading.Lock()


def backend_for(tier: Tier) -> Backend:
    """The tier's backend, built on first use in this process."""
    backend = _backends.get(tier)
    if backend is not None:
        return backend
    with _lock:
        if tier not in _backends:
            _backends[tier] = _build_backend(tier)
        return _backends[tier]


def breaker_for(tier: Tier) -> CircuitBreaker:
    """The tier's circuit breaker in this process."""
    breaker = _breakers.get(tier)
    if breaker is not None:
        return breaker
    with _lock:
        if tier not in _breakers:
            settings = get_settings()
            _breakers[tier] = CircuitBreaker(
                name=tier.value,
                failures_to_open=settings.circuit_breaker_failures,
                open_for_s=settings.circuit_breaker_open_s,
            )
        return _breakers[tier]


def _build_backend(tier: Tier) -> Backend:
    settings = get_settings()
    tier_settings = tier_settings_of(tier)
    if tier_settings.backend == "local":
        require_local_extra(f"the {tier.value} tier (TWOTIER_{tier.name}__BACKEND=local)")
        from services.llm.local_model import LocalBackend  # noqa: PLC0415 - torch loads here only

        return LocalBackend(
            local_model(tier_settings.local_model),
            model=tier_settings.model,
            top_n_tokens=settings.top_n_tokens,
        )
    assert tier_settings.url is not None  # the settings validator requires it
    if tier_settings.backend == "openai":
        from services.llm.openai_compat import OpenAIBackend  # noqa: PLC0415

        api_key = tier_settings.api_key.get_secret_value() if tier_settings.api_key else None
        return OpenAIBackend(
            url=str(tier_settings.url),
            model=tier_settings.model,
            api=tier_settings.openai_api,
            api_key=api_key,
            timeout_s=tier_settings.timeout_s,
            top_n_tokens=settings.top_n_tokens,
            attempts=settings.model_call_attempts,
            overload_patience_s=settings.overload_patience_s,
            max_connections=tier_settings.calls_in_flight,
        )
    from services.llm.tgi import TGIBackend  # noqa: PLC0415

    return TGIBackend(
        url=str(tier_settings.url),
        model=tier_settings.model,
        timeout_s=tier_settings.timeout_s,
        top_n_tokens=settings.top_n_tokens,
        attempts=settings.model_call_attempts,
        overload_patience_s=settings.overload_patience_s,
        max_connections=tier_settings.calls_in_flight,
    )


@built_once
def local_model(spec: str | None) -> LocalModel:
    """The local model named by ``spec`` (None: the bundled one), loaded once per process."""
    from services.llm.local_model import LocalModel  # noqa: PLC0415
    from services.llm.model_files import prepare_local_model  # noqa: PLC0415

    console = Console(stderr=True)
    source = prepare_local_model(spec, cache_dir=get_settings().cache_dir, console=console)
    with console.status(f"Loading {source} ..."):
        return LocalModel(source)


def close_backends() -> None:
    """Close the HTTP clients of this process's backends (the next use builds new ones)."""
    with _lock:
        for backend in _backends.values():
            if isinstance(backend, HttpBackend):
                backend.close()
        _backends.clear()
        _breakers.clear()


def tier_settings_of(tier: Tier) -> TierSettings:
    settings = get_settings()
    return settings.small if tier is Tier.SMALL else settings.large


def model_pair() -> str:
    settings = get_settings()
    return f"{settings.small.model}->{settings.large.model}"
