"""Webhook secrets encrypted at rest, and every secret replaced within a grace period kept.

``webhook_secret`` of tenants and endpoints becomes a Fernet token (services/encryption.py,
keys from TWOTIER_SECRETS_KEYS). The single ``webhook_previous_secret`` becomes
``webhook_previous_secrets``, an encrypted list of ``{secret, expires_at}``: a second rotation
within the grace period no longer drops the first secret. The downgrade decrypts, keeping the
previous secret that expires last.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from services.encryption import decrypt_text, encrypt_text

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tenants", "webhook_endpoints")


def upgrade() -> None:
    connection = op.get_bind()
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.alter_column("webhook_secret", existing_type=sa.String(100), type_=sa.Text())
            batch.add_column(sa.Column("webhook_previous_secrets", sa.Text(), nullable=True))
        table = sa.table(
            name,
            sa.column("id", sa.Uuid),
            sa.column("webhook_secret", sa.Text),
            sa.column("webhook_previous_secret", sa.String),
            sa.column("webhook_previous_secret_expires_at", sa.DateTime(timezone=True)),
            sa.column("webhook_previous_secrets", sa.Text),
        )
        rows = connection.execute(
            sa.select(
                table.c.id,
                table.c.webhook_secret,
                table.c.webhook_previous_secret,
                table.c.webhook_previous_secret_expires_at,
            )
        ).all()
        for row_id, secret, previous, expires in rows:
            previous_list = None
            if previous is not None and expires is not None:
                expires_at = _utc(expires).isoformat()
                previous_list = encrypt_text(
                    json.dumps([{"secret": previous, "expires_at": expires_at}])
                )
            connection.execute(
                table.update()
                .where(table.c.id == row_id)
                .values(webhook_secret=encrypt_text(secret), webhook_previous_secrets=previous_list)
            )
        with op.batch_alter_table(name) as batch:
            batch.drop_column("webhook_previous_secret")


def downgrade() -> None:
    connection = op.get_bind()
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("webhook_previous_secret", sa.String(100), nullable=True))
        table = sa.table(
            name,
            sa.column("id", sa.Uuid),
            sa.column("webhook_secret", sa.Text),
            sa.column("webhook_previous_secret", sa.String),
            sa.column("webhook_previous_secret_expires_at", sa.DateTime(timezone=True)),
            sa.column("webhook_previous_secrets", sa.Text),
        )
        rows = connection.execute(
            sa.select(table.c.id, table.c.webhook_secret, table.c.webhook_previous_secrets)
        ).all()
        for row_id, token, previous_token in rows:
            previous = json.loads(decrypt_text(previous_token)) if previous_token else []
            last = max(previous, key=lambda entry: entry["expires_at"], default=None)
            connection.execute(
                table.update()
                .where(table.c.id == row_id)
                .values(
                    webhook_secret=decrypt_text(token),
                    webhook_previous_secret=None if last is None else last["secret"],
                    webhook_previous_secret_expires_at=(
                        None if last is None else datetime.fromisoformat(last["expires_at"])
                    ),
                )
            )
        with op.batch_alter_table(name) as batch:
            batch.drop_column("webhook_previous_secrets")
            batch.alter_column("webhook_secret", existing_type=sa.Text(), type_=sa.String(100))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
