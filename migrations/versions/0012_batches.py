"""Batches in OpenAI's Batch API shape: files (their bytes in the row), batches, a batch's
requests (one per input line), and the batch a query answers a request of.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_STATUSES = (
    "'validating', 'in_progress', 'finalizing', 'completed', 'failed', "
    "'cancelling', 'cancelled', 'expired'"
)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("purpose IN ('batch', 'batch_output')", name="ck_files_purpose"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_files_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
    )
    op.create_index("ix_files_tenant_id_created_at", "files", ["tenant_id", "created_at", "id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_file_id", sa.Uuid(), nullable=False),
        sa.Column("output_file_id", sa.Uuid(), nullable=True),
        sa.Column("error_file_id", sa.Uuid(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("total_count", sa.Integer(), nullable=True),
        sa.Column("completed_count", sa.Integer(), nullable=True),
        sa.Column("failed_count", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("in_progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finalizing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelling_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"status IN ({BATCH_STATUSES})", name="ck_batches_status"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_batches_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_tenant_id_created_at", "batches", ["tenant_id", "created_at", "id"])
    op.create_index("ix_batches_status_created_at", "batches", ["status", "created_at"])
    with op.batch_alter_table("queries") as batch:
        batch.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_queries_batch_id_batches", "batches", ["batch_id"], ["id"])
        batch.create_index("ix_queries_batch_id_status", ["batch_id", "status"])
    op.create_table(
        "batch_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=True),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("query_id", sa.Uuid(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.String(2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_batch_requests_batch_id_batches"
        ),
        sa.ForeignKeyConstraint(
            ["query_id"], ["queries.id"], name="fk_batch_requests_query_id_queries"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_requests"),
        sa.UniqueConstraint("batch_id", "line", name="uq_batch_requests_batch_id"),
        sa.UniqueConstraint("query_id", name="uq_batch_requests_query_id"),
    )
    op.create_index(
        "ix_batch_requests_batch_id_waiting",
        "batch_requests",
        ["batch_id", "query_id", "error_code", "line"],
    )


def downgrade() -> None:
    op.drop_table("batch_requests")
    with op.batch_alter_table("queries") as batch:
        batch.drop_index("ix_queries_batch_id_status")
        batch.drop_constraint("fk_queries_batch_id_batches", type_="foreignkey")
        batch.drop_column("batch_id")
    op.drop_table("batches")
    op.drop_table("files")
