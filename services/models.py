"""ORM mapping of the schema. The schema itself is created only by Alembic migrations."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from services.encryption import EncryptedJSON, EncryptedText
from services.webhooks.signing import PreviousSecret, new_secret

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database; SQLite alone stores no offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}  # noqa: RUF012 - SQLAlchemy reads it once


class QueryStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ESCALATED = "escalated"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({QueryStatus.SUCCEEDED, QueryStatus.FAILED, QueryStatus.CANCELLED})


class Tier(enum.StrEnum):
    SMALL = "small"
    LARGE = "large"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    target_escalation_rate: Mapped[float] = mapped_column(Float)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    budget_period: Mapped[str] = mapped_column(String(8), default="none")
    budget_hard_limit: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    budget_soft_limit: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    budget_per_query: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_queries: Mapped[int | None] = mapped_column(Integer)
    # Endpoints not deleted: with none, a finishing query looks for no endpoint to notify.
    webhook_endpoint_count: Mapped[int] = mapped_column(Integer, default=0)
    # Signs the callbacks sent to a query's own ``webhook_url``; encrypted at rest.
    webhook_secret: Mapped[str] = mapped_column(EncryptedText, default=new_secret)
    webhook_previous_secrets: Mapped[list[PreviousSecret]] = mapped_column(
        EncryptedJSON,
        default=list,
        nullable=True,  # NULL: none (an empty list)
    )
    webhook_previous_secret_expires_at: Mapped[datetime | None] = mapped_column()


class BudgetPeriod(Base):
    """A tenant's spend in one budget period: what is reserved for calls still running, and
    what was spent. Locked for every check-and-reserve and every settlement."""

    __tablename__ = "budget_periods"
    __table_args__ = (UniqueConstraint("tenant_id", "period_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    period_start: Mapped[datetime] = mapped_column()
    reserved: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    spent: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    soft_limit_alerted_at: Mapped[datetime | None] = mapped_column()
    exhausted_alerted_at: Mapped[datetime | None] = mapped_column()


class ApiKey(Base):
    """An API key is ``tt_<prefix>_<secret>``; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


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


class MarginRecord(Base):
    """One margin of the history H; ``seq`` is its 1-based position in the scope."""

    __tablename__ = "margin_history"
    __table_args__ = (UniqueConstraint("scope_id", "seq"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    scope_id: Mapped[int] = mapped_column(ForeignKey("threshold_scopes.id"))
    seq: Mapped[int] = mapped_column(Integer)
    query_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queries.id"), unique=True)
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

    answer: Mapped[str | None] = mapped_column(Text)
    answered_by: Mapped[str | None] = mapped_column(String(16))
    small_answer: Mapped[str | None] = mapped_column(Text)
    margin: Mapped[float | None] = mapped_column(Float)
    scope_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_scopes.id"))
    threshold: Mapped[float | None] = mapped_column(Float)
    threshold_version: Mapped[int | None] = mapped_column(Integer)
    threshold_rank_error: Mapped[float | None] = mapped_column(Float)
    target_escalation_rate: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    budget_period_id: Mapped[int | None] = mapped_column(ForeignKey("budget_periods.id"))
    reserved_small: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    reserved_large: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    small_started_at: Mapped[datetime | None] = mapped_column()
    small_finished_at: Mapped[datetime | None] = mapped_column()
    escalated_at: Mapped[datetime | None] = mapped_column()
    large_started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


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


class WebhookEndpoint(Base):
    """A tenant's callback URL, its signing secret (and the secrets it replaced, while their
    grace periods run), encrypted at rest, and the event types it wants (None: all).
    ``webhook_previous_secret_expires_at`` is when the last of those stops signing."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_tenant_id_created_at", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    thin_payload: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_secret: Mapped[str] = mapped_column(EncryptedText, default=new_secret)
    webhook_previous_secrets: Mapped[list[PreviousSecret]] = mapped_column(
        EncryptedJSON,
        default=list,
        nullable=True,  # NULL: none (an empty list)
    )
    webhook_previous_secret_expires_at: Mapped[datetime | None] = mapped_column()
    disabled_at: Mapped[datetime | None] = mapped_column()
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    deleted_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookMessage(Base):
    """One event, written in the transaction that caused it (the outbox). Its id is the
    ``webhook-id`` of every delivery and every retry of it."""

    __tablename__ = "webhook_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # an attempt is due at ``next_attempt_at``
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # every attempt failed, or the endpoint is gone: a dead letter to replay
    DISCARDED = "discarded"  # its endpoint was deleted


class WebhookDelivery(Base):
    """One message on its way to one URL: a registered endpoint, or a query's own
    ``webhook_url`` (then ``endpoint_id`` is None and the tenant's secret signs it)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'succeeded', 'dead', 'discarded')", name="status"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_tenant_id_status", "tenant_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id"), index=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt, with what the receiver answered."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_endpoint_id_id", "endpoint_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("webhook_endpoints.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(1000))
    response_excerpt: Mapped[str | None] = mapped_column(String(1000))
    duration_ms: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
