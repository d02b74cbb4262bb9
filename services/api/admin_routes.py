"""The admin API (``Authorization: Bearer <TWOTIER_ADMIN_TOKEN>``): tenants, keys, budgets."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services import tenants
from services.accounting import settings_price
from services.api.deps import AdminDep, DatabaseDep, SettingsDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.fields import NamingText, StoredAmount, StoredCount
from services.api.schemas import ErrorBody, Money, RequestBody
from services.errors import NotFound
from services.models import ApiKey, ModelPrice, Tenant, utcnow

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep],
                   responses=ERROR_RESPONSES)  # fmt: skip

NO_TENANT: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such tenant (or API key of that tenant)."}
}
NO_MODEL: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No admin price for this model, or no such path."}
}
# The ledger's and price table's model column; a model name is printable text.
ModelName = Annotated[str, Path(max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class TenantCreate(RequestBody):
    name: NamingText = Field(min_length=1, max_length=200)
    target_escalation_rate: float = Field(default=0.3, ge=0, le=1)


class TenantUpdate(RequestBody):
    """Only the fields sent change; send null to remove a budget limit."""

    target_escalation_rate: float | None = Field(default=None, ge=0, le=1)
    disabled: bool | None = None
    budget_period: Literal["none", "daily", "monthly"] | None = None
    budget_hard_limit: StoredAmount | None = None
    budget_soft_limit: StoredAmount | None = None
    budget_per_query: StoredAmount | None = Field(
        default=None,
        description="Average budget per query B: escalate at p(B) = (B - c_s) / c_l from the "
        "tenant's measured average costs instead of at the target rate; null to stop.",
    )
    rate_limit_per_minute: StoredCount | None = None
    max_concurrent_queries: StoredCount | None = Field(
        default=None, description="Most unfinished queries at once; null for no limit."
    )


class TenantView(BaseModel):
    id: uuid.UUID
    name: str
    target_escalation_rate: float
    disabled: bool
    budget_period: str
    budget_hard_limit: Money | None
    budget_soft_limit: Money | None
    budget_per_query: Money | None
    rate_limit_per_minute: int | None
    max_concurrent_queries: int | None
    created_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantView:
        return cls.model_validate(tenant, from_attributes=True)


class KeyView(BaseModel):
    id: uuid.UUID
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        return cls.model_validate(key, from_attributes=True)


class NewKeyView(KeyView):
    api_key: str = Field(description="Shown only now: only its hash is stored.")


class NewTenantView(BaseModel):
    tenant: TenantView
    api_key: str = Field(description="Shown only now: only its hash is stored.")


NAME_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "A tenant with this name exists."}
}


@router.post("/tenants", status_code=status.HTTP_201_CREATED, responses=NAME_TAKEN)
async def create_tenant(body: TenantCreate, database: DatabaseDep) -> NewTenantView:
    def create(session: Session) -> NewTenantView:
        created = tenants.create_tenant(
            session, name=body.name, target_escalation_rate=body.target_escalation_rate
        )
        session.commit()
        return NewTenantView(tenant=TenantView.of(created.tenant), api_key=created.api_key)

    return await database.run(create)


@router.get("/tenants")
async def list_tenants(database: DatabaseDep) -> list[TenantView]:
    return await database.run(
        lambda session: [
            TenantView.of(t) for t in session.scalars(select(Tenant).order_by(Tenant.name))
        ]
    )


@router.get("/tenants/{tenant_id}", responses=NO_TENANT)
async def get_tenant(tenant_id: uuid.UUID, database: DatabaseDep) -> TenantView:
    return await database.run(
        lambda session: TenantView.of(tenants.tenant_by_id(session, tenant_id))
    )


@router.patch("/tenants/{tenant_id}", responses=NO_TENANT)
async def update_tenant(
    tenant_id: uuid.UUID, body: TenantUpdate, database: DatabaseDep
) -> TenantView:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)

    def update(session: Session) -> TenantView:
        tenant = tenants.update_tenant(session, tenant_id=tenant_id, changes=changes)
        session.commit()
        return TenantView.of(tenant)

    return await database.run(update)


@router.post("/tenants/{tenant_id}/keys", status_code=status.HTTP_201_CREATED, responses=NO_TENANT)
async def issue_key(tenant_id: uuid.UUID, database: DatabaseDep) -> NewKeyView:
    def issue(session: Session) -> NewKeyView:
        issued = tenants.issue_api_key(session, tenant=tenants.tenant_by_id(session, tenant_id))
        session.commit()
        return NewKeyView(**KeyView.of(issued.row).model_dump(), api_key=issued.raw)

    return await database.run(issue)


@router.get("/tenants/{tenant_id}/keys", responses=NO_TENANT)
async def list_keys(tenant_id: uuid.UUID, database: DatabaseDep) -> list[KeyView]:
    return await database.run(
        lambda session: [KeyView.of(key) for key in tenants.list_keys(session, tenant_id=tenant_id)]
    )


@router.delete("/tenants/{tenant_id}/keys/{key_id}", responses=NO_TENANT)
async def revoke_key(tenant_id: uuid.UUID, key_id: uuid.UUID, database: DatabaseDep) -> KeyView:
    def revoke(session: Session) -> KeyView:
        key = tenants.revoke_key(session, tenant_id=tenant_id, key_id=key_id)
        session.commit()
        return KeyView.of(key)

    return await database.run(revoke)


class PriceSet(RequestBody):
    price_input_per_mtok: StoredAmount = Field(description="Price of 1M input tokens.")
    price_output_per_mtok: StoredAmount = Field(description="Price of 1M output tokens.")


class PriceView(BaseModel):
    model: str
    price_input_per_mtok: Money
    price_output_per_mtok: Money
    source: Literal["admin", "settings"]


@router.get("/prices")
async def list_prices(database: DatabaseDep, settings: SettingsDep) -> list[PriceView]:
    """The price of every model the tiers name, and of any other model priced here."""
    views = {}
    for tier in (settings.small, settings.large):
        price = settings_price(tier)
        views[tier.model] = PriceView(model=tier.model, source="settings",
                                      price_input_per_mtok=price.input_per_mtok,
                                      price_output_per_mtok=price.output_per_mtok)  # fmt: skip
    for row in await database.run(lambda session: list(session.scalars(select(ModelPrice)))):
        views[row.model] = PriceView(model=row.model, source="admin",
                                     price_input_per_mtok=row.price_input_per_mtok,
                                     price_output_per_mtok=row.price_output_per_mtok)  # fmt: skip
    return [views[model] for model in sorted(views)]


@router.put("/prices/{model:path}", responses=NO_MODEL)
async def set_price(model: ModelName, body: PriceSet, database: DatabaseDep) -> PriceView:
    """Price a model's calls from now on (calls already in the ledger keep their cost)."""

    def store(session: Session) -> PriceView:
        row = session.get(ModelPrice, model, with_for_update=True) or ModelPrice(model=model)
        row.price_input_per_mtok = body.price_input_per_mtok
        row.price_output_per_mtok = body.price_output_per_mtok
        row.updated_at = utcnow()
        session.add(row)
        session.commit()
        return PriceView(model=model, source="admin",
                         price_input_per_mtok=row.price_input_per_mtok,
                         price_output_per_mtok=row.price_output_per_mtok)  # fmt: skip

    return await database.run(store)


@router.delete("/prices/{model:path}", status_code=status.HTTP_204_NO_CONTENT, responses=NO_MODEL)
async def clear_price(model: ModelName, database: DatabaseDep) -> None:
    """Go back to the tier's price settings for this model."""

    def clear(session: Session) -> None:
        row = session.get(ModelPrice, model)
        if row is None:
            raise NotFound(f"no admin price for {model}")
        session.delete(row)
        session.commit()

    await database.run(clear)
