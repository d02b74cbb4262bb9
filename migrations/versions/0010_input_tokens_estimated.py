"""Mark ledger rows whose input tokens are an estimate (the server reported no count).

Rows written before this revision are marked False: their counts came from the server, though
on TGI 3.x without prefill log-probs they may be 0.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "model_calls",
        sa.Column(
            "input_tokens_estimated", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
    )


def downgrade() -> None:
    op.drop_column("model_calls", "input_tokens_estimated")
