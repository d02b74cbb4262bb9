"""Typed settings, read from the environment (prefix ``TWOTIER_``) once per process.

``Settings`` is one model; its fields come in groups, each in a module of this package
(deployment, answers, resilience, batches, tiers), and the webhook, secret and logging settings, the
checks across groups and ``get_settings`` live here."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.lazy import built_once
from services.settings.answers import AnswerSettings
from services.settings.batches import BatchSettings
from services.settings.deployment import DeploymentSettings
from services.settings.resilience import ResilienceSettings
from services.settings.tiers import (
    BUNDLED_MODEL_NAME,
    DEFAULT_SERVER_CONCURRENCY,
    BackendKind,
    LargeTierSettings,
    MiddleTierSettings,
    SmallTierSettings,
    TierSettings,
)

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DEFAULT_SERVER_CONCURRENCY",
    "BackendKind",
    "LargeTierSettings",
    "MiddleTierSettings",
    "Settings",
    "SmallTierSettings",
    "TierSettings",
    "get_settings",
    "tier_variable",
]


# The groups of fields are bases, listed last group first: pydantic orders the fields from the
# last base to the first, so the fields read deployment, answers, resilience, batches, then
# these.
class Settings(BatchSettings, ResilienceSettings, AnswerSettings, DeploymentSettings, BaseSettings):
    """Every setting of the process. Nested tiers use ``__``: ``TWOTIER_SMALL__URL``."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTIER_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a refused setting's message must not print the secrets
    )

    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="How long one webhook attempt may take, all in."
    )
    webhook_retry_schedule_s: list[float] = Field(
        default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000],
        min_length=1,
        description="Delay before each webhook attempt (the first is the first attempt); "
        "each delay is jittered by up to 20%. After the last, the delivery is a dead letter.",
    )
    webhook_allowed_networks: list[IPv4Network | IPv6Network] = Field(
        default=[],
        description="Private, loopback or link-local networks webhook URLs may resolve to "
        '(JSON list, e.g. ["10.0.0.0/8"]); everything else of the kind is refused.',
    )
    webhook_secret_grace_s: float = Field(
        default=86400.0,
        ge=0,
        description="After a secret rotation, how long deliveries are also signed with the "
        "previous secret.",
    )
    webhook_relay_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the relay looks for webhook deliveries that are due and not "
        "queued (retries far in the future, messages lost by the broker).",
    )

    secrets_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default=[],
        description="Fernet keys that encrypt webhook secrets at rest, comma-separated: the "
        "first encrypts, all decrypt (rotate by putting a new key first). Required with a "
        "broker or a non-SQLite database; unset, the embedded default keeps its own in `home`.",
    )

    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin API (/v1/admin); unset turns the admin API off.",
    )

    log_level: str = "INFO"
    log_json: bool | None = Field(
        default=None, description="JSON log lines; unset means JSON unless stderr is a terminal."
    )

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # Compose passes `TWOTIER_ADMIN_TOKEN: ${TWOTIER_ADMIN_TOKEN:-}`: empty when not given.
        return None if value == "" else value

    @field_validator("secrets_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [key.strip() for key in value.split(",") if key.strip()]
        if isinstance(value, list):
            for key in value:
                try:
                    Fernet(key.get_secret_value() if isinstance(key, SecretStr) else key)
                except (TypeError, ValueError):
                    raise ValueError(
                        "TWOTIER_SECRETS_KEYS holds a key that is not a Fernet key (32 bytes in "
                        "URL-safe base64; make one with `openssl rand -base64 32 | tr '+/' '-_'`)"
                    ) from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> Settings:
        for name, tier in self.tiers:
            if tier.backend == "local" and not tier.model:
                tier.model = BUNDLED_MODEL_NAME if tier.local_model is None else tier.local_model
            if tier.backend != "local" and tier.url is None:
                variable = tier_variable(name, "url")
                raise ValueError(f"{variable} must be set for the {tier.backend} backend")
        if self.admin_token is not None:
            token = self.admin_token.get_secret_value()
            if len(token) < 16 or token.lower() in {"changeme", "change-me", "admin", "secret"}:
                raise ValueError("TWOTIER_ADMIN_TOKEN must be a random secret of 16+ characters")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'twotier.db'}")
        if not self.secrets_keys and (
            self.broker_url is not None or not self.database_url.startswith("sqlite")
        ):
            raise ValueError(
                "TWOTIER_SECRETS_KEYS must be set with a broker or a shared database: every "
                "process needs the same key to read webhook secrets (make one with "
                "`openssl rand -base64 32 | tr '+/' '-_'`)"
            )
        return self

    @property
    def model_pair(self) -> str:
        """The first two tiers' models, as a threshold scope and the metrics name them."""
        return self.model_pair_at(0)

    @property
    def tiers(self) -> list[tuple[str, TierSettings]]:
        """Every tier with its name, in cascade order: small, the middle tiers, large."""
        middle: list[tuple[str, TierSettings]] = [(tier.name, tier) for tier in self.middle_tiers]
        return [("small", self.small), *middle, ("large", self.large)]

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tiers)

    def tier(self, name: str) -> TierSettings:
        """The settings of the tier called ``name`` (KeyError for no such tier)."""
        return dict(self.tiers)[name]

    def stage_of(self, name: str) -> int:
        """The tier's place in the cascade: 0 for small, the number of tiers less one for large."""
        return self.tier_names.index(name)

    def model_pair_at(self, stage: int) -> str:
        """The models of the tier at ``stage`` and the next: the threshold scope of the
        decision that tier's answers take. A middle tier's is prefixed with its name, so that
        two stages never share a history, even where they name the same models (a demo that
        runs one local model on every tier)."""
        (name, tier), (_, following) = self.tiers[stage], self.tiers[stage + 1]
        pair = f"{tier.model}->{following.model}"
        return pair if stage == 0 else f"{name}: {pair}"

    def stage_target_rate(self, stage: int) -> float | None:
        """The escalation rate the tier at ``stage`` sets for itself (a middle tier's
        ``target_escalation_rate``); None: the tenant's."""
        if 0 < stage <= len(self.middle_tiers):
            return self.middle_tiers[stage - 1].target_escalation_rate
        return None

    @property
    def demo_key_file(self) -> Path:
        """The local demo tenant's API key, written by ``twotier serve``."""
        return self.home / "demo-api-key"

    @property
    def request_body_limit(self) -> int:
        """``max_request_bytes``, or room for the longest prompt in UTF-8 and the rest."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return 4 * self.max_prompt_chars + 256 * 1024

    @property
    def overload_patience_s(self) -> float:
        """The patience with a full server, capped so that the query's lease outlives it."""
        return min(self.model_overload_patience_s, self.task_lease_s / 2)

    @property
    def embedded(self) -> bool:
        """No broker: one process runs the API and both tiers (``twotier serve``)."""
        return self.broker_url is None


def tier_variable(tier: str, field: str) -> str:
    """The environment variable of a tier's setting, as a message names it."""
    if tier in ("small", "large"):
        return f"TWOTIER_{tier.upper()}__{field.upper()}"
    return f"TWOTIER_MIDDLE_TIERS ({tier}: {field})"


@built_once
def get_settings() -> Settings:
    """The process's settings, read on first use (never at import time)."""
    return Settings()
