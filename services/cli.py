"""The ``twotier`` command."""

from __future__ import annotations

import click

from services.settings import get_settings


@click.group()
def main() -> None:
    """twotier: a small model answers every query; unsure ones escalate to a large model."""


@main.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from services.migrate import upgrade_to_head  # noqa: PLC0415 - load Alembic only here

    upgrade_to_head()
    click.echo("database is at the latest migration")


@main.group()
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
    from services.db import session_scope  # noqa: PLC0415
    from services.errors import TwotierError  # noqa: PLC0415
    from services.tenants import create_tenant as create  # noqa: PLC0415

    rate = target_escalation_rate
    if rate is None:
        rate = get_settings().default_target_escalation_rate
    try:
        with session_scope() as session:
            created = create(session, name=name, target_escalation_rate=rate)
    except TwotierError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"tenant_id: {created.tenant.id}")
    click.echo(f"api_key:   {created.api_key}")
    click.echo("Keep the API key now: only its hash is stored.", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def api(host: str, port: int, workers: int) -> None:
    """Serve the REST API."""
    import uvicorn  # noqa: PLC0415

    uvicorn.run(
        "services.api.app:create_default_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=get_settings().log_level.lower(),
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="small,large,maintenance", show_default=True)
@click.option("--concurrency", "-c", default=None, type=int, help="Processes (default: cores).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker pool for the given queues."""
    from workers.app import app  # noqa: PLC0415

    argv = ["worker", "--queues", queues, "--loglevel", get_settings().log_level]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    app.worker_main([*argv, *celery_args])


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler of the periodic recovery sweep."""
    from workers.app import app  # noqa: PLC0415

    app.start(["beat", "--loglevel", get_settings().log_level, *celery_args])
