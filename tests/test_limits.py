"""Limits at the door: per number, per address, concurrent calls; shared through Redis."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from phone_agent.app import create_app
from phone_agent.config import Settings
from phone_agent.limits import CallLimits, MemoryCounters, RedisCounters

from .test_bridge import FakeModel

TOKEN = "tok"
PUBLIC = "https://agent.example.com"


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_memory_counters_use_one_minute_windows() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    assert [await counters.hit("k", 60) for _ in range(3)] == [1, 2, 3]
    clock.now += 60
    assert await counters.hit("k", 60) == 1
    assert await counters.hit("other", 60) == 1


@pytest.mark.anyio
async def test_each_limit_and_zero_means_off() -> None:
    limits = CallLimits(
        MemoryCounters(), per_number_per_minute=2, per_address_per_minute=3, max_concurrent_calls=1
    )
    assert (
        await limits.check(number="+1", address="a", active_calls=1)
    ).reason == "concurrent_calls"  # type: ignore[union-attr]
    assert await limits.check(number="+1", address="a", active_calls=0) is None
    assert await limits.check(number="+1", address="a", active_calls=0) is None
    third = await limits.check(number="+1", address="a", active_calls=0)
    assert third is not None and third.reason == "per_number_rate"
    fourth = await limits.check(number="+2", address="a", active_calls=0)
    assert fourth is not None and fourth.reason == "per_address_rate"
    off = CallLimits(
        MemoryCounters(), per_number_per_minute=0, per_address_per_minute=0, max_concurrent_calls=0
    )
    for _ in range(100):
        assert await off.check(number="+1", address="a", active_calls=10_000) is None


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        twilio_auth_token=TOKEN,
        public_url=PUBLIC,
        prewarm=False,
        rate_limit_per_number=2,
        overflow_number=None,
    )
    with TestClient(create_app(settings, connect_model=FakeModel().connect)) as test_client:
        yield test_client


def call(client: TestClient, number: str) -> ET.Element:
    form = {"CallSid": "CA" + uuid.uuid4().hex, "From": number}
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/voice", form)
    answer = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200  # never a 500, even when turned away
    return ET.fromstring(answer.text)


def test_a_number_over_its_rate_hears_the_busy_message(client: TestClient) -> None:
    assert call(client, "+15550001111").find("Connect") is not None
    assert call(client, "+15550001111").find("Connect") is not None
    busy = call(client, "+15550001111")
    say = busy.find("Say")
    assert busy.find("Connect") is None and busy.find("Hangup") is not None
    assert say is not None and "busy" in (say.text or "")
    assert call(client, "+15550002222").find("Connect") is not None  # others are not affected


def test_over_capacity_callers_go_to_the_overflow_number() -> None:
    settings = Settings(
        twilio_auth_token=TOKEN,
        public_url=PUBLIC,
        prewarm=False,
        max_concurrent_calls=1,
        overflow_number="+15557770000",
    )
    with TestClient(create_app(settings, connect_model=FakeModel().connect)) as client:
        client.app.state.phone_agent.active_calls = 1  # type: ignore[attr-defined]
        answer = call(client, "+15550001111")
    dial = answer.find("Dial")
    assert answer.find("Connect") is None and dial is not None and dial.text == "+15557770000"


@pytest.fixture
async def redis_counters(redis_url: str) -> AsyncIterator[tuple[RedisCounters, RedisCounters]]:
    # Two clients, two connections: as two server processes would have.
    first, second = RedisCounters(redis_url), RedisCounters(redis_url)
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.anyio
async def test_rate_limits_count_across_replicas_sharing_redis(
    redis_counters: tuple[RedisCounters, RedisCounters],
) -> None:
    replica_a, replica_b = (
        CallLimits(c, per_number_per_minute=2, per_address_per_minute=0, max_concurrent_calls=0)
        for c in redis_counters
    )
    number = f"+1555{uuid.uuid4().int % 10**7:07d}"
    assert await replica_a.check(number=number, address=None, active_calls=0) is None
    assert await replica_b.check(number=number, address=None, active_calls=0) is None
    third = await replica_a.check(number=number, address=None, active_calls=0)
    assert third is not None and third.reason == "per_number_rate"
