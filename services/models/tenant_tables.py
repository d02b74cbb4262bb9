"""Tenants, their API keys and their budget periods."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.encryption import EncryptedJSON, EncryptedText
from services.models.declarative import Base, utcnow
from services.webhooks.signing import PreviousSecret, new_secret


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
    # Signs the callbacks sent to a query's own ``webhook_url``; encrypted at rest. Loaded
    # only when read: every request and every tier's claim loads the tenant, few sign.
    webhook_secret: Mapped[str] = mapped_column(EncryptedText, default=new_secret, deferred=True)
    webhook_previous_secrets: Mapped[list[PreviousSecret]] = mapped_column(
        EncryptedJSON,
        default=list,
        nullable=True,  # NULL: none (an empty list)
        deferred=True,
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
