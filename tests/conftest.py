from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI explores the same examples every run (no flakes from a lucky draw); locally, fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# websockets honours proxy variables; every test socket is on loopback.
os.environ["NO_PROXY"] = "127.0.0.1,localhost," + os.environ.get("NO_PROXY", "")
os.environ.pop("GEMINI_API_KEY", None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
