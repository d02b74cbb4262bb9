"""A PostgreSQL database made for one benchmark run and dropped after it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from services.completion import waiters
from services.db import get_engine, open_database
from services.settings import get_settings


@contextmanager
def throwaway_database(admin_url: str) -> Iterator[None]:
    """Create a database beside ``admin_url``'s, point ``TWOTIER_DATABASE_URL`` at it, and
    drop it (and this process's connections to it) at the end. A database of its own needs
    no lasting key for its secrets at rest: unless one is set, a new one is made."""
    name = f"twotier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    os.environ["TWOTIER_DATABASE_URL"] = url.render_as_string(hide_password=False)
    os.environ.setdefault("TWOTIER_SECRETS_KEYS", Fernet.generate_key().decode())
    get_settings.cache_clear()
    open_database(get_settings())
    waiters.stop_listening()
    try:
        yield
    finally:
        get_engine().dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
