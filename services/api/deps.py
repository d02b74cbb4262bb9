"""Dependencies shared by the routes: one session per request, the calling tenant."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services import dispatch
from services.db import session_factory
from services.dispatch import Dispatcher
from services.errors import AdminOnly, InvalidApiKey
from services.models import Tenant
from services.settings import Settings, get_settings
from services.tenants import authenticate

log = structlog.get_logger(__name__)
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")


def get_session(request: Request) -> Iterator[Session]:
    """A session that rolls back unless the route commits; what it records for workers goes
    through the app's dispatcher."""
    with session_factory()() as session:
        dispatch.use_in_session(session, request.app.state.dispatcher)
        yield session


def get_tenant(
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    if credentials is None:
        raise InvalidApiKey("send the API key as `Authorization: Bearer <api key>`")
    tenant = authenticate(session, credentials.credentials)
    structlog.contextvars.bind_contextvars(tenant_id=str(tenant.id))
    return tenant


def require_admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    if settings.admin_token is None:
        raise AdminOnly("the admin API is off: set TWOTIER_ADMIN_TOKEN to turn it on")
    expected = settings.admin_token.get_secret_value().encode()
    given = (credentials.credentials if credentials else "").encode()
    if not hmac.compare_digest(expected, given):
        log.info("admin_token_refused", sent=credentials is not None)
        raise AdminOnly("send the admin token as `Authorization: Bearer <admin token>`")


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[Tenant, Depends(get_tenant)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
AdminDep = Depends(require_admin)
