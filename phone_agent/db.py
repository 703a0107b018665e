"""The order database: URL, engine, migrations and demo data.

Production points `PHONE_AGENT_DATABASE_URL` at PostgreSQL (``postgresql+asyncpg://user@host/db``;
``postgresql://`` and ``postgres://`` are rewritten to asyncpg, and libpq's ``sslmode`` becomes
asyncpg's ``ssl``). Without it the agent uses an embedded SQLite file, ``./phone-agent.db`` relative
to the working directory (`DEFAULT_DATABASE_URL`), created, migrated and filled with demo orders on
first start by `prepare` (the demo data: `phone_agent.orders.demo`).

Migrations are Alembic revisions in `phone_agent/migrations`, configured here in code (no
``alembic.ini``) so they run from an installed wheel. The functions that touch the database accept a
URL or an existing `AsyncEngine`; given a URL they create and dispose their own engine. To write a
new revision after changing `phone_agent.orders.models` (from a source checkout)::

    python -c "from alembic import command; from phone_agent.db import alembic_config; \
command.revision(alembic_config('sqlite+aiosqlite:///./phone-agent.db'), 'what changed', \
autogenerate=True)"

then review the generated file: it must run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, exists, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from phone_agent.orders.demo import add_demo_data
from phone_agent.orders.models import Customer, Order

ENV_VAR = "PHONE_AGENT_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./phone-agent.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Serialises migrations and seeding between processes sharing one PostgreSQL database.
_PG_LOCK_KEY = 0x70686F6E65  # "phone"

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def database_url(settings_value: str | None) -> str:
    """The async SQLAlchemy URL to use: `settings_value` with its driver made async, or the
    embedded SQLite default when unset. Raises ValueError (naming the variable) for other drivers.
    """
    if settings_value is None or not settings_value.strip():
        return DEFAULT_DATABASE_URL
    try:
        url = make_url(settings_value.strip())
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"{ENV_VAR}: not a database URL ({exc})") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"{ENV_VAR}: unsupported driver {url.drivername!r}; "
            "use postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path.db"
        )
    url = url.set(drivername=driver)
    if driver == "postgresql+asyncpg" and "sslmode" in url.query:
        query = dict(url.query)
        query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    return url.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """`url` with its password masked, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str, *, connect_args: dict[str, Any] | None = None) -> AsyncEngine:
    """An async engine for `url`, read as `database_url` does. For SQLite, the file's directory is
    created if missing, foreign keys are enforced, and deleted rows are overwritten
    (``secure_delete``), so what `phone-agent forget` removes does not linger in free pages."""
    url = database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args=connect_args or {})

        @event.listens_for(engine.sync_engine, "connect")
        def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_async_engine(url, connect_args=connect_args or {}, pool_pre_ping=True)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def _engine(target: str | AsyncEngine) -> AsyncIterator[AsyncEngine]:
    if isinstance(target, AsyncEngine):
        yield target
        return
    engine = create_engine(target)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _locked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that holds the migration lock (PostgreSQL only; SQLite
    serialises writers itself)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield conn


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration, built in code: the bundled migrations and, optionally, a URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_sync(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(target: str | AsyncEngine) -> None:
    """Migrate the database to the newest revision (a no-op when it is already there)."""
    async with _engine(target) as engine, _locked(engine) as conn:
        await conn.run_sync(_upgrade_sync)


async def current_revision(target: str | AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with _engine(target) as engine, engine.connect() as conn:
        return await conn.run_sync(read)


async def _is_empty(conn: AsyncConnection) -> bool:
    has_rows = await conn.scalar(select(exists(select(Customer.id)) | exists(select(Order.id))))
    return not has_rows


async def seed(target: str | AsyncEngine) -> int:
    """Add the demo customers and orders that are missing (by phone and order number); returns
    how many orders were added. Idempotent. The schema must exist (`upgrade`)."""
    async with (
        _engine(target) as engine,
        _locked(engine) as conn,
        AsyncSession(bind=conn) as session,
    ):
        return await add_demo_data(session)


async def is_empty(target: str | AsyncEngine) -> bool:
    """Whether the database holds no customers and no orders."""
    async with _engine(target) as engine, engine.connect() as conn:
        return await _is_empty(conn)


async def prepare(target: str | AsyncEngine, *, demo_data: bool | None = None) -> None:
    """What the app runs at start: `upgrade`, then `seed` if the database is empty.

    `demo_data` None (the default) seeds only SQLite, the embedded database: an empty production
    PostgreSQL is never filled with demo customers unless asked (True, or `phone-agent db seed`).
    """
    async with _engine(target) as engine:
        await upgrade(engine)
        if demo_data is None:
            demo_data = engine.dialect.name == "sqlite"
        if not demo_data:
            return
        async with _locked(engine) as conn:
            if await _is_empty(conn):
                async with AsyncSession(bind=conn) as session:
                    await add_demo_data(session)
