from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

# CI explores the same examples every run (no flakes from a lucky draw); locally, fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# websockets honours proxy variables; every test socket is on loopback.
os.environ["NO_PROXY"] = "127.0.0.1,localhost," + os.environ.get("NO_PROXY", "")
os.environ.pop("GEMINI_API_KEY", None)

# Apps keep call records in PHONE_AGENT_DATABASE_URL, by default ./phone-agent.db: tests that do
# not name a database share one in a temporary directory, never the working tree's.
_DATA_DIR = tempfile.mkdtemp(prefix="phone-agent-tests-")
atexit.register(shutil.rmtree, _DATA_DIR, True)
os.environ["PHONE_AGENT_DATABASE_URL"] = f"sqlite+aiosqlite:///{_DATA_DIR}/phone-agent.db"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


REDIS_URL = os.environ.get("PHONE_AGENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _ping_redis(url: str) -> None:
    from redis import asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url, socket_connect_timeout=3)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the tests of state shared by replicas: must run in CI, skips visibly elsewhere."""
    import anyio

    try:
        anyio.run(_ping_redis, REDIS_URL)
    except Exception as exc:
        message = f"Redis not reachable at {REDIS_URL}: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the Redis tests must run)", pytrace=False)
        pytest.skip(message)
    return REDIS_URL
