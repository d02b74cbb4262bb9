"""The Files and Batch APIs' objects in OpenAI's format: ids (``file-…``, ``batch_…``), the file
and batch objects, and the lines of a batch's output and error files."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.errors import NotFound
from services.models import Batch, StoredFile

FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"
REQUEST_PREFIX = "batch_req_"
_HEX_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class RequestCounts:
    total: int
    completed: int
    failed: int


def file_id(file_uuid: uuid.UUID) -> str:
    return f"{FILE_PREFIX}{file_uuid.hex}"


def batch_id(batch_uuid: uuid.UUID) -> str:
    return f"{BATCH_PREFIX}{batch_uuid.hex}"


def parse_file_id(text: str) -> uuid.UUID:
    """The file an id names; NotFound for a string that is no file id of this API."""
    return _parse(text, FILE_PREFIX, "file")


def parse_batch_id(text: str) -> uuid.UUID:
    return _parse(text, BATCH_PREFIX, "batch")


def _parse(text: str, prefix: str, kind: str) -> uuid.UUID:
    hex_part = text.removeprefix(prefix)
    if hex_part == text or not _HEX_ID.fullmatch(hex_part):
        raise NotFound(f"no {kind} {text!r}", details={"param": f"{kind}_id"})
    return uuid.UUID(hex_part)


def _seconds(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": file_id(stored.id),
        "object": "file",
        "bytes": stored.size_bytes,
        "created_at": _seconds(stored.created_at),
        "expires_at": None,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "status_details": None,
    }


def file_deleted(file_uuid: uuid.UUID) -> dict[str, Any]:
    return {"id": file_id(file_uuid), "object": "file", "deleted": True}


def batch_object(batch: Batch, counts: RequestCounts) -> dict[str, Any]:
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": batch.errors}
    return {
        "id": batch_id(batch.id),
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": file_id(batch.input_file_id),
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": file_id(batch.output_file_id) if batch.output_file_id else None,
        "error_file_id": file_id(batch.error_file_id) if batch.error_file_id else None,
        "created_at": _seconds(batch.created_at),
        "in_progress_at": _seconds(batch.in_progress_at),
        "expires_at": _seconds(batch.expires_at),
        "finalizing_at": _seconds(batch.finalizing_at),
        "completed_at": _seconds(batch.completed_at),
        "failed_at": _seconds(batch.failed_at),
        "expired_at": _seconds(batch.expired_at),
        "cancelling_at": _seconds(batch.cancelling_at),
        "cancelled_at": _seconds(batch.cancelled_at),
        "request_counts": {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "metadata": batch.request_metadata,
    }


def listed(objects: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


def output_line(
    request_uuid: uuid.UUID, custom_id: str | None, query_id: uuid.UUID, body: Mapping[str, Any]
) -> str:
    """A line of the output file: the request's reply, as its endpoint answers it."""
    return _line(
        {
            "id": f"{REQUEST_PREFIX}{request_uuid.hex}",
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": str(query_id), "body": body},
            "error": None,
        }
    )


def error_line(request_uuid: uuid.UUID, custom_id: str | None, code: str, message: str) -> str:
    """A line of the error file: a request that was invalid, refused, failed or not run."""
    return _line(
        {
            "id": f"{REQUEST_PREFIX}{request_uuid.hex}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


def _line(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
