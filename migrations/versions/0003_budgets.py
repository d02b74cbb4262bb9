"""Budgets: per-tenant limits, per-period reserved and spent amounts, per-query reservations.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(20, 10)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("budget_period", sa.String(8), nullable=False, server_default="none")
        )
        batch.add_column(sa.Column("budget_hard_limit", MONEY, nullable=True))
        batch.add_column(sa.Column("budget_soft_limit", MONEY, nullable=True))
    op.create_table(
        "budget_periods",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reserved", MONEY, nullable=False),
        sa.Column("spent", MONEY, nullable=False),
        sa.Column("soft_limit_alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_budget_periods"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_budget_periods_tenant_id_tenants"
        ),
        sa.UniqueConstraint("tenant_id", "period_start", name="uq_budget_periods_tenant_id"),
    )
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("budget_period_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reserved_small", MONEY, nullable=False, server_default="0"))
        batch.add_column(sa.Column("reserved_large", MONEY, nullable=False, server_default="0"))
        batch.create_foreign_key(
            "fk_queries_budget_period_id_budget_periods",
            "budget_periods",
            ["budget_period_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.drop_constraint("fk_queries_budget_period_id_budget_periods", type_="foreignkey")
        batch.drop_column("reserved_large")
        batch.drop_column("reserved_small")
        batch.drop_column("budget_period_id")
    op.drop_table("budget_periods")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("budget_soft_limit")
        batch.drop_column("budget_hard_limit")
        batch.drop_column("budget_period")
