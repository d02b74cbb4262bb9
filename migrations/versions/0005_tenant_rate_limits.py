"""Per-tenant rate limit and maximum of unfinished queries.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_concurrent_queries", sa.Integer(), nullable=True))
    op.create_index("ix_queries_tenant_id_status", "queries", ["tenant_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_queries_tenant_id_status", table_name="queries")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_concurrent_queries")
        batch.drop_column("rate_limit_per_minute")
