from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import phone_agent.call_store  # (registers calls and call_turns on Base.metadata)
import phone_agent.memory  # noqa: F401  (registers caller_notes on Base.metadata)
from phone_agent import db
from phone_agent.orders.demo import DEMO_CUSTOMERS, DEMO_ORDERS
from phone_agent.orders.models import Base, Customer, Order, OrderItem, Shipment

TABLES = {"customers", "orders", "order_items", "shipments", "caller_notes", "calls", "call_turns"}


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, "sqlite+aiosqlite:///./phone-agent.db"),
        ("", "sqlite+aiosqlite:///./phone-agent.db"),
        ("  ", "sqlite+aiosqlite:///./phone-agent.db"),
        ("postgresql+asyncpg://agent@db/orders", "postgresql+asyncpg://agent@db/orders"),
        ("postgresql://agent@db/orders", "postgresql+asyncpg://agent@db/orders"),
        (
            "postgres://agent:s3cret@db:5433/orders",
            "postgresql+asyncpg://agent:s3cret@db:5433/orders",
        ),
        (
            "postgresql://agent@db/orders?sslmode=require",
            "postgresql+asyncpg://agent@db/orders?ssl=require",
        ),
        ("sqlite:////var/lib/agent/orders.db", "sqlite+aiosqlite:////var/lib/agent/orders.db"),
        ("sqlite+aiosqlite:///orders.db", "sqlite+aiosqlite:///orders.db"),
    ],
)
def test_database_url(value: str | None, url: str) -> None:
    assert db.database_url(value) == url


@pytest.mark.parametrize(
    "value", ["mysql://agent@db/orders", "postgresql+psycopg2://agent@db/orders", "not a url"]
)
def test_database_url_rejects_other_drivers(value: str) -> None:
    with pytest.raises(ValueError, match="PHONE_AGENT_DATABASE_URL"):
        db.database_url(value)


def test_redacted_hides_the_password() -> None:
    shown = db.redacted("postgresql+asyncpg://agent:s3cret@db/orders")
    assert "s3cret" not in shown
    assert shown.startswith("postgresql+asyncpg://agent:")


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _counts(engine: AsyncEngine) -> tuple[int, ...]:
    async with AsyncSession(engine) as session:
        return tuple(
            [
                await session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Customer, Order, OrderItem, Shipment)
            ]
        )


HEAD = ScriptDirectory.from_config(db.alembic_config()).get_current_head()


@pytest.mark.anyio
async def test_upgrade_creates_the_tables_and_repeats_as_a_no_op(engine: AsyncEngine) -> None:
    assert await db.current_revision(engine) is None
    await db.upgrade(engine)
    assert await _tables(engine) == TABLES | {"alembic_version"}
    assert await db.current_revision(engine) == HEAD == "0004"
    await db.upgrade(engine)
    assert await db.current_revision(engine) == HEAD
    assert await db.is_empty(engine)


@pytest.mark.anyio
async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    await db.upgrade(engine)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


@pytest.mark.anyio
async def test_downgrade_removes_the_tables(engine: AsyncEngine) -> None:
    await db.upgrade(engine)

    def downgrade(connection: Connection) -> None:
        config = db.alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    async with engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert await _tables(engine) == {"alembic_version"}
    assert await db.current_revision(engine) is None


@pytest.mark.anyio
async def test_seed_is_idempotent(engine: AsyncEngine) -> None:
    await db.upgrade(engine)
    assert await db.seed(engine) == len(DEMO_ORDERS)
    counts = await _counts(engine)
    assert counts[:2] == (len(DEMO_CUSTOMERS), len(DEMO_ORDERS))
    assert await db.seed(engine) == 0
    assert await _counts(engine) == counts


@pytest.mark.anyio
async def test_seed_adds_only_what_is_missing(engine: AsyncEngine) -> None:
    await db.upgrade(engine)
    await db.seed(engine)
    async with AsyncSession(engine) as session:
        order = await session.scalar(select(Order).where(Order.number == "1039"))
        assert order is not None
        await session.delete(order)
        await session.commit()
    assert await db.seed(engine) == 1
    assert (await _counts(engine))[1] == len(DEMO_ORDERS)


@pytest.mark.anyio
async def test_prepare_seeds_an_empty_database_only(engine: AsyncEngine) -> None:
    await db.upgrade(engine)
    async with AsyncSession(engine) as session:
        session.add(Customer(name="Real Customer", phone="+15559990000", postcode="12345"))
        await session.commit()
    await db.prepare(engine, demo_data=True)
    assert await _counts(engine) == (1, 0, 0, 0)


@pytest.mark.anyio
async def test_prepare_seeds_by_default_only_on_sqlite(
    engine: AsyncEngine, backend: tuple[str, str]
) -> None:
    await db.prepare(engine)
    await db.prepare(engine)
    seeded = backend[0] == "sqlite"
    assert (await _counts(engine))[1] == (len(DEMO_ORDERS) if seeded else 0)


@pytest.mark.anyio
async def test_the_embedded_default_is_created_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = db.database_url(None)
    await db.prepare(url)
    assert (tmp_path / "phone-agent.db").is_file()
    engine = db.create_engine(url)
    try:
        assert (await _counts(engine))[1] == len(DEMO_ORDERS)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/fk.db")
    try:
        await db.upgrade(engine)
        async with AsyncSession(engine) as session:
            session.add(OrderItem(order_id=999, sku="X", name="x", quantity=1))
            with pytest.raises(IntegrityError, match="FOREIGN KEY"):
                await session.commit()
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_a_sqlite_url_in_any_spelling_gets_its_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/var/lib/agent/orders.db"
    await db.upgrade(url)
    assert (tmp_path / "var/lib/agent/orders.db").is_file()
    assert await db.current_revision(url) == HEAD
