"""The OpenAPI schema with what the request models alone cannot state.

The longest prompt and the most tokens a query may ask for are settings
(``TWOTIER_MAX_PROMPT_CHARS``, ``TWOTIER_MAX_NEW_TOKENS_LIMIT``), checked by the service; and a
query's metadata is any JSON object whose strings hold no NUL character (PostgreSQL cannot
store one), which takes a recursive schema. Writing both into the schema keeps its promise:
what it calls valid is accepted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.api.fields import NO_NUL
from services.settings import Settings

JSON_VALUE = "#/components/schemas/StoredJsonValue"
STORED_JSON_VALUE = {
    "description": "Any JSON value whose strings (and keys) hold no NUL character.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": {"$ref": JSON_VALUE}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": JSON_VALUE},
        },
    ],
}


def state_limits_in_schema(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` state the settings' limits and the metadata's values."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            components = schema["components"]["schemas"]
            components["StoredJsonValue"] = STORED_JSON_VALUE
            fields = components["QueryCreate"]["properties"]
            fields["prompt"]["maxLength"] = settings.max_prompt_chars
            for choice in fields["max_new_tokens"]["anyOf"]:
                if choice.get("type") == "integer":
                    choice["maximum"] = settings.max_new_tokens_limit
            for choice in fields["metadata"]["anyOf"]:
                if choice.get("type") == "object":
                    choice["propertyNames"] = {"pattern": NO_NUL}
                    choice["additionalProperties"] = {"$ref": JSON_VALUE}
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
