"""Tenants and their API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.budgets import PERIODS
from services.errors import (
    InvalidApiKey,
    InvalidRequest,
    NotFound,
    TenantDisabled,
    TenantNameTaken,
)
from services.models import ApiKey, Tenant, utcnow

log = structlog.get_logger(__name__)

KEY_SCHEME = "tt"
# tt_<16 hex digits>_<token_urlsafe(32)>; anything else is refused before the database is asked.
KEY_SHAPE = re.compile(rf"{KEY_SCHEME}_(?P<prefix>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
# Compared with when no key has the prefix; no key hashes to it.
UNKNOWN_KEY_HASH = "0" * 64


@dataclass(frozen=True)
class NewTenant:
    tenant: Tenant
    api_key: str


def hash_key(raw_key: str) -> str:
    # Keys carry 256 random bits, so a plain SHA-256 resists brute force; no slow KDF needed.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_tenant(session: Session, *, name: str, target_escalation_rate: float) -> NewTenant:
    if not name.strip():
        raise InvalidRequest("tenant name must not be empty")
    if not 0.0 <= target_escalation_rate <= 1.0:
        raise InvalidRequest("target escalation rate must be between 0 and 1")
    taken = TenantNameTaken(f"a tenant named {name!r} already exists")
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise taken
    tenant = Tenant(name=name, target_escalation_rate=target_escalation_rate, disabled=False)
    try:
        with session.begin_nested():  # a concurrent create of the same name loses here
            session.add(tenant)
            session.flush()
    except IntegrityError as exc:
        raise taken from exc
    return NewTenant(tenant=tenant, api_key=issue_api_key(session, tenant=tenant).raw)


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    raw: str  # shown once; only its hash is stored


def issue_api_key(session: Session, *, tenant: Tenant) -> IssuedKey:
    prefix = secrets.token_hex(8)
    raw_key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(raw_key))
    session.add(row)
    session.flush()
    log.info("api_key_issued", tenant_id=str(tenant.id), key_prefix=prefix)
    return IssuedKey(row=row, raw=raw_key)


def key_matches(raw_key: str, key_hash: str) -> bool:
    """Whether ``raw_key`` hashes to ``key_hash``, compared in constant time so that the
    time taken says nothing of how much of the hash matched."""
    return hmac.compare_digest(hash_key(raw_key).encode(), key_hash.encode())


def authenticate(session: Session, raw_key: str) -> Tenant:
    """The tenant that owns ``raw_key``. The key's public prefix finds the row; its secret
    part is checked by ``key_matches``, also when no row was found, so an unknown prefix
    costs the same hashing and comparison as a known one."""
    shape = KEY_SHAPE.fullmatch(raw_key)
    if shape is None:
        log.info("api_key_refused", reason="malformed")
        raise InvalidApiKey("the API key is malformed; expected tt_<prefix>_<secret>")
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == shape["prefix"], ApiKey.revoked_at.is_(None))
    ).one_or_none()
    matches = key_matches(raw_key, row[0].key_hash if row else UNKNOWN_KEY_HASH)
    if row is None or not matches:
        # The prefix is the key's public half (it is listed in the admin API); never log more.
        log.info("api_key_refused", reason="unknown_or_revoked", key_prefix=shape["prefix"])
        raise InvalidApiKey("the API key is unknown or revoked")
    tenant: Tenant = row[1]
    if tenant.disabled:
        raise TenantDisabled("this tenant is disabled")
    return tenant


DEMO_TENANT = "local-demo"


def ensure_demo_tenant(session: Session, *, key_file: Path, target_escalation_rate: float) -> str:
    """The API key of the local demo tenant, kept in ``key_file`` (mode 0600) across starts."""
    if key_file.is_file():
        saved = key_file.read_text().strip()
        try:
            authenticate(session, saved)
        except (InvalidApiKey, TenantDisabled):
            pass  # revoked or from an older database: issue a fresh one below
        else:
            return saved
    tenant = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT))
    if tenant is None:
        raw_key = create_tenant(
            session, name=DEMO_TENANT, target_escalation_rate=target_escalation_rate
        ).api_key
    else:
        raw_key = issue_api_key(session, tenant=tenant).raw
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(raw_key + "\n")
    return raw_key


def set_budget(
    session: Session,
    *,
    name: str,
    period: str,
    hard_limit: Decimal | None,
    soft_limit: Decimal | None,
) -> Tenant:
    """Set a tenant's budget period and limits (None: no such limit)."""
    if period not in PERIODS:
        raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}")
    for limit in (hard_limit, soft_limit):
        if limit is not None and limit < 0:
            raise InvalidRequest("budget limits must not be negative")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name).with_for_update())
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    tenant.budget_period = period
    tenant.budget_hard_limit = hard_limit
    tenant.budget_soft_limit = soft_limit
    return tenant


def tenant_by_id(session: Session, tenant_id: uuid.UUID, *, lock: bool = False) -> Tenant:
    tenant = session.get(Tenant, tenant_id, with_for_update=lock, populate_existing=lock)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    return tenant


def update_tenant(session: Session, *, tenant_id: uuid.UUID, changes: dict[str, Any]) -> Tenant:
    """Apply the given settings; budgets go through the same checks as ``set_budget``."""
    tenant = tenant_by_id(session, tenant_id, lock=True)
    rate = changes.get("target_escalation_rate")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise InvalidRequest("target escalation rate must be between 0 and 1")
        tenant.target_escalation_rate = rate
    if changes.get("disabled") is not None:
        tenant.disabled = changes["disabled"]
    for limit in ("rate_limit_per_minute", "max_concurrent_queries"):
        if limit in changes:  # null removes the limit
            if changes[limit] is not None and changes[limit] < 1:
                raise InvalidRequest(f"{limit} must be at least 1")
            setattr(tenant, limit, changes[limit])
    if "budget_per_query" in changes:  # null returns the tenant to its target rate
        per_query = changes["budget_per_query"]
        if per_query is not None and per_query < 0:
            raise InvalidRequest("budget per query must not be negative")
        tenant.budget_per_query = per_query
    budget_keys = {"budget_period", "budget_hard_limit", "budget_soft_limit"}
    if budget_keys & changes.keys():
        set_budget(
            session,
            name=tenant.name,
            period=changes.get("budget_period") or tenant.budget_period,
            hard_limit=changes.get("budget_hard_limit", tenant.budget_hard_limit),
            soft_limit=changes.get("budget_soft_limit", tenant.budget_soft_limit),
        )
    return tenant


def list_keys(session: Session, *, tenant_id: uuid.UUID) -> list[ApiKey]:
    tenant_by_id(session, tenant_id)
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        )
    )


def revoke_key(session: Session, *, tenant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    """Revoked keys stop working on the next request; nothing needs restarting."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None or key.tenant_id != tenant_id:
        raise NotFound(f"no API key {key_id} for tenant {tenant_id}")
    key.revoked_at = key.revoked_at or utcnow()
    log.info("api_key_revoked", tenant_id=str(tenant_id), key_prefix=key.prefix)
    return key
