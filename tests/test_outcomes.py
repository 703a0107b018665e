from __future__ import annotations

import secrets

import pytest

from phone_agent.outcomes import MemoryOutcomes, RedisOutcomes

pytestmark = pytest.mark.anyio


async def test_memory_outcomes_keep_the_latest_calls() -> None:
    outcomes = MemoryOutcomes(size=2)
    for sid in ("CA1", "CA2", "CA3"):
        await outcomes.put(sid, "caller_stop")
    await outcomes.put("CA2", "model_unavailable")
    assert await outcomes.get("CA1") is None
    assert await outcomes.get("CA2") == "model_unavailable"


async def test_an_outcome_written_by_one_replica_is_read_by_another(redis_url: str) -> None:
    # Two clients, two connections, as two server processes: the stream ran on one, Twilio's
    # <Connect action> callback lands on the other.
    prefix = f"phone-agent-test-{secrets.token_hex(4)}:"
    first, second = RedisOutcomes(redis_url, prefix=prefix), RedisOutcomes(redis_url, prefix=prefix)
    try:
        await first.put("CA9", "model_unavailable")
        assert await second.get("CA9") == "model_unavailable"
        assert await second.get("CA-unknown") is None
    finally:
        await first.aclose()
        await second.aclose()
