"""ORM mapping of the schema. The schema itself is created only by Alembic migrations.

The tables live in the modules of this package, one per domain; importing the package maps
them all on ``Base.metadata`` (which Alembic compares with the database)."""

from __future__ import annotations

from services.models.batch_tables import (
    FINISHED_BATCH_STATUSES,
    Batch,
    BatchRequest,
    BatchStatus,
    FilePurpose,
    StoredFile,
)
from services.models.declarative import NAMING_CONVENTION, Base, UTCDateTime, utcnow
from services.models.query_tables import (
    TERMINAL_STATUSES,
    MarginRecord,
    ModelCall,
    ModelPrice,
    Query,
    QueryStatus,
    ThresholdScope,
    Tier,
)
from services.models.tenant_tables import ApiKey, BudgetPeriod, Tenant
from services.models.webhook_tables import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)

__all__ = [
    "FINISHED_BATCH_STATUSES",
    "NAMING_CONVENTION",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Base",
    "Batch",
    "BatchRequest",
    "BatchStatus",
    "BudgetPeriod",
    "DeliveryStatus",
    "FilePurpose",
    "MarginRecord",
    "ModelCall",
    "ModelPrice",
    "Query",
    "QueryStatus",
    "StoredFile",
    "Tenant",
    "ThresholdScope",
    "Tier",
    "UTCDateTime",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookMessage",
    "utcnow",
]
