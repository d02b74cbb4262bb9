"""Tenants, API keys, queries, margin history and the cost ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("target_escalation_rate", sa.Float(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_api_keys_tenant_id_tenants"
        ),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "threshold_scopes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("model_pair", sa.String(400), nullable=False),
        sa.Column("task_label", sa.String(100), nullable=False),
        sa.Column("margin_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_threshold_scopes"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_threshold_scopes_tenant_id_tenants"
        ),
        sa.UniqueConstraint(
            "tenant_id", "model_pair", "task_label", name="uq_threshold_scopes_tenant_id"
        ),
    )
    op.create_table(
        "queries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("task_label", sa.String(100), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("answered_by", sa.String(16), nullable=True),
        sa.Column("small_answer", sa.Text(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("scope_id", sa.Integer(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("threshold_version", sa.Integer(), nullable=True),
        sa.Column("target_escalation_rate", sa.Float(), nullable=True),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("small_started_at", TIMESTAMP, nullable=True),
        sa.Column("small_finished_at", TIMESTAMP, nullable=True),
        sa.Column("escalated_at", TIMESTAMP, nullable=True),
        sa.Column("large_started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_queries"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_queries_tenant_id_tenants"),
        sa.ForeignKeyConstraint(
            ["scope_id"], ["threshold_scopes.id"], name="fk_queries_scope_id_threshold_scopes"
        ),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_queries_tenant_id"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'escalated', 'succeeded', 'failed', 'cancelled')",
            name="ck_queries_status",
        ),
    )
    op.create_index("ix_queries_tenant_id_created_at", "queries", ["tenant_id", "created_at", "id"])
    op.create_index("ix_queries_status_updated_at", "queries", ["status", "updated_at"])
    op.create_table(
        "margin_history",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("scope_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.Uuid(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_margin_history"),
        sa.ForeignKeyConstraint(
            ["scope_id"],
            ["threshold_scopes.id"],
            name="fk_margin_history_scope_id_threshold_scopes",
        ),
        sa.ForeignKeyConstraint(
            ["query_id"], ["queries.id"], name="fk_margin_history_query_id_queries"
        ),
        sa.UniqueConstraint("scope_id", "seq", name="uq_margin_history_scope_id"),
        sa.UniqueConstraint("query_id", name="uq_margin_history_query_id"),
    )
    op.create_index("ix_margin_history_scope_id_margin", "margin_history", ["scope_id", "margin"])
    op.create_table(
        "model_calls",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("query_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Numeric(20, 10), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_calls"),
        sa.ForeignKeyConstraint(
            ["query_id"], ["queries.id"], name="fk_model_calls_query_id_queries"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_model_calls_tenant_id_tenants"
        ),
        sa.UniqueConstraint("query_id", "tier", name="uq_model_calls_query_id"),
    )
    op.create_index(
        "ix_model_calls_tenant_id_created_at", "model_calls", ["tenant_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("model_calls")
    op.drop_table("margin_history")
    op.drop_table("queries")
    op.drop_table("threshold_scopes")
    op.drop_table("api_keys")
    op.drop_table("tenants")
