"""Dependencies shared by the routes: the calling tenant's database work, the admin token.

Every dependency here is ``async``: a sync dependency would run on a thread of its own, and a
session opened there would hold its connection while the request waited for the next thread.
The database work of a request (the key's check included) runs in the hops of
``RequestDatabase`` (services/api/database.py), each opening and closing its own session.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.api.database import RequestDatabase
from services.errors import AdminOnly, InvalidApiKey, Unauthenticated
from services.models import Tenant
from services.settings import Settings, get_settings
from services.tenants import authenticate

log = structlog.get_logger(__name__)
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
SEND_THE_KEY = "send the API key as `Authorization: Bearer <api key>`"

T = TypeVar("T")


async def current_settings() -> Settings:
    return get_settings()


async def request_database(request: Request) -> RequestDatabase:
    database: RequestDatabase = request.app.state.database
    return database


SettingsDep = Annotated[Settings, Depends(current_settings)]
DatabaseDep = Annotated[RequestDatabase, Depends(request_database)]


@dataclass(frozen=True)
class TenantCalls:
    """The calling tenant (authenticated in a hop of its own, before the body is looked at)
    and its database work."""

    database: RequestDatabase
    tenant: Tenant  # as read when the key was checked; each hop attaches it to its session

    async def run(self, work: Callable[[Session, Tenant], T]) -> T:
        def as_tenant(session: Session) -> T:
            return work(session, session.merge(self.tenant, load=False))

        return await self.database.run(as_tenant)


async def tenant_calls(
    request: Request,
    database: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TenantCalls:
    if "authorization" not in request.headers:
        raise Unauthenticated(SEND_THE_KEY)
    if credentials is None:  # a header that is no bearer token
        raise InvalidApiKey(SEND_THE_KEY)
    tenant = await database.run(lambda session: authenticate(session, credentials.credentials))
    structlog.contextvars.bind_contextvars(tenant_id=str(tenant.id))
    return TenantCalls(database=database, tenant=tenant)


async def require_admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    settings: SettingsDep,
) -> None:
    if settings.admin_token is None:
        raise AdminOnly("the admin API is off: set TWOTIER_ADMIN_TOKEN to turn it on")
    expected = settings.admin_token.get_secret_value().encode()
    given = (credentials.credentials if credentials else "").encode()
    if not hmac.compare_digest(expected, given):
        log.info("admin_token_refused", sent=credentials is not None)
        raise AdminOnly("send the admin token as `Authorization: Bearer <admin token>`")


TenantDep = Annotated[TenantCalls, Depends(tenant_calls)]
AdminDep = Depends(require_admin)
