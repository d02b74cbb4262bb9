"""The request field types (services/api/fields.py): what each accepts, what it refuses and with
which message, and that the JSON Schema each states agrees with what it accepts."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services import storable
from services.api import fields

STORED_TEXT = TypeAdapter(fields.StoredText)
NAMING_TEXT = TypeAdapter(fields.NamingText)
STORED_JSON = TypeAdapter(fields.StoredJson)
STORED_AMOUNT = TypeAdapter(fields.StoredAmount)
STORED_COUNT = TypeAdapter(fields.StoredCount)
UTC_INSTANT = TypeAdapter(fields.UtcInstant)
WEBHOOK_URL = TypeAdapter(storable.WebhookUrl)
CHOICE_NAME = TypeAdapter(fields.ChoiceName)

# Text that PostgreSQL stores: no NUL, no unpaired surrogate.
STORABLE = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


def refusal(adapter: TypeAdapter[Any], value: Any) -> str:
    """The message of the one error ``value`` gets."""
    with pytest.raises(ValidationError) as refused:
        adapter.validate_python(value)
    (error,) = refused.value.errors()
    return str(error["msg"])


def refusal_from_json(adapter: TypeAdapter[Any], body: str) -> str:
    """As FastAPI reads a body: Python's json.loads, then the type."""
    return refusal(adapter, json.loads(body))


@given(STORABLE)
def test_stored_text_keeps_any_storable_text_as_it_is(text: str) -> None:
    assert STORED_TEXT.validate_python(text) == text


@given(STORABLE, STORABLE)
def test_stored_text_refuses_a_nul_anywhere(before: str, after: str) -> None:
    assert "NUL character" in refusal(STORED_TEXT, before + "\x00" + after)


@pytest.mark.parametrize("surrogate", [chr(0xD800), chr(0xDFFF), f"a{chr(0xDC00)}b"])
def test_stored_text_refuses_an_unpaired_surrogate_as_json_can_send_it(surrogate: str) -> None:
    body = json.dumps(surrogate)  # "\ud800" escaped, as a client sends it
    assert "unpaired surrogate" in refusal_from_json(STORED_TEXT, body)


@given(STORABLE.filter(str.strip))
def test_naming_text_keeps_storable_text_with_more_than_spaces_in_it(text: str) -> None:
    assert re.search(fields.NOT_BLANK, text)
    assert NAMING_TEXT.validate_python(text) == text


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_naming_text_refuses_the_blank_text_its_schema_pattern_refuses(blank: str) -> None:
    assert re.search(fields.NOT_BLANK, blank) is None
    with pytest.raises(ValidationError):
        NAMING_TEXT.validate_python(blank)


def test_the_schemas_state_their_patterns() -> None:
    assert STORED_TEXT.json_schema()["pattern"] == fields.NO_NUL
    assert NAMING_TEXT.json_schema()["pattern"] == fields.NOT_BLANK
    assert WEBHOOK_URL.json_schema()["maxLength"] == 2000


