"""The threshold's quantile sketch per scope, each decision's rank-error bound, and a
notification when a query finishes.

The index on (scope_id, margin) served the quantile's index scan, which the sketch replaces;
dropping it makes appending a margin one index write cheaper. Scopes keep sketch NULL here:
the first decision in each builds its sketch from the stored history, under the scope's lock.

On PostgreSQL a trigger sends NOTIFY twotier_query_finished with the query's id when its status
becomes terminal; PostgreSQL delivers it when (and only if) that transaction commits, and long
polls wake on it (services/completion.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_FUNCTION = """
CREATE FUNCTION twotier_notify_query_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('twotier_query_finished', NEW.id::text);
    RETURN NULL;
END
$$
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER queries_notify_finished AFTER UPDATE OF status ON queries FOR EACH ROW
WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled') AND OLD.status <> NEW.status)
EXECUTE FUNCTION twotier_notify_query_finished()
"""


def upgrade() -> None:
    with op.batch_alter_table("threshold_scopes") as batch:
        batch.add_column(sa.Column("sketch", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("threshold_rank_error", sa.Float(), nullable=True))
    op.drop_index("ix_margin_history_scope_id_margin", table_name="margin_history")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER queries_notify_finished ON queries")
        op.execute("DROP FUNCTION twotier_notify_query_finished()")
    op.create_index("ix_margin_history_scope_id_margin", "margin_history", ["scope_id", "margin"])
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("threshold_rank_error")
    with op.batch_alter_table("threshold_scopes") as batch:
        batch.drop_column("sketch")
