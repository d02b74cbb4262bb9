"""OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches/{id}`, `POST
/v1/batches/{id}/cancel`, `GET /v1/batches` (docs/batches.md). Errors come in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session

from services.api.deps import SettingsDep, TenantDep
from services.batches import store
from services.models import Batch, Tenant
from services.openai_wire import batch_objects
from services.openai_wire.requests import Metadata

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    completion_window: str = Field(min_length=1)
    metadata: Metadata | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None

    @field_validator("output_expires_after")
    @classmethod
    def _files_do_not_expire(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise PydanticCustomError(
                "unsupported_parameter",
                "output_expires_after is not supported: twotier keeps files until deleted",
            )


def _object(session: Session, batch: Batch) -> dict[str, Any]:
    return batch_objects.batch_object(batch, store.request_counts(session, batch))


@router.post("")
async def create_batch(body: BatchCreate, caller: TenantDep) -> Any:
    """Run every request of an uploaded file (`purpose=batch`) through the cascade, at a lower
    priority than interactive queries."""
    input_file = batch_objects.parse_file_id(body.input_file_id)

    def create(session: Session, tenant: Tenant) -> dict[str, Any]:
        batch = store.create_batch(
            session,
            tenant_id=tenant.id,
            input_file_id=input_file,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=dict(body.metadata) if body.metadata is not None else None,
        )
        created = _object(session, batch)
        session.commit()
        return created

    return await caller.run(create)


@router.get("")
async def list_batches(
    caller: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> Any:
    """The tenant's batches, newest first; `after` continues after that batch."""
    after_id = batch_objects.parse_batch_id(after) if after else None

    def read(session: Session, tenant: Tenant) -> dict[str, Any]:
        rows, has_more = store.list_batches(
            session, tenant_id=tenant.id, limit=limit, after=after_id
        )
        return batch_objects.listed([_object(session, b) for b in rows], has_more=has_more)

    return await caller.run(read)


@router.get("/{batch_id}")
async def get_batch(batch_id: str, caller: TenantDep) -> Any:
    batch_uuid = batch_objects.parse_batch_id(batch_id)
    return await caller.run(
        lambda session, tenant: _object(
            session, store.get_batch(session, tenant_id=tenant.id, batch_id=batch_uuid)
        )
    )


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, caller: TenantDep, settings: SettingsDep) -> Any:
    """Stop the batch: nothing more of it is sent, its unfinished queries are cancelled, and
    it finalizes as `cancelled` with the answers it has."""
    batch_uuid = batch_objects.parse_batch_id(batch_id)

    def cancel(session: Session, tenant: Tenant) -> dict[str, Any]:
        batch = store.cancel_batch(
            session, tenant_id=tenant.id, batch_id=batch_uuid, tier_names=settings.tier_names
        )
        cancelled = _object(session, batch)
        session.commit()
        return cancelled

    return await caller.run(cancel)
