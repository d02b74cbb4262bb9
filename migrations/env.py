"""Alembic environment: the URL comes from the settings, the target from the ORM metadata, and
the keys that migrations encrypting secrets use from the settings too."""

from alembic import context
from sqlalchemy import create_engine, pool

from services.db import database_url
from services.encryption import use_keys
from services.models import Base
from services.settings import get_settings


def run_migrations() -> None:
    settings = get_settings()
    url = context.config.attributes.get("database_url") or settings.database_url
    use_keys(settings)
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(database_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
