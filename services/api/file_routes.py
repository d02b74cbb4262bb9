"""OpenAI's Files API, for batches: `POST /v1/files` (multipart: `file`, `purpose=batch`),
`GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`
(docs/batches.md). Errors come in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from services.api.deps import SettingsDep, TenantDep
from services.api.multipart import parse_form
from services.batches import files
from services.errors import InvalidParameter
from services.models import Tenant
from services.openai_wire import batch_objects

UPLOAD_PATH = "/v1/files"
router = APIRouter(prefix="/v1/files", tags=["batches"])


@router.post("")
async def upload_file(request: Request, caller: TenantDep, settings: SettingsDep) -> Any:
    """Upload a batch's input: JSONL, one request a line (multipart/form-data)."""
    form = parse_form(await request.body(), request.headers.get("content-type"))
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or upload.filename is None:
        raise InvalidParameter(
            "missing required parameter: 'file'", param="file", code="missing_required_parameter"
        )
    if purpose is None:
        raise InvalidParameter(
            "missing required parameter: 'purpose'",
            param="purpose",
            code="missing_required_parameter",
        )
    if "expires_after" in form or any(name.startswith("expires_after[") for name in form):
        raise InvalidParameter(
            "expires_after is not supported: twotier keeps files until they are deleted",
            param="expires_after",
            code="unsupported_parameter",
        )
    limits = files.FileLimits(
        max_bytes=settings.batch_file_max_bytes, max_lines=settings.batch_max_requests
    )

    def store(session: Session, tenant: Tenant) -> dict[str, Any]:
        stored = files.create_input_file(
            session,
            tenant_id=tenant.id,
            filename=upload.filename or "",
            purpose=purpose.value.decode(errors="replace"),
            content=upload.value,
            limits=limits,
        )
        created = batch_objects.file_object(stored)
        session.commit()
        return created

    return await caller.run(store)


@router.get("")
async def list_files(
    caller: TenantDep,
    purpose: Literal["batch", "batch_output"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
) -> Any:
    """The tenant's files, newest first."""
    after_id = batch_objects.parse_file_id(after) if after else None

    def read(session: Session, tenant: Tenant) -> dict[str, Any]:
        rows, has_more = files.list_files(
            session, tenant_id=tenant.id, purpose=purpose, limit=limit, after=after_id
        )
        return batch_objects.listed([batch_objects.file_object(f) for f in rows], has_more=has_more)

    return await caller.run(read)


@router.get("/{file_id}")
async def get_file(file_id: str, caller: TenantDep) -> Any:
    file_uuid = batch_objects.parse_file_id(file_id)
    return await caller.run(
        lambda session, tenant: batch_objects.file_object(
            files.get_file(session, tenant_id=tenant.id, file_id=file_uuid)
        )
    )


@router.get("/{file_id}/content")
async def get_file_content(file_id: str, caller: TenantDep) -> Response:
    """The file's bytes: a batch's input, output or error file (JSONL)."""
    file_uuid = batch_objects.parse_file_id(file_id)

    def read(session: Session, tenant: Tenant) -> bytes:
        return files.get_file(session, tenant_id=tenant.id, file_id=file_uuid).content

    content = await caller.run(read)
    return Response(content, media_type="application/octet-stream")


@router.delete("/{file_id}")
async def delete_file(file_id: str, caller: TenantDep) -> Any:
    file_uuid = batch_objects.parse_file_id(file_id)

    def delete(session: Session, tenant: Tenant) -> dict[str, Any]:
        files.delete_file(session, tenant_id=tenant.id, file_id=file_uuid)
        session.commit()
        return batch_objects.file_deleted(file_uuid)

    return await caller.run(delete)
