"""How each call's media stream ended, for `/twilio/stream-ended` (Twilio's `<Connect action>`).

The stream may have run on another replica than the one Twilio asks afterwards, so with
`PHONE_AGENT_REDIS_URL` the outcome is kept in Redis (ten minutes); without it, in process (the
last thousand calls).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

OUTCOME_TTL_S = 600
MEMORY_OUTCOMES = 1000


class Outcomes(Protocol):
    async def put(self, call_sid: str, reason: str) -> None: ...

    async def get(self, call_sid: str) -> str | None: ...


class MemoryOutcomes:
    def __init__(self, size: int = MEMORY_OUTCOMES) -> None:
        self._size = size
        self._items: OrderedDict[str, str] = OrderedDict()

    async def put(self, call_sid: str, reason: str) -> None:
        self._items[call_sid] = reason
        self._items.move_to_end(call_sid)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    async def get(self, call_sid: str) -> str | None:
        return self._items.get(call_sid)


class RedisOutcomes:
    def __init__(self, url: str, *, prefix: str = "phone-agent:") -> None:
        from redis import asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(url)
        self._prefix = prefix + "outcome:"

    async def put(self, call_sid: str, reason: str) -> None:
        await self._redis.set(self._prefix + call_sid, reason.encode(), ex=OUTCOME_TTL_S)

    async def get(self, call_sid: str) -> str | None:
        value = await self._redis.get(self._prefix + call_sid)
        return value.decode() if isinstance(value, bytes) else None

    async def aclose(self) -> None:
        await self._redis.aclose()
