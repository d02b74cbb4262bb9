"""``twotier migrate``, ``twotier tenants ...``, ``twotier models pull``: the database, the
tenants and the local model files."""

from __future__ import annotations

import click

from services.llm.local_extra import require_local_extra
from services.settings import get_settings


@click.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head), then encrypt every webhook secret
    with the first key of TWOTIER_SECRETS_KEYS (the last step of a key rotation)."""
    from services.db import open_database, session_scope  # noqa: PLC0415 - the ORM only here
    from services.migrate import upgrade_to_head  # noqa: PLC0415
    from services.webhooks.secret_keys import reencrypt_webhook_secrets  # noqa: PLC0415

    open_database(get_settings())
    upgrade_to_head()
    with session_scope() as session:
        rewritten = reencrypt_webhook_secrets(session)
    click.echo(f"database is at the latest migration; {rewritten} secret holders re-encrypted")


@click.group()
def tenants() -> None:
    """Manage tenants."""


@tenants.command("create")
@click.argument("name")
@click.option(
    "--target-escalation-rate",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Share of queries to escalate (default: TWOTIER_DEFAULT_TARGET_ESCALATION_RATE).",
)
def create_tenant(name: str, target_escalation_rate: float | None) -> None:
    """Create a tenant and print its first API key (shown only this once)."""
    from services.db import open_database, session_scope  # noqa: PLC0415
    from services.errors import TwotierError  # noqa: PLC0415
    from services.tenants import create_tenant as create  # noqa: PLC0415

    settings = get_settings()
    open_database(settings)
    rate = target_escalation_rate
    if rate is None:
        rate = settings.default_target_escalation_rate
    try:
        with session_scope() as session:
            created = create(session, name=name, target_escalation_rate=rate)
    except TwotierError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"tenant_id: {created.tenant.id}")
    click.echo(f"api_key:   {created.api_key}")
    click.echo("Keep the API key now: only its hash is stored.", err=True)


@tenants.command("budget")
@click.argument("name")
@click.option(
    "--period",
    type=click.Choice(["none", "daily", "monthly"]),
    default="monthly",
    show_default=True,
    help="Limits reset on this UTC boundary.",
)
@click.option("--hard", "hard_limit", default=None, help="Hard limit: submits beyond it get 402.")
@click.option("--soft", "soft_limit", default=None, help="Soft limit: an alert once per period.")
def set_tenant_budget(name: str, period: str, hard_limit: str | None,
                      soft_limit: str | None) -> None:  # fmt: skip
    """Set a tenant's budget (in the price table's currency); omit a limit to remove it."""
    from decimal import Decimal, InvalidOperation  # noqa: PLC0415

    from services.db import open_database, session_scope  # noqa: PLC0415
    from services.errors import TwotierError  # noqa: PLC0415
    from services.tenants import set_budget  # noqa: PLC0415

    open_database(get_settings())
    try:
        hard = Decimal(hard_limit) if hard_limit is not None else None
        soft = Decimal(soft_limit) if soft_limit is not None else None
    except InvalidOperation as exc:
        raise click.BadParameter("limits are decimal amounts, e.g. 25 or 0.50") from exc
    try:
        with session_scope() as session:
            set_budget(session, name=name, period=period, hard_limit=hard, soft_limit=soft)
    except TwotierError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{name}: {period} budget, hard {hard_limit or 'none'}, soft {soft_limit or 'none'}")


@click.group()
def models() -> None:
    """Manage local models."""


@models.command("pull")
def pull_models() -> None:
    """Download and convert the local models the settings name (run by `serve` when needed)."""
    require_local_extra("twotier models pull")
    from rich.console import Console  # noqa: PLC0415

    from services.llm.model_files import prepare_local_model  # noqa: PLC0415

    settings = get_settings()
    console = Console(stderr=True)
    specs = {
        tier.local_model for tier in (settings.small, settings.large) if tier.backend == "local"
    }
    for spec in specs or {None}:
        source = prepare_local_model(spec, cache_dir=settings.cache_dir, console=console)
        click.echo(f"{spec or 'bundled model'}: {source}")
