"""What happens when a model call or a worker fails: retries, patience with a full server,
circuit breakers, fallbacks, the recovery sweep and the leases it reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ResilienceSettings(BaseModel):
    """The settings of failures and recovery (part of ``Settings``)."""

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
        description="When the small tier (or a middle one) keeps failing: answer on the next "
        "tier (if the budget allows), or fail the query with `model_unavailable`.",
    )
    large_unavailable_fallback: Literal["small_answer", "fail"] = Field(
        default="small_answer",
        description="When the large tier keeps failing: answer with the answer of the tier "
        "below it (`decision: large_unavailable`), or fail the query with `model_unavailable`.",
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
