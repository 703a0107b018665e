"""Fixtures for the emulator tests: the anyio backend and real google-genai sessions."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from google import genai
from google.genai import types
from google.genai.live import AsyncSession

from phone_agent.emulator import GeminiEmulator, http_options

# websockets honours proxy settings; the emulator is local.
_local = "127.0.0.1,localhost"
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = f"{_local},{os.environ[_name]}" if os.environ.get(_name) else _local

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def connect() -> Callable[..., contextlib.AbstractAsyncContextManager[AsyncSession]]:
    """`async with connect(emu, **LiveConnectConfig fields) as session:` a real SDK session."""

    @contextlib.asynccontextmanager
    async def _connect(emulator: GeminiEmulator, **config: Any) -> AsyncIterator[AsyncSession]:
        config.setdefault("response_modalities", ["AUDIO"])
        client = genai.Client(api_key="test-key", http_options=http_options(emulator))
        try:
            async with client.aio.live.connect(
                model=MODEL, config=types.LiveConnectConfig(**config)
            ) as session:
                yield session
        finally:
            await client.aio.aclose()

    return _connect
