"""Engine and session factory: one engine per process, built on first use from the database
the process's entry point opened (``open_database``: the API's app, a worker's start, a CLI
command), never from settings read here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from services.encryption import use_keys
from services.lazy import built_once
from services.settings import Settings

log = structlog.get_logger(__name__)

ModelT = TypeVar("ModelT")


@dataclass(frozen=True)
class PoolSize:
    """Connections a process keeps open (``pool_size``) and opens beyond them at peaks."""

    pool_size: int
    max_overflow: int


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    pool: PoolSize


_opened: DatabaseConfig | None = None


class DatabaseNotOpened(RuntimeError):
    """A session was asked for before the process's entry point opened its database."""


def open_database(settings: Settings, *, pool: PoolSize | None = None) -> None:
    """The database this process works on, and the keys of its encrypted columns: entry points
    call this at start. The engine is built on first use; opening another database (a test, a
    benchmark's throwaway one) makes the next use build a new engine."""
    global _opened  # noqa: PLW0603 - one per process, set by its entry point
    use_keys(settings)
    size = pool or PoolSize(pool_size=settings.database_pool_size, max_overflow=10)
    config = DatabaseConfig(url=settings.database_url, pool=size)
    if config != _opened:
        _opened = config
        forget_engines()


@built_once
def get_engine() -> Engine:
    if _opened is None:
        raise DatabaseNotOpened(
            "no database opened: the process's entry point calls services.db.open_database"
        )
    url = database_url(_opened.url)
    size = _opened.pool
    pool = {
        "pool_size": size.pool_size,
        "max_overflow": size.max_overflow,
        # A checkout that waits this long raises (the api answers 503, a worker's task fails
        # and the sweep sends it again): connections are held only while statements run.
        "pool_timeout": 30,
    }
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **pool)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def database_url(raw_url: str) -> URL:
    """The parsed URL; for an SQLite file, its folder is created first, and the file too,
    readable by its owner only (see ``private_sqlite_files``)."""
    url = make_url(raw_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        private_sqlite_files(path)
    return url


def private_sqlite_files(path: Path) -> None:
    """Create the database file with mode 0600 and narrow any existing one (and its -wal,
    -shm and -journal) to it: it holds prompts, answers and API key hashes. SQLite creates
    its -wal and -shm files with the database file's mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # an empty file is a new database
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin) instead of the driver's lazy BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # SQLite has no SELECT ... FOR UPDATE: taking the write lock when the transaction begins
    # serialises the read-then-write transactions that rely on row locks under PostgreSQL.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@built_once
def session_factory() -> sessionmaker[Session]:
    factory = sessionmaker(bind=get_engine(), expire_on_commit=False)
    event.listen(factory, "after_commit", _run_after_commit)
    event.listen(factory, "after_rollback", _forget_after_commit)
    return factory


_AFTER_COMMIT = "twotier.after_commit"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed; never if it rolls back.

    For messages to workers about rows this transaction writes: sent before the commit, a
    worker could look for the rows before they exist.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        try:
            callback()
        except Exception:  # the rows are committed; the recovery sweep sends what failed here
            log.exception("after_commit_failed")


def _forget_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    session = session_factory()()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def database_is_reachable() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
        return False
    return True


def forget_engines() -> None:
    """Drop this process's engines without closing the sockets it inherited from a parent
    (the long polls' listener, services.completion, has its own connection to stop)."""
    for factory in (session_factory, get_engine):
        factory.cache_clear()


def locked_row(session: Session, model: type[ModelT], **key: Any) -> ModelT:
    """The row of ``model`` with these column values, created if missing, locked FOR UPDATE
    until the transaction ends (concurrent creators meet on the unique key)."""
    locked = (
        select(model).filter_by(**key).with_for_update().execution_options(populate_existing=True)
    )
    row = session.scalars(locked).one_or_none()
    if row is not None:
        return row
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(model).values(**key).on_conflict_do_nothing())
    return session.scalars(locked).one()
