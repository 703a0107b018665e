"""Database fixtures: a fresh SQLite file per test, and a fresh PostgreSQL schema per test.

PostgreSQL comes from `PHONE_AGENT_TEST_POSTGRES_URL` (default: CI's server at 127.0.0.1:5432,
user postgres, database test). When it is unreachable its tests skip with the reason, except under
CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from phone_agent.db import create_engine, database_url, prepare, redacted, sessionmaker
from phone_agent.orders.store import OrderStore

POSTGRES_URL = database_url(
    os.environ.get(
        "PHONE_AGENT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
)
BACKENDS = ["sqlite", "postgresql"]


async def _probe(url: str) -> None:
    engine = create_engine(url, connect_args={"timeout": 3})
    try:
        with anyio.fail_after(5):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        anyio.run(_probe, POSTGRES_URL)
    except Exception as exc:
        message = f"PostgreSQL not reachable at {redacted(POSTGRES_URL)}: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: object) -> tuple[str, str]:
    """(backend name, URL); resolves PostgreSQL's reachability outside any event loop."""
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("postgres_url")
    return "sqlite", f"sqlite+aiosqlite:///{tmp_path}/orders.db"


@pytest.fixture
async def engine(backend: tuple[str, str]) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database: a temporary SQLite file, or a PostgreSQL schema of its own
    that is dropped afterwards."""
    name, url = backend
    if name == "sqlite":
        engine = create_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()
        return
    schema = f"test_orders_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield engine
        finally:
            await engine.dispose()
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> OrderStore:
    """An `OrderStore` on a migrated database holding the demo data."""
    await prepare(engine, demo_data=True)
    return OrderStore(sessionmaker(engine))


@pytest.fixture
async def sqlite_store(tmp_path: object) -> AsyncIterator[OrderStore]:
    """The demo store on SQLite only, for tests whose subject is not the database."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/orders.db")
    try:
        await prepare(engine, demo_data=True)
        yield OrderStore(sessionmaker(engine))
    finally:
        await engine.dispose()
