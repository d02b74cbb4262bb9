"""Queries, their statuses and tiers, the margin history with its threshold scopes, and the
cost ledger with its prices."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.models.declarative import Base, utcnow


class QueryStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ESCALATED = "escalated"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({QueryStatus.SUCCEEDED, QueryStatus.FAILED, QueryStatus.CANCELLED})


class Tier(enum.StrEnum):
    """The first and the last tier of every cascade; the middle tiers between them are named
    by the settings (``TWOTIER_MIDDLE_TIERS``), so a tier in general is a ``str``."""

    SMALL = "small"
    LARGE = "large"


class ThresholdScope(Base):
    """One margin history: tenant x model pair x task label ('' when none).

    ``sketch`` is the serialised KLL quantile sketch of the history's ``margin_count`` margins,
    written under the row's lock with every decision."""

    __tablename__ = "threshold_scopes"
    __table_args__ = (UniqueConstraint("tenant_id", "model_pair", "task_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    model_pair: Mapped[str] = mapped_column(String(400))
    task_label: Mapped[str] = mapped_column(String(100))
    margin_count: Mapped[int] = mapped_column(Integer, default=0)
    sketch: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The last N margins with their decisions (services.threshold_window.RecentDecisions), and
    # what the latest decision read: the audit API and the drift alert show these.
    recent: Mapped[bytes | None] = mapped_column(LargeBinary)
    threshold: Mapped[float | None] = mapped_column(Float)
    target_escalation_rate: Mapped[float | None] = mapped_column(Float)
    realised_escalation_rate: Mapped[float | None] = mapped_column(Float)
    margin_psi: Mapped[float | None] = mapped_column(Float)
    drift_state: Mapped[str] = mapped_column(String(8), default="ok")
    drift_changed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime | None] = mapped_column()


class MarginRecord(Base):
    """One margin of the history H; ``seq`` is its 1-based position in the scope."""

    __tablename__ = "margin_history"
    __table_args__ = (
        UniqueConstraint("scope_id", "seq"),
        # A query's margin joins each scope once: one per tier it was decided on.
        UniqueConstraint("scope_id", "query_id", name="uq_margin_history_scope_id_query_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    scope_id: Mapped[int] = mapped_column(ForeignKey("threshold_scopes.id"))
    seq: Mapped[int] = mapped_column(Integer)
    query_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queries.id"))
    margin: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Query(Base):
    __tablename__ = "queries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(
            "status IN ('queued', 'running', 'escalated', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
        Index("ix_queries_tenant_id_created_at", "tenant_id", "created_at", "id"),
        Index("ix_queries_status_updated_at", "status", "updated_at"),
        Index("ix_queries_tenant_id_status", "tenant_id", "status"),
        Index("ix_queries_batch_id_status", "batch_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default=QueryStatus.QUEUED)
    prompt: Mapped[str] = mapped_column(Text)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    task_label: Mapped[str | None] = mapped_column(String(100))
    request_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    choices: Mapped[list[str] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The batch whose request this query answers (services/batches); None for the others.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id"))

    answer: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(16))
    small_answer: Mapped[str | None] = mapped_column(Text)
    margin: Mapped[float | None] = mapped_column(Float)
    scope_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_scopes.id"))
    threshold: Mapped[float | None] = mapped_column(Float)
    threshold_version: Mapped[int | None] = mapped_column(Integer)
    threshold_rank_error: Mapped[float | None] = mapped_column(Float)
    threshold_window: Mapped[int | None] = mapped_column(Integer)  # None: all of H
    target_escalation_rate: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    budget_period_id: Mapped[int | None] = mapped_column(ForeignKey("budget_periods.id"))
    reserved_small: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    reserved_large: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    # The middle tiers' reservations, {tier: amount as text}; None when none is held.
    reserved_middle: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True))
    # The tier the query is at, by its place in the cascade (0: small). An escalated query at
    # stage 0 predates the stages and waits for the last tier.
    stage: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Every tier that answered, in order: its decision and what it was made from (cascade.py).
    path: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    small_started_at: Mapped[datetime | None] = mapped_column()
    small_finished_at: Mapped[datetime | None] = mapped_column()
    escalated_at: Mapped[datetime | None] = mapped_column()
    large_started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    @property
    def escalated(self) -> bool | None:
        """Whether the query went on past the small tier; None while nothing decided it."""
        return None if self.decision is None else self.escalated_at is not None


class ModelPrice(Base):
    """A price set through the admin API; it overrides the tier's price settings for a model."""

    __tablename__ = "model_prices"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    price_input_per_mtok: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    price_output_per_mtok: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelCall(Base):
    """The cost ledger: one row per model call that was paid for, at most one per tier."""

    __tablename__ = "model_calls"
    __table_args__ = (
        UniqueConstraint("query_id", "tier"),
        Index("ix_model_calls_tenant_id_created_at", "tenant_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    query_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queries.id"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    tier: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer)
    # True: the server reported no prompt token count and input_tokens is an estimate.
    input_tokens_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Decimal] = mapped_column(Numeric(20, 10))
    latency_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
