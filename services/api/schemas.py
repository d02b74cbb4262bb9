"""Request and response bodies of the public API."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from services.accounting import money_text
from services.models import Query, QueryStatus


def json_number(value: Any) -> Any:
    """Refuse what is not a JSON number before pydantic's lax integer parsing sees it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


# A JSON integer as JSON Schema reads it: 12 or 12.0, never 12.5, "12" or true (strict int
# refuses 12.0, which the schema's "integer" allows).
# Constraints go inside, with Field, so that the schema states them as minimum and maximum.
JsonInteger = Annotated[int, Strict(False), BeforeValidator(json_number)]


def json_integer(*, ge: int, le: int | None = None) -> Any:
    return Annotated[int, Strict(False), Field(ge=ge, le=le), BeforeValidator(json_number)]


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


def storable_text(text: str) -> str:
    """Refuse what PostgreSQL cannot store: its text type holds no NUL character, and UTF-8
    no unpaired surrogate (JSON allows both, as ``\\u0000`` and ``\\ud800``)."""
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (\\u0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise ValueError("must be valid Unicode: it holds an unpaired surrogate") from exc
    return text


METADATA_MAX_DEPTH = 32


def storable_json(value: Any) -> Any:
    """Every string in a JSON value storable (see ``storable_text``), every number finite,
    and nesting at most ``METADATA_MAX_DEPTH`` deep. Walked without recursion, so a deeply
    nested value is refused rather than overflowing the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            storable_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict | list):
            if depth > METADATA_MAX_DEPTH:
                raise ValueError(f"must nest at most {METADATA_MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return value


def utc_instant(value: datetime) -> datetime:
    """The instant in UTC (an instant without an offset is read as UTC); one that does not
    fit a datetime in UTC, such as 9999-12-31T23:59-23:59, is refused rather than overflowing
    where the database driver converts it."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the instant is out of range once converted to UTC") from exc


ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_8601_text(value: Any) -> Any:
    """Only ISO 8601 text is an instant here: pydantic alone also reads a number, or text such
    as "0.5", as seconds since 1970."""
    if not isinstance(value, datetime) and not (
        isinstance(value, str) and ISO_DATE_START.match(value)
    ):
        raise ValueError("must be an ISO 8601 instant, e.g. 2025-01-31T00:00:00Z")
    return value


UtcInstant = Annotated[datetime, BeforeValidator(iso_8601_text), AfterValidator(utc_instant)]
# What the schema says of storable text (``storable_text`` also refuses unpaired surrogates,
# which JSON Schema cannot name).
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"
StoredText = Annotated[
    str, AfterValidator(storable_text), Field(json_schema_extra={"pattern": NO_NUL})
]
# Storable text with more than spaces in it (names, labels).
NamingText = Annotated[
    str, AfterValidator(storable_text), Field(json_schema_extra={"pattern": NOT_BLANK})
]
StoredJson = Annotated[dict[str, Any], AfterValidator(storable_json)]
# What the NUMERIC(20, 10) and INTEGER columns hold; beyond that a value is refused with 422
# instead of failing in the database.
AMOUNT_PLACES = Decimal("1e-10")
# JSON numbers stop at a whole number that a double holds exactly; strings go up to
# 9999999999.9999999999.
LARGEST_NUMBER = 9_999_999_999
AMOUNT_TEXT = re.compile(r"\d{1,10}(\.\d{1,10})?")


def stored_amount(value: Any) -> Decimal:
    """An amount as the schema states it: a decimal string of at most 10 digits before and 10
    after the point, or a JSON number from 0 to LARGEST_NUMBER, rounded to 10 decimal places
    (a binary number rarely has an exact decimal form)."""
    if isinstance(value, str):
        if not AMOUNT_TEXT.fullmatch(value):
            raise ValueError("must be a decimal string such as 12.5 (up to 10 digits each side)")
        return Decimal(value)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number or a decimal string")
    amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not amount.is_finite() or not 0 <= amount <= LARGEST_NUMBER:
        raise ValueError(f"a number must be from 0 to {LARGEST_NUMBER} (or send a string)")
    return amount.quantize(AMOUNT_PLACES)


StoredAmount = Annotated[
    Decimal,
    PlainValidator(stored_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": LARGEST_NUMBER},
                {"type": "string", "pattern": f"^{AMOUNT_TEXT.pattern}$"},
            ]
        }
    ),
]
StoredCount = json_integer(ge=1, le=2**31 - 1)

WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000, pattern=r"^https?://[^\s\x00]+$"),
    AfterValidator(storable_text),
]
ChoiceName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NOT_BLANK),
    AfterValidator(storable_text),
]


class QueryCreate(RequestBody):
    prompt: StoredText = Field(min_length=1, description="The text the model answers.")
    max_new_tokens: json_integer(ge=1) | None = Field(  # type: ignore[valid-type]
        default=None, description="Most tokens to generate; the server default if absent."
    )
    task: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
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
        description="Class labels: the margin is taken over their first tokens and the answer "
        "is the winning label (the prompt should ask for one of them). They must differ in more "
        "than case and spaces.",
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
            spellings = ["".join(choice.split()).lower() for choice in choices]
            if len(set(spellings)) != len(spellings):
                raise ValueError("choices must differ in more than case and spaces")
        return choices


Money = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]


class QueryCost(BaseModel):
    total: Money
    small: Money
    large: Money


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
    tier: str | None = Field(description="The tier that answered: `small` or `large`.")
    escalated: bool | None
    margin: float | None = Field(description="First-token margin of the small model.")
    threshold: float | None = Field(description="The threshold the margin was compared with.")
    threshold_version: int | None = Field(
        description="Size of the margin history the threshold was computed from."
    )
    threshold_rank_error: float | None = Field(
        description="Bound on how far the threshold's rank in the history may be from the "
        "target rate (a share of the history; 0: the exact quantile)."
    )
    target_escalation_rate: float | None
    decision: str | None = Field(
        description="`warmup`, `below_threshold` (escalated), `at_or_above_threshold`, "
        "`budget_guard` (below the threshold, but the budget could not pay the large model), "
        "`small_unavailable` (the small model server kept failing: answered by the large "
        "tier) or `large_unavailable` (the large one kept failing: the small tier's answer)."
    )
    cost: QueryCost
    error: QueryError | None
    timestamps: QueryTimestamps

    @classmethod
    def of(cls, query: Query, costs: dict[str, Decimal]) -> QueryView:
        small, large = costs.get("small", Decimal(0)), costs.get("large", Decimal(0))
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
            escalated=None if query.decision is None else query.escalated_at is not None,
            margin=query.margin,
            threshold=query.threshold,
            threshold_version=query.threshold_version,
            threshold_rank_error=query.threshold_rank_error,
            target_escalation_rate=query.target_escalation_rate,
            decision=query.decision,
            cost=QueryCost(total=small + large, small=small, large=large),
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
