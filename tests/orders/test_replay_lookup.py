"""The `order-lookup` fixture replayed through the whole stack on SQLite and on PostgreSQL: the
model's `lookup_order` call is answered from the database, and the answer carries the order's data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from phone_agent import db, replay
from phone_agent.config import Settings
from phone_agent.fixture import CallFixture

FIXTURE = Path(__file__).parents[1] / "fixtures" / "order-lookup.json.gz"

pytestmark = pytest.mark.anyio


@pytest.fixture
async def database(backend: tuple[str, str]) -> AsyncIterator[str]:
    """A database of its own, with the demo data: a SQLite file, or a PostgreSQL database."""
    name, url = backend
    if name == "sqlite":
        await db.prepare(url, demo_data=True)
        yield url
        return
    parsed = make_url(url)
    server = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    database = f"phone_agent_replay_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        target = parsed.set(database=database).render_as_string(hide_password=False)
        await db.prepare(target, demo_data=True)
        yield target
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def test_lookup_is_answered_from_the_database(database: str) -> None:
    settings = Settings(tools=["lookup_order", "list_recent_orders"], database_url=database)
    result = await replay.replay(CallFixture.load(FIXTURE), speed="max", settings=settings)
    assert result.ok, result.report()
    [answer] = result.summary.tool_results
    assert answer.name == "lookup_order" and answer.status == "ok"
    output = answer.response["output"]
    # Verified by the postcode the caller gave, from a number that does not own the order.
    assert output["verified"] is True and output["order"] == "1042"
    assert (
        output["shipment"]["carrier"] == "UPS" and output["shipment"]["eta"] == "Friday 28 November"
    )
    assert {item["name"] for item in output["items"]} >= {"wireless headphones"}
