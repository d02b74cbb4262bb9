"""Each threshold scope keeps its last N decisions (a ring) and what its latest decision read,
for the windowed threshold, the drift alert and the audit API; a decision records the window its
threshold was read over (NULL: all of H).

Existing scopes start with no ring: their first decision rebuilds it from ``margin_history``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPE_COLUMNS = (
    ("recent", sa.LargeBinary()),
    ("threshold", sa.Float()),
    ("target_escalation_rate", sa.Float()),
    ("realised_escalation_rate", sa.Float()),
    ("margin_psi", sa.Float()),
    ("drift_changed_at", sa.DateTime(timezone=True)),
    ("updated_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("threshold_scopes") as batch:
        for name, column_type in SCOPE_COLUMNS:
            batch.add_column(sa.Column(name, column_type, nullable=True))
        batch.add_column(
            sa.Column("drift_state", sa.String(8), nullable=False, server_default="ok")
        )
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("threshold_window", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("queries") as batch:
        batch.drop_column("threshold_window")
    with op.batch_alter_table("threshold_scopes") as batch:
        batch.drop_column("drift_state")
        for name, _ in reversed(SCOPE_COLUMNS):
            batch.drop_column(name)
