"""Call limits at the door: per calling number, per source address, and concurrent calls.

A phone agent spends money per minute, so floods of calls (toll fraud, a stuck dialler) are turned
away at the voice webhook, before a model session is opened or a stream token minted. Over a limit
the caller hears a polite busy message, or is forwarded to an overflow number: never a 500, never
a hung call.

Rates are fixed one-minute windows, counted in-process, or in Redis (`PHONE_AGENT_REDIS_URL`) so
that every replica shares them. The source address is the TCP peer as uvicorn reports it; behind a
proxy it is the proxy's (the server never trusts forwarded-for headers), so set the per-address
limit for what one proxy carries, or 0 to switch it off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Counters(Protocol):
    async def hit(self, key: str, window_s: float) -> int:
        """Count one event for `key` in the current window; return the window's count so far."""
        ...


class MemoryCounters:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, window_s: float) -> int:
        window = math.floor(self._clock() / window_s)
        if len(self._counts) > 50_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        seen_window, count = self._counts.get(key, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._counts[key] = (window, count)
        return count


class RedisCounters:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "phone-agent:limit:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        from redis import asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(url)
        self._prefix = prefix
        self._clock = clock

    async def hit(self, key: str, window_s: float) -> int:
        window = math.floor(self._clock() / window_s)
        name = f"{self._prefix}{key}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, int(window_s) * 2)
            count, _ = await pipe.execute()
        return int(count)

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True)
class LimitExceeded:
    """Which limit turned the call away (for logs and metrics)."""

    reason: str


class CallLimits:
    """`check` answers None (let the call in) or the limit it exceeds. A limit of 0 is off."""

    def __init__(
        self,
        counters: Counters,
        *,
        per_number_per_minute: int,
        per_address_per_minute: int,
        max_concurrent_calls: int,
    ) -> None:
        self.counters = counters
        self.per_number_per_minute = per_number_per_minute
        self.per_address_per_minute = per_address_per_minute
        self.max_concurrent_calls = max_concurrent_calls

    async def check(
        self, *, number: str | None, address: str | None, active_calls: int
    ) -> LimitExceeded | None:
        if self.max_concurrent_calls and active_calls >= self.max_concurrent_calls:
            return LimitExceeded("concurrent_calls")
        if self.per_address_per_minute and address:
            count = await self.counters.hit(f"addr:{address}", 60.0)
            if count > self.per_address_per_minute:
                return LimitExceeded("per_address_rate")
        if self.per_number_per_minute and number:
            count = await self.counters.hit(f"num:{number}", 60.0)
            if count > self.per_number_per_minute:
                return LimitExceeded("per_number_rate")
        return None
