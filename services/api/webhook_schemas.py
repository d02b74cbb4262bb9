"""The bodies of the webhook routes: endpoints, signing secrets, the delivery log and dead
letters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

from services.api.fields import StoredText
from services.api.schemas import RequestBody
from services.models import WebhookEndpoint
from services.storable import WebhookUrl
from services.webhooks.events import EventType
from services.webhooks.signing import SecretHolder

# An event type is sent as its name, a string; strict validation would want the enum itself.
EventName = Annotated[EventType, Strict(False)]


class EndpointCreate(RequestBody):
    url: WebhookUrl
    description: StoredText | None = Field(default=None, max_length=500)
    event_types: list[EventName] | None = Field(
        default=None, min_length=1, description="Events to send; absent means all of them."
    )
    thin_payload: bool = Field(
        default=False, description="Leave the answer out of query events (fetch it instead)."
    )


class EndpointUpdate(RequestBody):
    """Only the fields sent change."""

    # `all_events: true` clears the filter, so it cannot come with a new one.
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["all_events", "event_types"],
                "properties": {"all_events": {"const": True}, "event_types": {"type": "array"}},
            }
        }
    )

    url: WebhookUrl | None = None
    description: StoredText | None = Field(default=None, max_length=500)
    event_types: list[EventName] | None = Field(default=None, min_length=1)
    all_events: bool = Field(default=False, description="Clear the event filter.")
    thin_payload: bool | None = None
    enabled: bool | None = Field(
        default=None, description="true re-enables an endpoint disabled by a 410 or by you."
    )


class EndpointView(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str] | None
    thin_payload: bool
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointView:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            event_types=endpoint.event_types,
            thin_payload=endpoint.thin_payload,
            enabled=endpoint.disabled_at is None,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )


class EndpointList(BaseModel):
    data: list[EndpointView]


class SigningSecret(BaseModel):
    secret: str = Field(description="`whsec_...`: verify deliveries with any Standard Webhooks "
                        "library.")  # fmt: skip
    previous_secret_expires_at: datetime | None = Field(
        description="Until then, deliveries also carry a signature by the previous secret."
    )

    @classmethod
    def of(cls, holder: SecretHolder) -> SigningSecret:
        return cls(
            secret=holder.webhook_secret,
            previous_secret_expires_at=holder.webhook_previous_secret_expires_at,
        )


class CreatedEndpoint(EndpointView):
    secret: str


class AttemptView(BaseModel):
    id: int
    delivery_id: uuid.UUID
    message_id: str = Field(description="The `webhook-id` header, the same on every retry.")
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    duration_ms: int
    attempted_at: datetime


class AttemptList(BaseModel):
    data: list[AttemptView]
    next_before: int | None = Field(description="Pass as `before` for the next page.")


class DeadLetterView(BaseModel):
    id: uuid.UUID
    message_id: str
    event_type: str
    endpoint_id: uuid.UUID | None = Field(description="None for a query's own webhook_url.")
    url: str
    attempts: int
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


class DeadLetterList(BaseModel):
    data: list[DeadLetterView]


class ReplayView(BaseModel):
    id: uuid.UUID
    status: str