def nested(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` levels deep (the outermost object is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_stored_json_nests_up_to_the_maximum_depth_and_no_deeper() -> None:
    assert STORED_JSON.validate_python(nested(fields.METADATA_MAX_DEPTH))
    message = refusal(STORED_JSON, nested(fields.METADATA_MAX_DEPTH + 1))
    assert f"at most {fields.METADATA_MAX_DEPTH} levels" in message


def test_lists_count_as_levels_too() -> None:
    value: Any = []
    for _ in range(fields.METADATA_MAX_DEPTH):
        value = [value]
    assert "levels deep" in refusal(STORED_JSON, {"a": value})


def test_a_very_deep_value_is_refused_without_overflowing_the_stack() -> None:
    assert "levels deep" in refusal(STORED_JSON, nested(100_000))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"k\x00": 1}, "NUL character"),
        ({"k": ["ok", "v\x00"]}, "NUL character"),
        ({"k": {"deeper": "\ud800"}}, "unpaired surrogate"),
        ({"k": math.nan}, "finite"),
        ({"k": [math.inf]}, "finite"),
    ],
)
def test_stored_json_refuses_what_postgresql_cannot_store_at_any_depth(
    metadata: dict[str, Any], message: str
) -> None:
    assert message in refusal(STORED_JSON, metadata)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | STORABLE,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(STORABLE, children, max_size=3)
        ),
        max_leaves=20,
    )
)
def test_stored_json_keeps_any_storable_value_unchanged(value: Any) -> None:
    # hypothesis.recursive nests far less than METADATA_MAX_DEPTH here
    metadata = {"value": value}
    assert STORED_JSON.validate_python(metadata) == metadata


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        ("12.5", Decimal("12.5")),
        ("0", Decimal(0)),
        ("9999999999.9999999999", Decimal("9999999999.9999999999")),
        (0, Decimal(0)),
        (12, Decimal(12)),
        (0.1, Decimal("0.1")),  # the float's shortest repr, not its binary expansion
        (fields.LARGEST_NUMBER, Decimal(fields.LARGEST_NUMBER)),
        (Decimal("1.00000000005"), Decimal("1.0000000000")),  # rounded to 10 places (even)
    ],
)
def test_stored_amount_accepts_decimal_strings_and_numbers_in_range(
    value: Any, amount: Decimal
) -> None:
    assert STORED_AMOUNT.validate_python(value) == amount


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12.", "decimal string"),
        (".5", "decimal string"),
        ("-1", "decimal string"),
        ("1e3", "decimal string"),
        ("12345678901", "decimal string"),
        ("1.12345678901", "decimal string"),
        ("NaN", "decimal string"),
        (True, "a number or a decimal string"),
        (None, "a number or a decimal string"),
        ([1], "a number or a decimal string"),
        (-1, "from 0 to 9999999999"),
        (-0.5, "from 0 to 9999999999"),
        (fields.LARGEST_NUMBER + 1, "from 0 to 9999999999"),
        (math.inf, "from 0 to 9999999999"),
        (math.nan, "from 0 to 9999999999"),
    ],
)
def test_stored_amount_refuses_with_a_message_that_says_what_it_takes(
    value: Any, message: str
) -> None:
    assert message in refusal(STORED_AMOUNT, value)


@given(st.decimals(min_value=0, max_value=fields.LARGEST_NUMBER, allow_nan=False, places=10))
def test_any_amount_in_range_as_text_comes_back_exactly(amount: Decimal) -> None:
    text = f"{amount:f}"
    if fields.AMOUNT_TEXT.fullmatch(text):
        assert STORED_AMOUNT.validate_python(text) == amount


@given(st.floats(min_value=0, max_value=fields.LARGEST_NUMBER))
def test_any_number_in_range_fits_the_numeric_column(number: float) -> None:
    amount = STORED_AMOUNT.validate_python(number)
    assert amount.as_tuple().exponent == -10
    assert abs(amount - Decimal(repr(number))) <= Decimal("0.5e-10")


def test_stored_amounts_schema_states_both_forms() -> None:
    number, text = STORED_AMOUNT.json_schema()["anyOf"]
    assert number == {"type": "number", "minimum": 0, "maximum": fields.LARGEST_NUMBER}
    assert re.fullmatch(text["pattern"].strip("^$"), "12.5")


@pytest.mark.parametrize(("body", "count"), [("1", 1), ("12.0", 12), (str(2**31 - 1), 2**31 - 1)])
def test_stored_count_accepts_json_integers_in_range(body: str, count: int) -> None:
    assert STORED_COUNT.validate_python(json.loads(body)) == count


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("12.5", "fractional part"),
        ('"12"', "must be a JSON number"),
        ("true", "must be a JSON number"),
        ("null", "must be a JSON number"),
        ("0", "greater than or equal to 1"),
        (str(2**31), "less than or equal to 2147483647"),
    ],
)
def test_stored_count_refuses_what_json_schemas_integer_refuses(body: str, message: str) -> None:
    assert message in refusal_from_json(STORED_COUNT, body)


def test_stored_counts_schema_states_its_bounds() -> None:
    schema = STORED_COUNT.json_schema()
    assert schema == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2025-01-31T00:00:00Z", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31T00:00:00", datetime(2025, 1, 31, tzinfo=UTC)),  # no offset: UTC
        ("2025-01-31T02:00:00+02:00", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
    ],
)
def test_utc_instant_reads_iso_8601_into_utc(text: str, instant: datetime) -> None:
    value = UTC_INSTANT.validate_python(text)
    assert value == instant
    assert value.utcoffset() == timedelta(0)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_any_offset_names_the_same_instant_in_utc(instant: datetime, offset_min: int) -> None:
    local = instant.astimezone(timezone(timedelta(minutes=offset_min)))
    assert UTC_INSTANT.validate_python(local.isoformat()) == instant


@pytest.mark.parametrize("value", [0.5, 1700000000, "0.5", "1700000000", "yesterday", None])
def test_utc_instant_refuses_what_is_not_iso_8601_text(value: Any) -> None:
    assert "ISO 8601" in refusal(UTC_INSTANT, value)


def test_an_instant_beyond_the_range_once_in_utc_is_refused() -> None:
    assert "out of range" in refusal(UTC_INSTANT, "9999-12-31T23:59:00-23:59")


@pytest.mark.parametrize(
    "url", ["http://example.com/hook", "https://example.com:8443/a?b=c", "https://[::1]/x"]
)
def test_webhook_url_accepts_http_and_https(url: str) -> None:
    assert WEBHOOK_URL.validate_python(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/",
        "example.com/hook",
        "https://",
        "https://exa mple.com/",
        "https://example.com/\x00",
        "https://example.com/" + "a" * 2000,
    ],
)
def test_webhook_url_refuses_other_schemes_spaces_and_long_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        WEBHOOK_URL.validate_python(url)


def test_choice_name_is_stripped_and_refused_when_blank_or_long() -> None:
    assert CHOICE_NAME.validate_python("  support  ") == "support"
    for refused in ["", "   ", "x" * 101, "a\x00b"]:
        with pytest.raises(ValidationError):
            CHOICE_NAME.validate_python(refused)
    assert CHOICE_NAME.validate_python("x" * 100) == "x" * 100
