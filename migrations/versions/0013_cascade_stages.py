"""Cascades of more than two tiers: a query records the stage it is at, the reservations of the
middle tiers and the path of tiers that answered it, and its margin may join one threshold
scope per tier it was decided on (unique per scope rather than per query).

Queries escalated before this revision wait for the large tier of a two-tier cascade: stage 1.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("reserved_middle", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("stage", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("path", sa.JSON(), nullable=True))
    op.execute("UPDATE queries SET stage = 1 WHERE escalated_at IS NOT NULL")
    with op.batch_alter_table("margin_history") as batch:
        batch.drop_constraint("uq_margin_history_query_id", type_="unique")
        batch.create_unique_constraint(
            "uq_margin_history_scope_id_query_id", ["scope_id", "query_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("margin_history") as batch:
        batch.drop_constraint("uq_margin_history_scope_id_query_id", type_="unique")
        batch.create_unique_constraint("uq_margin_history_query_id", ["query_id"])
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("path")
        batch.drop_column("stage")
        batch.drop_column("reserved_middle")
