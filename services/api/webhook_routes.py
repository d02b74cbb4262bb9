"""Routes for a tenant's webhooks: endpoints, secrets, the delivery log and dead letters."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.orm import Session

from services.api.deps import SettingsDep, TenantDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.schemas import ErrorBody
from services.api.webhook_schemas import (
    AttemptList,
    AttemptView,
    CreatedEndpoint,
    DeadLetterList,
    DeadLetterView,
    EndpointCreate,
    EndpointList,
    EndpointUpdate,
    EndpointView,
    ReplayView,
    SigningSecret,
)
from services.models import Tenant, WebhookDelivery
from services.webhooks import endpoints

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorBody,
        "description": "No such endpoint for this tenant (or an id that is not a UUID).",
    }
}


def _dead_letter_view(delivery: WebhookDelivery, event_type: str) -> DeadLetterView:
    return DeadLetterView(
        id=delivery.id,
        message_id=delivery.message_id,
        event_type=event_type,
        endpoint_id=delivery.endpoint_id,
        url=delivery.url,
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
    )


# Ids in paths are matched as UUIDs (`:uuid`), so that a fixed path such as /dead-letters is
# never read as an endpoint id: another method on it is 405, and a malformed id is 404.
@router.get("/callback-secret")
async def get_callback_secret(caller: TenantDep) -> SigningSecret:
    """The secret that signs callbacks to a query's own `webhook_url`."""
    return await caller.run(lambda _, tenant: SigningSecret.of(tenant))


@router.post("/callback-secret/rotate")
async def rotate_callback_secret(caller: TenantDep, settings: SettingsDep) -> SigningSecret:
    """A new callback secret; the previous one also signs until `previous_secret_expires_at`."""

    def rotate(session: Session, tenant: Tenant) -> SigningSecret:
        endpoints.rotate_tenant_secret(session, tenant=tenant, settings=settings)
        session.commit()
        return SigningSecret.of(tenant)

    return await caller.run(rotate)


@router.get("/dead-letters")
async def list_dead_letters(
    caller: TenantDep,
    endpoint_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeadLetterList:
    """Deliveries that used up their attempts, newest first."""

    def dead_letters(session: Session, tenant: Tenant) -> DeadLetterList:
        letters = endpoints.dead_letters(
            session, tenant_id=tenant.id, endpoint_id=endpoint_id, limit=limit
        )
        return DeadLetterList(data=[_dead_letter_view(d.delivery, d.event_type) for d in letters])

    return await caller.run(dead_letters)


@router.post(
    "/dead-letters/{delivery_id:uuid}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "Not a dead letter."}},
)
async def replay_dead_letter(delivery_id: uuid.UUID, caller: TenantDep) -> ReplayView:
    """Deliver a dead letter again, from the first attempt, with its original webhook-id."""

    def replay(session: Session, tenant: Tenant) -> ReplayView:
        delivery = endpoints.replay_dead_letter(
            session, tenant_id=tenant.id, delivery_id=delivery_id
        )
        session.commit()
        return ReplayView(id=delivery.id, status=delivery.status)

    return await caller.run(replay)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_endpoint(
    body: EndpointCreate, caller: TenantDep, settings: SettingsDep
) -> CreatedEndpoint:
    """Register a URL; the response carries its signing secret."""

    def create(session: Session, tenant: Tenant) -> CreatedEndpoint:
        endpoint = endpoints.create_endpoint(
            session,
            tenant=tenant,
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            thin_payload=body.thin_payload,
            settings=settings,
        )
        session.commit()
        view = EndpointView.of(endpoint).model_dump()
        return CreatedEndpoint(**view, secret=endpoint.webhook_secret)

    return await caller.run(create)


@router.get("")
async def list_endpoints(caller: TenantDep) -> EndpointList:
    def listed(session: Session, tenant: Tenant) -> EndpointList:
        rows = endpoints.list_endpoints(session, tenant_id=tenant.id)
        return EndpointList(data=[EndpointView.of(endpoint) for endpoint in rows])

    return await caller.run(listed)


@router.get("/{endpoint_id:uuid}", responses=NOT_FOUND)
async def get_endpoint(endpoint_id: uuid.UUID, caller: TenantDep) -> EndpointView:
    return await caller.run(
        lambda session, tenant: EndpointView.of(
            endpoints.get_endpoint(session, tenant_id=tenant.id, endpoint_id=endpoint_id)
        )
    )


@router.patch("/{endpoint_id:uuid}", responses=NOT_FOUND)
async def update_endpoint(
    endpoint_id: uuid.UUID, body: EndpointUpdate, caller: TenantDep, settings: SettingsDep
) -> EndpointView:
    changes = endpoints.EndpointChanges(
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        all_events=body.all_events,
        thin_payload=body.thin_payload,
        enabled=body.enabled,
    )

    def update(session: Session, tenant: Tenant) -> EndpointView:
        endpoint = endpoints.update_endpoint(
            session,
            tenant_id=tenant.id,
            endpoint_id=endpoint_id,
            changes=changes,
            settings=settings,
        )
        session.commit()
        return EndpointView.of(endpoint)

    return await caller.run(update)


@router.delete("/{endpoint_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_endpoint(endpoint_id: uuid.UUID, caller: TenantDep) -> Response:
    """Delete the endpoint; its pending deliveries and dead letters are discarded."""

    def delete(session: Session, tenant: Tenant) -> None:
        endpoints.delete_endpoint(session, tenant_id=tenant.id, endpoint_id=endpoint_id)
        session.commit()

    await caller.run(delete)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{endpoint_id:uuid}/secret", responses=NOT_FOUND)
async def get_endpoint_secret(endpoint_id: uuid.UUID, caller: TenantDep) -> SigningSecret:
    return await caller.run(
        lambda session, tenant: SigningSecret.of(
            endpoints.get_endpoint(session, tenant_id=tenant.id, endpoint_id=endpoint_id)
        )
    )


@router.post("/{endpoint_id:uuid}/secret/rotate", responses=NOT_FOUND)
async def rotate_endpoint_secret(
    endpoint_id: uuid.UUID, caller: TenantDep, settings: SettingsDep
) -> SigningSecret:
    """A new secret; the previous one also signs until `previous_secret_expires_at`."""

    def rotate(session: Session, tenant: Tenant) -> SigningSecret:
        endpoint = endpoints.rotate_endpoint_secret(
            session, tenant_id=tenant.id, endpoint_id=endpoint_id, settings=settings
        )
        session.commit()
        return SigningSecret.of(endpoint)

    return await caller.run(rotate)


@router.get("/{endpoint_id:uuid}/attempts", responses=NOT_FOUND)
async def list_attempts(
    endpoint_id: uuid.UUID,
    caller: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> AttemptList:
    """The endpoint's delivery log: every attempt and what the receiver answered."""

    def attempts(session: Session, tenant: Tenant) -> list[AttemptView]:
        logged = endpoints.delivery_log(
            session, tenant_id=tenant.id, endpoint_id=endpoint_id, limit=limit, before=before
        )
        return [
            AttemptView(
                id=row.attempt.id,
                delivery_id=row.attempt.delivery_id,
                message_id=row.message_id,
                event_type=row.event_type,
                attempt=row.attempt.attempt,
                status_code=row.attempt.status_code,
                error=row.attempt.error,
                response_excerpt=row.attempt.response_excerpt,
                duration_ms=row.attempt.duration_ms,
                attempted_at=row.attempt.attempted_at,
            )
            for row in logged
        ]

    views = await caller.run(attempts)
    return AttemptList(data=views, next_before=views[-1].id if len(views) == limit else None)
