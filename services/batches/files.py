"""The Files API's files: a batch's input, uploaded by its tenant, and the output and error
files a batch writes. The bytes are kept in the database, in the file's row; listing and
reading a file's object never loads them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services import paging
from services.errors import InvalidParameter, NotFound
from services.models import FilePurpose, StoredFile


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int
    max_lines: int


def create_input_file(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    filename: str,
    purpose: str,
    content: bytes,
    limits: FileLimits,
) -> StoredFile:
    """Store an uploaded batch input file, once it is UTF-8 JSONL of at most
    ``limits.max_lines`` JSON objects and ``limits.max_bytes`` bytes."""
    if purpose != FilePurpose.BATCH:
        raise InvalidParameter(
            f"purpose {purpose!r} is not supported: twotier stores files for batches "
            "(purpose 'batch')",
            param="purpose",
            code="invalid_value",
        )
    if len(content) > limits.max_bytes:
        raise InvalidParameter(
            f"the file is {len(content)} bytes; the limit is {limits.max_bytes} bytes",
            param="file",
            code="file_too_large",
        )
    lines = request_lines(content)
    if not lines:
        raise InvalidParameter("the file holds no requests", param="file", code="empty_file")
    if len(lines) > limits.max_lines:
        raise InvalidParameter(
            f"the file holds {len(lines)} requests; the limit is {limits.max_lines}",
            param="file",
            code="too_many_requests",
        )
    for number, line in lines:
        if not _is_json_object(line):
            raise InvalidParameter(
                f"line {number} is not a JSON object: a batch file holds one request a line",
                param="file",
                code="invalid_jsonl",
            )
    return _store(
        session,
        tenant_id=tenant_id,
        purpose=FilePurpose.BATCH,
        filename=filename,
        content=content,
        line_count=len(lines),
    )


def store_output_file(
    session: Session, *, tenant_id: uuid.UUID, filename: str, lines: list[str]
) -> StoredFile:
    """A batch's output or error file, one JSON object a line."""
    content = "".join(f"{line}\n" for line in lines).encode()
    return _store(
        session,
        tenant_id=tenant_id,
        purpose=FilePurpose.BATCH_OUTPUT,
        filename=filename,
        content=content,
        line_count=len(lines),
    )


def request_lines(content: bytes) -> list[tuple[int, str]]:
    """The file's lines that are not blank, with their 1-based numbers. Lines end at "\\n"
    alone: JSON strings may hold U+2028 and the other separators ``str.splitlines`` splits at."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter(
            "the file is not UTF-8 text: a batch file is JSONL, one request a line",
            param="file",
            code="invalid_jsonl",
        ) from None
    return [
        (number, line.rstrip("\r"))
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def get_file(session: Session, *, tenant_id: uuid.UUID, file_id: uuid.UUID) -> StoredFile:
    stored = session.get(StoredFile, file_id)
    if stored is None or stored.tenant_id != tenant_id:
        raise NotFound(f"no file file-{file_id.hex}", details={"param": "file_id"})
    return stored


def list_files(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    purpose: str | None,
    limit: int,
    after: uuid.UUID | None,
) -> tuple[list[StoredFile], bool]:
    """The tenant's files, newest first, after the file ``after``; and whether more follow."""
    statement = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
    if purpose is not None:
        statement = statement.where(StoredFile.purpose == purpose)
    last = get_file(session, tenant_id=tenant_id, file_id=after) if after is not None else None
    return paging.newest_first(
        session,
        statement,
        StoredFile,
        after=(last.created_at, last.id) if last is not None else None,
        limit=limit,
    )


def delete_file(session: Session, *, tenant_id: uuid.UUID, file_id: uuid.UUID) -> None:
    """Delete the file. A batch that has read its input file does not need it any more."""
    session.delete(get_file(session, tenant_id=tenant_id, file_id=file_id))


def _store(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    purpose: FilePurpose,
    filename: str,
    content: bytes,
    line_count: int,
) -> StoredFile:
    stored = StoredFile(
        tenant_id=tenant_id,
        purpose=purpose,
        filename=filename[:500],
        size_bytes=len(content),
        line_count=line_count,
        content=content,
    )
    session.add(stored)
    session.flush()
    return stored


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
