"""Typed settings, read from the environment (prefix ``TWOTIER_``) once per process."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict


class TierSettings(BaseModel):
    """One model tier: where its server is, what it is called, what it costs."""

    url: HttpUrl
    model: str = Field(min_length=1, description="Model name used in scopes and the cost ledger.")
    price_input_per_mtok: float = Field(ge=0, description="Price of 1M input tokens.")
    price_output_per_mtok: float = Field(ge=0, description="Price of 1M output tokens.")
    timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of one model call.")


class SmallTierSettings(TierSettings):
    url: HttpUrl = HttpUrl("http://127.0.0.1:8081")
    model: str = Field(default="small", min_length=1)
    price_input_per_mtok: float = Field(default=0.1, ge=0)
    price_output_per_mtok: float = Field(default=0.1, ge=0)


class LargeTierSettings(TierSettings):
    url: HttpUrl = HttpUrl("http://127.0.0.1:8082")
    model: str = Field(default="large", min_length=1)
    price_input_per_mtok: float = Field(default=3.0, ge=0)
    price_output_per_mtok: float = Field(default=15.0, ge=0)


class Settings(BaseSettings):
    """Every setting of the process. Nested tiers use ``__``: ``TWOTIER_SMALL__URL``."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTIER_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/twotier"
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_visibility_timeout_s: int = Field(
        default=3600,
        gt=0,
        description="An unacknowledged task is redelivered after this long; "
        "must exceed the longest model call.",
    )
    broker_restore_interval_s: int = Field(
        default=10,
        gt=0,
        description="How often a worker looks for unacknowledged tasks past the visibility "
        "timeout (tasks of workers that died).",
    )

    small: SmallTierSettings = SmallTierSettings()
    large: LargeTierSettings = LargeTierSettings()

    top_n_tokens: int = Field(default=5, ge=2, description="First-token candidates asked of TGI.")
    margin_kind: Literal["probability", "logit"] = "probability"
    margin_skip_surface_variants: bool = Field(
        default=False,
        description="Ignore runner-up tokens that are surface variants of the top-1 (QA tasks).",
    )
    warmup_queries: int = Field(default=20, ge=0, description="W: no escalation while |H| <= W.")
    default_target_escalation_rate: float = Field(default=0.3, ge=0, le=1)

    default_max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_limit: int = Field(default=4096, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)

    model_call_attempts: int = Field(
        default=3, ge=1, description="Attempts of one model call on transient errors."
    )
    task_retries: int = Field(
        default=5, ge=0, description="Task-level retries once a model call keeps failing."
    )
    stuck_after_s: int = Field(
        default=900, gt=0, description="A non-terminal query untouched this long is re-enqueued."
    )
    recovery_interval_s: float = Field(default=60.0, gt=0)
    max_delivery_attempts: int = Field(
        default=10, ge=1, description="A query delivered this often without finishing fails."
    )
    task_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="While a worker holds a query's lease, a duplicate delivery waits "
        "instead of calling the model a second time.",
    )

    log_level: str = "INFO"
    log_json: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use (never at import time)."""
    return Settings()
