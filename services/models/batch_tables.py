"""Batches in OpenAI's Batch API shape: the files tenants upload and download, the batches,
and each batch's requests (one per line of its input file)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from services.models.declarative import Base, utcnow


class FilePurpose(enum.StrEnum):
    BATCH = "batch"  # uploaded: a batch's input
    BATCH_OUTPUT = "batch_output"  # written: a batch's output or error file


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


FINISHED_BATCH_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}
)


class StoredFile(Base):
    """A file of the Files API, its bytes in the row (loaded only when asked for)."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint("purpose IN ('batch', 'batch_output')", name="purpose"),
        Index("ix_files_tenant_id_created_at", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    purpose: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    line_count: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """A batch of requests from one input file. Its files are named by id only (no foreign
    key): a tenant may delete its input file once the batch has read it."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(
            "status IN ('validating', 'in_progress', 'finalizing', 'completed', 'failed', "
            "'cancelling', 'cancelled', 'expired')",
            name="status",
        ),
        Index("ix_batches_tenant_id_created_at", "tenant_id", "created_at", "id"),
        Index("ix_batches_status_created_at", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    request_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.VALIDATING)
    input_file_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    output_file_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    error_file_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Why a batch failed as a whole (its input file could not be read): OpenAI's `errors`.
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The counts as they were when the batch finished; while it runs they are counted.
    total_count: Mapped[int | None] = mapped_column(Integer)
    completed_count: Mapped[int | None] = mapped_column(Integer)
    failed_count: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    in_progress_at: Mapped[datetime | None] = mapped_column()
    finalizing_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column()
    expired_at: Mapped[datetime | None] = mapped_column()
    cancelling_at: Mapped[datetime | None] = mapped_column()
    cancelled_at: Mapped[datetime | None] = mapped_column()


class BatchRequest(Base):
    """One line of a batch's input file. Until the feeder sends it, it has neither a query nor
    an error: it is waiting. Sent, it has its query (created then, so the budget is reserved
    only for requests that run); refused (an invalid line, a budget that cannot pay, a batch
    cancelled first), it has an error and never a query."""

    __tablename__ = "batch_requests"
    __table_args__ = (
        UniqueConstraint("batch_id", "line"),
        Index("ix_batch_requests_batch_id_waiting", "batch_id", "query_id", "error_code", "line"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id"))
    line: Mapped[int] = mapped_column(Integer)  # 1-based, in the input file
    custom_id: Mapped[str | None] = mapped_column(String(512))
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    query_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("queries.id"), unique=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(2000))
