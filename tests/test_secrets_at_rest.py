"""Webhook secrets at rest: encrypted in the database with a key list that rotates without
downtime, a migration that encrypts what was stored before, private SQLite files, and secret
rotations that never drop a secret inside its grace period."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.db import database_url, session_scope
from services.encryption import decrypt_text, encrypt_text, use_keys
from services.migrate import alembic_config
from services.models import WebhookEndpoint
from services.settings import Settings, get_settings
from services.webhooks.secret_keys import reencrypt_webhook_secrets
from services.webhooks.signing import live_secrets, rotate_secret
from tests.conftest import ADMIN_POSTGRES_URL, SECRETS_KEY, TenantApi
from tests.scripted_tgi import ScriptedTGI
from tests.test_webhooks import add_endpoint, finish_a_query
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def rotate(tenant: TenantApi, endpoint_id: str) -> dict[str, Any]:
    rotated = tenant.client.post(
        f"/v1/webhooks/{endpoint_id}/secret/rotate", headers=tenant.headers
    )
    assert rotated.status_code == 200, rotated.text
    body: dict[str, Any] = rotated.json()
    return body


def stored(table: str, row_id: uuid.UUID) -> dict[str, Any]:
    with session_scope() as session:
        row = session.execute(
            text(f"SELECT webhook_secret, webhook_previous_secrets FROM {table} WHERE id = :id"),  # noqa: S608 - a fixed table name
            {"id": row_id},
        ).one()
    return dict(row._mapping)


@pytest.mark.usefixtures("worker")
def test_secrets_are_stored_encrypted_and_deliveries_verify_with_every_secret_in_its_grace(
    make_tenant: Callable[..., TenantApi],
    receiver: WebhookReceiver,
    small_tgi: ScriptedTGI,
    unique: Callable[[str], str],
) -> None:
    tenant = make_tenant()
    path = f"/hooks/{uuid.uuid4().hex[:8]}"
    endpoint = add_endpoint(tenant, receiver.url + path)
    first = endpoint["secret"]
    second = rotate(tenant, endpoint["id"])["secret"]
    third = rotate(tenant, endpoint["id"])["secret"]  # a second rotation within the grace
    callback = tenant.client.get("/v1/webhooks/callback-secret", headers=tenant.headers).json()

    raw_endpoint = stored("webhook_endpoints", uuid.UUID(endpoint["id"]))
    raw_tenant = stored("tenants", tenant.tenant_id)
    for raw in (raw_endpoint["webhook_secret"], raw_endpoint["webhook_previous_secrets"],
                raw_tenant["webhook_secret"]):  # fmt: skip
        assert "whsec_" not in raw
        for secret in (first, second, third, callback["secret"]):
            assert secret.removeprefix("whsec_") not in raw
    assert decrypt_text(raw_endpoint["webhook_secret"]) == third
    assert decrypt_text(raw_tenant["webhook_secret"]) == callback["secret"]

    finish_a_query(tenant, small_tgi, unique("Still signed"))
    [delivery] = receiver.wait_for(path)
    assert len(delivery.headers["webhook-signature"].split(" ")) == 3
    for secret in (first, second, third):  # a receiver still on the first secret verifies
        assert delivery.verified(secret)["type"] == "query.succeeded"


def test_expired_secrets_stop_signing_and_the_list_is_bounded() -> None:
    holder = WebhookEndpoint(webhook_secret="whsec_" + "A" * 32, webhook_previous_secrets=[])
    rotate_secret(holder, grace_s=0)
    assert live_secrets(holder, now=datetime.now(UTC)) == [holder.webhook_secret]
    for _ in range(15):
        rotate_secret(holder, grace_s=3600)
    live = live_secrets(holder, now=datetime.now(UTC))
    assert len(live) == 11  # the current secret and the ten most recent ones
    assert live[0] == holder.webhook_secret
    assert live_secrets(holder, now=datetime.now(UTC) + timedelta(hours=2)) == [live[0]]


def test_a_new_key_first_in_the_list_reads_old_rows_and_migrate_moves_them_to_it(
    make_tenant: Callable[..., TenantApi], receiver: WebhookReceiver
) -> None:
    tenant = make_tenant()
    endpoint = add_endpoint(tenant, receiver.url + "/rotated-key")
    endpoint_id = uuid.UUID(endpoint["id"])
    new_key = Fernet.generate_key().decode()
    settings = get_settings()
    try:
        use_keys(with_keys(settings, new_key, SECRETS_KEY))
        with session_scope() as session:
            assert (
                session.get_one(WebhookEndpoint, endpoint_id).webhook_secret == (endpoint["secret"])
            )
            assert reencrypt_webhook_secrets(session) >= 2
        token = stored("webhook_endpoints", endpoint_id)["webhook_secret"]
        assert Fernet(new_key).decrypt(token.encode()).decode() == endpoint["secret"]
    finally:
        with session_scope() as session:  # leave the rows under the session's key
            use_keys(with_keys(settings, SECRETS_KEY, new_key))
            reencrypt_webhook_secrets(session)
        use_keys(settings)
    response = tenant.client.get(f"/v1/webhooks/{endpoint['id']}/secret", headers=tenant.headers)
    assert response.json()["secret"] == endpoint["secret"]


def with_keys(settings: Settings, *keys: str) -> Settings:
    return settings.model_copy(update={"secrets_keys": [SecretStr(key) for key in keys]})


def test_distributed_settings_without_keys_stop_at_start_naming_the_variable() -> None:
    with pytest.raises(ValidationError, match="TWOTIER_SECRETS_KEYS"):
        Settings(broker_url="redis://127.0.0.1:6379/0", secrets_keys=[])
    with pytest.raises(ValidationError, match="TWOTIER_SECRETS_KEYS"):
        Settings(secrets_keys="not-a-key")  # type: ignore[arg-type]


def test_the_embedded_default_keeps_its_own_key_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    embedded = Settings(
        home=tmp_path, broker_url=None, secrets_keys=[], database_url=f"sqlite:///{tmp_path}/t.db"
    )
    token = encrypt_text("whsec_abc", embedded)
    key_file = tmp_path / "secrets-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert Fernet(key).decrypt(token.encode()) == b"whsec_abc"
    assert decrypt_text(encrypt_text("again", embedded), embedded) == "again"
    assert key_file.read_text().strip() == key  # generated once, then kept


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database of its own, migrated by nothing yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrated.db"
        return
    name = f"twotier_migration_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_POSTGRES_URL).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(ADMIN_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_encrypts_stored_secrets_and_the_downgrade_restores_them(
    empty_database: str,
) -> None:
    url = empty_database
    config = alembic_config(url)
    command.upgrade(config, "0008")
    engine = sa.create_engine(database_url(url))
    tenant_id, endpoint_id = uuid.uuid4().hex, uuid.uuid4().hex
    expires = datetime.now(UTC) + timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO tenants (id, name, target_escalation_rate, disabled, created_at, "
                 "budget_period, webhook_endpoint_count, webhook_secret) VALUES (:id, 'm', 0.3, "
                 ":no, :now, 'none', 1, 'whsec_tenant')"),
            {"id": tenant_id, "now": datetime.now(UTC), "no": False},
        )  # fmt: skip
        connection.execute(
            text("INSERT INTO webhook_endpoints (id, tenant_id, url, thin_payload, "
                 "webhook_secret, webhook_previous_secret, webhook_previous_secret_expires_at, "
                 "created_at, updated_at) VALUES (:id, :tenant, 'https://example.com', :no, "
                 "'whsec_current', 'whsec_previous', :expires, :now, :now)"),
            {"id": endpoint_id, "tenant": tenant_id, "expires": expires,
             "now": datetime.now(UTC), "no": False},
        )  # fmt: skip
    command.upgrade(config, "0009")
    with engine.connect() as connection:
        secret, previous = connection.execute(
            text("SELECT webhook_secret, webhook_previous_secrets FROM webhook_endpoints")
        ).one()
        tenant_secret = connection.execute(text("SELECT webhook_secret FROM tenants")).scalar()
    assert decrypt_text(secret) == "whsec_current"
    assert "whsec_previous" in decrypt_text(previous)
    assert "whsec_" not in secret + previous + tenant_secret
    assert decrypt_text(tenant_secret) == "whsec_tenant"

    command.downgrade(config, "0008")
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT webhook_secret, webhook_previous_secret FROM webhook_endpoints")
        ).one()
        tenant_secret = connection.execute(text("SELECT webhook_secret FROM tenants")).scalar()
    assert tuple(row) == ("whsec_current", "whsec_previous")
    assert tenant_secret == "whsec_tenant"
    engine.dispose()


def test_the_sqlite_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    previous_umask = os.umask(0o022)  # the usual umask would give 0644
    try:
        url = f"sqlite:///{tmp_path}/twotier.db"
        command.upgrade(alembic_config(url), "head")
        engine = sa.create_engine(database_url(url))
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            connection.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            connection.commit()
            files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
        engine.dispose()
    finally:
        os.umask(previous_umask)
    assert files == {"twotier.db": 0o600, "twotier.db-wal": 0o600, "twotier.db-shm": 0o600}
