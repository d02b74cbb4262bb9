"""The types of request fields: what each accepts, and what the OpenAPI schema says of it.

Each type states in the schema what it checks, so that a request the schema calls valid is
accepted and one it calls invalid is refused; what JSON Schema cannot say (unpaired
surrogates, metadata nesting) is refused with 422 all the same.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

from services.storable import storable_text


def json_number(value: Any) -> Any:
    """Refuse what is not a JSON number before pydantic's lax integer parsing sees it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


def json_integer(*, ge: int, le: int | None = None) -> Any:
    """A JSON integer as JSON Schema reads it: 12 or 12.0, never 12.5, "12" or true (strict
    int refuses 12.0, which the schema's "integer" allows). The bounds go inside, with Field,
    so that the schema states them as minimum and maximum."""
    return Annotated[int, Strict(False), Field(ge=ge, le=le), BeforeValidator(json_number)]


def naming_text(text: str) -> str:
    """Storable text with more than white space in it, as the schema's NOT_BLANK says."""
    if not text.strip():
        raise ValueError("must not be blank")
    return storable_text(text)


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
    str, AfterValidator(naming_text), Field(json_schema_extra={"pattern": NOT_BLANK})
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

ChoiceName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=NOT_BLANK),
    AfterValidator(storable_text),
]
