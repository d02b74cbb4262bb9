"""One backend per tier and process, built lazily from the settings."""

from __future__ import annotations

from functools import lru_cache

from services.llm.base import Backend
from services.llm.tgi import TGIBackend
from services.models import Tier
from services.settings import get_settings


@lru_cache(maxsize=2)
def backend_for(tier: Tier) -> Backend:
    settings = get_settings()
    tier_settings = settings.small if tier is Tier.SMALL else settings.large
    return TGIBackend(
        url=str(tier_settings.url),
        model=tier_settings.model,
        timeout_s=tier_settings.timeout_s,
        top_n_tokens=settings.top_n_tokens,
        attempts=settings.model_call_attempts,
    )


def model_pair() -> str:
    settings = get_settings()
    return f"{settings.small.model}->{settings.large.model}"
