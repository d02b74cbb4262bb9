"""Request and response bodies of the public API."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from services.accounting import money_text
from services.api.fields import (
    METADATA_MAX_DEPTH,
    ChoiceName,
    StoredJson,
    StoredText,
    json_integer,
)
from services.llm.labels import check_distinct_labels
from services.models import Query, QueryStatus
from services.storable import TaskLabel, WebhookUrl


class RequestBody(BaseModel):
    """A request body: unknown fields are refused, and so is a value of another JSON type than
    the schema's (strict: no `true` or `"12"` for an integer, no `0` for a boolean). Enum values
    opt out with ``Strict(False)``, and amounts validate themselves (``stored_amount``): their
    documented JSON forms include strings, which strict validation of parsed JSON refuses."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_request`.")
    message: str = Field(description="What went wrong and what to do about it.")
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class QueryCreate(RequestBody):
    prompt: StoredText = Field(min_length=1, description="The text the model answers.")
    max_new_tokens: json_integer(ge=1) | None = Field(  # type: ignore[valid-type]
        default=None, description="Most tokens to generate; the server default if absent."
    )
    task: TaskLabel | None = Field(
        default=None,
        description="Task label: queries with the same label share one escalation threshold.",
    )
    metadata: StoredJson | None = Field(
        default=None,
        description=f"Free-form JSON object stored with the query (strings without NUL, "
        f"finite numbers, at most {METADATA_MAX_DEPTH} levels deep).",
    )
    choices: list[ChoiceName] | None = Field(
        default=None,
        min_length=2,
        max_length=50,
        json_schema_extra={"uniqueItems": True},
        description="Class labels: the answer is always one of them (the prompt should ask for "
        "one). The margin is taken over their first tokens or, when no label starts the answer, "
        "over the labels scored as the prompt's continuation. They must differ in more than case "
        "and spaces.",
    )
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description="Send this query's events here instead of to the tenant's endpoints, "
        "signed with the tenant's callback secret (`GET /v1/webhooks/callback-secret`).",
    )

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, choices: list[str] | None) -> list[str] | None:
        if choices is not None:
            check_distinct_labels(choices)
        return choices


Money = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]


class QueryCost(BaseModel):
    total: Money = Field(description="Every tier's calls, the middle tiers' included.")
    small: Money
    large: Money


class PathStep(BaseModel):
    """One tier the query reached, in cascade order."""

    tier: str = Field(description="`small`, a middle tier's name (TWOTIER_MIDDLE_TIERS), `large`.")
    model: str | None
    margin: float | None = Field(description="First-token margin of this tier's answer.")
    threshold: float | None = Field(description="The threshold of this tier's scope.")
    threshold_version: int | None
    threshold_scope: int | None = Field(description="The scope this tier's margin joined.")
    threshold_window: int | None = Field(
        default=None, description="As `threshold_window` reads, for this tier's threshold."
    )
    target_escalation_rate: float | None
    decision: str | None = Field(
        description="This tier's decision, as `decision` reads; `last_tier` for the last tier's "
        "answer; `unavailable` for a tier whose model server kept failing (the query went on)."
    )
    cost: Money = Field(description="What this tier's call cost.")


class QueryError(BaseModel):
    code: str
    message: str


class QueryTimestamps(BaseModel):
    created_at: datetime
    small_started_at: datetime | None
    small_finished_at: datetime | None
    escalated_at: datetime | None
    large_started_at: datetime | None
    finished_at: datetime | None


class QueryView(BaseModel):
    id: uuid.UUID
    status: QueryStatus
    task: str | None
    max_new_tokens: int
    metadata: dict[str, Any] | None
    choices: list[str] | None
    webhook_url: str | None
    answer: str | None
    tier: str | None = Field(
        description="The tier that answered: `small`, `large` or a middle tier's name."
    )
    escalated: bool | None
    margin: float | None = Field(
        description="First-token margin of the small model (`path` has every tier's)."
    )
    threshold: float | None = Field(description="The threshold the margin was compared with.")
    threshold_version: int | None = Field(
        description="Size of the margin history the threshold was computed from."
    )
    threshold_rank_error: float | None = Field(
        description="Bound on how far the threshold's rank in the history may be from the "
        "target rate (a share of the history; 0: the exact quantile)."
    )
    threshold_window: int | None = Field(
        default=None,
        description="The threshold was read from the scope's last this-many margins "
        "(TWOTIER_THRESHOLD_HISTORY=window); null: from all of them.",
    )
    threshold_scope: int | None = Field(
        default=None,
        description="The threshold scope the margin joined: `GET /v1/thresholds/{scope}/history`.",
    )
    target_escalation_rate: float | None
    decision: str | None = Field(
        description="`warmup`, `below_threshold` (escalated), `at_or_above_threshold`, "
        "`budget_guard` (below the threshold, but the budget could not pay the large model), "
        "`small_unavailable` (the small model server kept failing: answered by the large "
        "tier), `large_unavailable` (the large one kept failing: the small tier's answer) or "
        "`large_alone` (sent to the large model without a small call: the tenant's budget per "
        "query had enough unspent to pay for it, or its target rate is 1)."
    )
    cost: QueryCost
    path: list[PathStep] = Field(
        default=[],
        description="Every tier that answered (or was tried), in order, with its model, its "
        "decision and what the decision was made from, and its cost.",
    )
    error: QueryError | None
    timestamps: QueryTimestamps

    @classmethod
    def of(cls, query: Query, costs: dict[str, Decimal]) -> QueryView:
        small, large = costs.get("small", Decimal(0)), costs.get("large", Decimal(0))
        total = sum(costs.values(), Decimal(0))
        return cls(
            id=query.id,
            status=QueryStatus(query.status),
            task=query.task_label,
            max_new_tokens=query.max_new_tokens,
            metadata=query.request_metadata,
            choices=query.choices,
            webhook_url=query.webhook_url,
            answer=query.answer,
            tier=query.answered_by,
            escalated=query.escalated,
            margin=query.margin,
            threshold=query.threshold,
            threshold_version=query.threshold_version,
            threshold_rank_error=query.threshold_rank_error,
            threshold_window=query.threshold_window,
            threshold_scope=query.scope_id,
            target_escalation_rate=query.target_escalation_rate,
            decision=query.decision,
            cost=QueryCost(total=total, small=small, large=large),
            path=path_of(query, costs),
            error=QueryError(code=query.error_code, message=query.error_message or "")
            if query.error_code
            else None,
            timestamps=QueryTimestamps(
                created_at=query.created_at,
                small_started_at=query.small_started_at,
                small_finished_at=query.small_finished_at,
                escalated_at=query.escalated_at,
                large_started_at=query.large_started_at,
                finished_at=query.finished_at,
            ),
        )


class QueryList(BaseModel):
    data: list[QueryView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


def path_of(query: Query, costs: dict[str, Decimal]) -> list[PathStep]:
    """The query's path with each tier's cost; a tier charged but not on it (cancelled while
    its call ran) comes last, without a decision."""
    steps = [
        PathStep(**entry, cost=costs.get(entry["tier"], Decimal(0))) for entry in query.path or ()
    ]
    on_path = {step.tier for step in steps}
    for tier, cost in costs.items():
        if tier not in on_path:
            steps.append(
                PathStep(
                    tier=tier,
                    model=None,
                    margin=None,
                    threshold=None,
                    threshold_version=None,
                    threshold_scope=None,
                    target_escalation_rate=None,
                    decision=None,
                    cost=cost,
                )
            )
    return steps
