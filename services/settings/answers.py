"""How a query is answered: the two tiers, the first-token margin, the escalation threshold,
and the limits of a request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from services.settings.tiers import (
    RESERVED_TIER_NAMES,
    LargeTierSettings,
    MiddleTierSettings,
    SmallTierSettings,
)


class AnswerSettings(BaseModel):
    """The settings of answering and escalating (part of ``Settings``)."""

    small: SmallTierSettings = SmallTierSettings()
    large: LargeTierSettings = LargeTierSettings()
    middle_tiers: list[MiddleTierSettings] = Field(
        default=[],
        description="Tiers between the small and the large one, in cascade order (a JSON list "
        "of tier settings, each with a `name`); empty: the two-tier cascade.",
    )

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
    threshold_history: Literal["all", "window"] = Field(
        default="all",
        description="The margins the threshold is the p-quantile of: every margin of the scope "
        "(the paper) or the last TWOTIER_THRESHOLD_WINDOW (follows a shift in traffic).",
    )
    threshold_window: int = Field(
        default=1000,
        ge=10,
        le=20_000,
        description="N: the recent decisions of a scope kept to measure drift (and to read "
        "the threshold from, under TWOTIER_THRESHOLD_HISTORY=window). 12 bytes each, in the "
        "scope's row.",
    )
    threshold_drift_rate_tolerance: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Drift: the realised escalation rate of the last N decisions is further "
        "than this from their target.",
    )
    threshold_drift_psi: float = Field(
        default=0.25,
        gt=0,
        description="Drift: the population stability index of the last N margins against the "
        "scope's long run is above this (0.1: some shift, 0.25: a major one).",
    )
    default_target_escalation_rate: float = Field(default=0.3, ge=0, le=1)
    budget_pacing_queries: int | None = Field(
        default=None,
        ge=1,
        description="N: for a tenant with a budget per query, escalate at p(B) plus what its "
        "answered queries left unspent spread over the next N queries, and send a query to the "
        "large model alone only when B pays it for every query (services/policy/pacing.py). "
        "Unset: p(B), and L alone whenever the unspent budget pays the large call.",
    )

    # Room for a one- or two-sentence answer ("The capital of France is Paris." is 8 tokens with
    # its end): the margin needs only the first token, and on the local model each token is a
    # decoding step that every query of the batch waits for.
    default_max_new_tokens: int = Field(
        default=32, ge=1, description="Tokens generated when a query names no max_new_tokens."
    )
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

    @field_validator("middle_tiers")
    @classmethod
    def _distinct_names(cls, tiers: list[MiddleTierSettings]) -> list[MiddleTierSettings]:
        seen: set[str] = set()
        for tier in tiers:
            if tier.name in RESERVED_TIER_NAMES:
                raise ValueError(
                    f"TWOTIER_MIDDLE_TIERS: a middle tier cannot be named {tier.name!r}: a "
                    "tier's name is its Celery queue, and small, large, webhooks and "
                    "maintenance are taken"
                )
            if tier.name in seen:
                raise ValueError(f"TWOTIER_MIDDLE_TIERS names the tier {tier.name!r} twice")
            seen.add(tier.name)
        return tiers
