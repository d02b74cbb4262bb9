"""A tier's backend, built from the settings: local (torch, in this process), TGI or
OpenAI-compatible over HTTP. services.runtime keeps the one each process builds per tier."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from services.lazy import built_once
from services.llm.base import Backend
from services.llm.local_extra import require_local_extra
from services.settings import Settings, tier_variable

if TYPE_CHECKING:
    from pathlib import Path

    from services.llm.local_model import LocalModel


def build_backend(tier: str, settings: Settings, *, raw_prompts: bool = False) -> Backend:
    """The tier's backend. With ``raw_prompts`` it sends each prompt as the model's whole
    input, with no chat template: the local model encodes it as plain text and an
    OpenAI-compatible server gets it on ``/v1/completions``; TGI's ``/generate`` takes raw
    text already (``twotier model-server`` applies its chat template unless started with
    ``--raw-prompts``)."""
    tier_settings = settings.tier(tier)
    if tier_settings.backend == "local":
        require_local_extra(f"the {tier} tier ({tier_variable(tier, 'backend')}=local)")
        from services.llm.local_model import LocalBackend  # noqa: PLC0415 - torch loads here only

        return LocalBackend(
            local_model(
                tier_settings.local_model,
                settings.cache_dir,
                max_batch_size=tier_settings.local_max_batch_size,
            ),
            model=tier_settings.model,
            top_n_tokens=settings.top_n_tokens,
            raw_prompts=raw_prompts,
        )
    assert tier_settings.url is not None  # the settings validator requires it
    if tier_settings.backend == "openai":
        from services.llm.openai_compat import OpenAIBackend  # noqa: PLC0415

        api_key = tier_settings.api_key.get_secret_value() if tier_settings.api_key else None
        return OpenAIBackend(
            url=str(tier_settings.url),
            model=tier_settings.model,
            api="completions" if raw_prompts else tier_settings.openai_api,
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
def local_model(spec: str | None, cache_dir: Path, *, max_batch_size: int) -> LocalModel:
    """The local model named by ``spec`` (None: the bundled one), loaded once per process
    (both tiers share it when they name the same model)."""
    from services.llm.local_model import LocalModel  # noqa: PLC0415
    from services.llm.model_files import prepare_local_model  # noqa: PLC0415

    console = Console(stderr=True)
    source = prepare_local_model(spec, cache_dir=cache_dir, console=console)
    with console.status(f"Loading {source} ..."):
        return LocalModel(source, max_batch_size=max_batch_size)
