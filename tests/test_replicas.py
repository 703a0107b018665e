"""Many replicas, one truth: two real server processes behind one public URL, sharing Redis and
PostgreSQL, each in offline mode with its own built-in Gemini Live emulator.

Twilio may send a call's webhook to one replica and its media stream to another, and a replayed
stream token to any of them. So: a stream lands on the replica that did not mint its token and
works; a token used on one replica is refused on the other before any model session; rate limits
count calls on both; call records from both land in one database.

The replicas are OS processes (`tests/servers.py`), started once for this module on a database
created for the run (dropped afterwards) and a Redis DB of their own (the app has no key prefix
setting; only this run's keys are deleted afterwards).
"""

from __future__ import annotations

import base64
import math
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from twilio.request_validator import RequestValidator

from phone_agent.config import Settings
from phone_agent.replay import heard_by_generation
from phone_agent.simulator import (
    CallerStep,
    CallRecord,
    HangUp,
    Say,
    Silence,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)

from .orders.conftest import postgres_url as postgres_url  # the fixture: skip visibly, fail in CI
from .servers import ServerProcess, spawn_server, stop_servers
from .test_call_e2e import active, caller_tone, dominant_hz

pytestmark = pytest.mark.anyio

# Both replicas sit behind one load balancer at this address: Twilio signs webhooks over it, and
# the TwiML's stream URL is derived from it. The tests dial each replica directly.
PUBLIC_URL = "http://localhost"
REDIS_DB = 15
PER_NUMBER_PER_MINUTE = 2
EMULATOR_REPLY_HZ = 440.0  # the emulator's default reply (`phone_agent.emulator.DEFAULT_REPLY`)
BUSY_MESSAGE = Settings.model_fields["busy_message"].default
# Where the app keeps shared state in Redis (`admission.RedisNonceStore`, `limits.RedisCounters`).
NONCE_KEY = "phone-agent:stream-token:"
LIMIT_KEY = "phone-agent:limit:"


@dataclass
class Replicas:
    a: ServerProcess
    b: ServerProcess
    auth_token: str
    database_url: str
    redis_url: str
    numbers: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)

    def new_call(self) -> Call:
        number = "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))
        self.numbers.add(number)
        return Call("CA" + secrets.token_hex(16), number)

    def diagnostics(self) -> str:
        return f"replica A: {self.a.describe()}\n\nreplica B: {self.b.describe()}"


@dataclass(frozen=True)
class Call:
    call_sid: str
    number: str

    def form(self) -> dict[str, str]:
        return {
            "CallSid": self.call_sid,
            "AccountSid": "AC" + "0" * 32,
            "From": self.number,
            "To": "+15550109999",
            "CallStatus": "ringing",
            "Direction": "inbound",
        }


# -- set-up ---------------------------------------------------------------------------------------


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(postgres: str, statement: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(postgres), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _redis_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


async def _forget_redis_keys(url: str, numbers: set[str], tokens: set[str]) -> None:
    """Delete this run's keys only: another run may share the DB."""
    from redis import asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [NONCE_KEY + nonce for nonce in map(_nonce, tokens) if nonce]
        for number in numbers:
            keys += [key async for key in client.scan_iter(match=f"{LIMIT_KEY}num:{number}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _nonce(token: str) -> str | None:
    try:
        payload = token.split(".", 1)[0]
        return str(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["n"])
    except (ValueError, KeyError, TypeError):
        return None


@pytest.fixture
def replicas(shared_replicas: Replicas) -> Replicas:
    # Shown with a failing test's report ("Captured stdout setup").
    print(f"replica logs: A {shared_replicas.a.output_path}, B {shared_replicas.b.output_path}")
    return shared_replicas


@pytest.fixture(scope="module")
def shared_replicas(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    postgres = request.getfixturevalue("postgres_url")
    database = f"phone_agent_replicas_{secrets.token_hex(6)}"
    database_url = make_url(postgres).set(database=database).render_as_string(hide_password=False)
    shared_redis = _redis_db(redis_url, REDIS_DB)
    auth_token = secrets.token_hex(16)
    env = {
        "TWILIO_AUTH_TOKEN": auth_token,
        "PHONE_AGENT_STREAM_SECRET": secrets.token_urlsafe(32),
        "PHONE_AGENT_PUBLIC_URL": PUBLIC_URL,
        "PHONE_AGENT_REDIS_URL": shared_redis,
        "PHONE_AGENT_DATABASE_URL": database_url,
        "PHONE_AGENT_RATE_LIMIT_PER_NUMBER": str(PER_NUMBER_PER_MINUTE),
        # Every test webhook comes from 127.0.0.1: only the per-number limit is under test.
        "PHONE_AGENT_RATE_LIMIT_PER_ADDRESS": "0",
        "PHONE_AGENT_LOG_FORMAT": "json",
        # Stop at once when the module is done. (Draining would wait out the stream token's TTL
        # for the streams promised by webhooks whose stream went to the other replica, or none.)
        "PHONE_AGENT_DRAIN_TIMEOUT_S": "0",
    }
    logs: Path = tmp_path_factory.mktemp("replicas")
    anyio.run(_admin, postgres, f'CREATE DATABASE "{database}"')
    servers: list[ServerProcess] = []
    shared: Replicas | None = None
    try:
        # Both boot at once against the fresh database: start-up migrations must not collide.
        servers.append(spawn_server(env, workdir=logs / "a"))
        servers.append(spawn_server(env, workdir=logs / "b"))
        for server in servers:
            server.wait_ready()
        a, b = servers
        shared = Replicas(a, b, auth_token, database_url, shared_redis)
        yield shared
    finally:
        stop_servers(servers)
        anyio.run(_admin, postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if shared is not None:
            anyio.run(_forget_redis_keys, shared_redis, shared.numbers, shared.tokens)


# -- helpers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A voice webhook's answer: the stream's `<Parameter>`s if it connected the call."""

    status: int
    twiml: ET.Element
    stream_url: str | None
    parameters: dict[str, str]

    @property
    def connected(self) -> bool:
        return self.stream_url is not None

    @property
    def busy(self) -> bool:
        said = [e.text for e in self.twiml.iter("Say")]
        return (
            not self.connected and said == [BUSY_MESSAGE] and self.twiml.find("Hangup") is not None
        )


async def voice_webhook(replicas: Replicas, server: ServerProcess, call: Call) -> Answer:
    """POST the voice webhook to `server`, signed as Twilio signs it: over the public URL."""
    form = call.form()
    signature = RequestValidator(replicas.auth_token).compute_signature(
        PUBLIC_URL + "/twilio/voice", form
    )
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        response = await http.post(
            server.url + "/twilio/voice", data=form, headers={"X-Twilio-Signature": signature}
        )
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    twiml = ET.fromstring(response.text)
    stream = twiml.find("./Connect/Stream")
    parameters = {
        str(p.get("name")): str(p.get("value"))
        for p in (stream.findall("Parameter") if stream is not None else [])
    }
    if "token" in parameters:
        replicas.tokens.add(parameters["token"])
    url = stream.get("url") if stream is not None else None
    return Answer(response.status_code, twiml, url, parameters)


async def place_call(
    server: ServerProcess,
    call: Call,
    parameters: dict[str, str],
    script: list[CallerStep],
    limit_s: float = 20.0,
) -> CallRecord:
    """Twilio's side of the media stream, dialled straight to `server` (the load balancer's
    choice)."""
    simulator = TwilioCallerSimulator(
        server.ws_url + "/twilio/media",
        script,
        call_sid=call.call_sid,
        custom_parameters=parameters,
    )
    with anyio.fail_after(limit_s):
        return await simulator.run()


async def eventually(
    check: Any, what: str, diagnostics: Any, timeout_s: float = 10.0, interval_s: float = 0.05
) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout_s` with `what` and
    `diagnostics()`."""
    deadline = anyio.current_time() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if anyio.current_time() > deadline:
            pytest.fail(f"{what} within {timeout_s:g} s\n{diagnostics()}", pytrace=False)
        await anyio.sleep(interval_s)


async def call_rows(database_url: str, call_sids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT call_sid, end_reason, prewarmed, duration_s FROM calls "
            "WHERE call_sid = ANY($1::text[])",
            call_sids,
        )
    finally:
        await conn.close()
    return {row["call_sid"]: row for row in rows}


async def wait_for_rows(replicas: Replicas, call_sids: list[str]) -> dict[str, asyncpg.Record]:
    deadline = anyio.current_time() + 10.0
    while True:
        rows = await call_rows(replicas.database_url, call_sids)
        if len(rows) == len(call_sids):
            return rows
        if anyio.current_time() > deadline:
            missing = sorted(set(call_sids) - set(rows))
            pytest.fail(
                f"no call records for {missing} in the shared database within 10 s\n"
                + replicas.diagnostics(),
                pytrace=False,
            )
        await anyio.sleep(0.1)


async def metrics(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        response = await http.get(server.url + "/metrics")
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


# Metrics only a call admitted (and so given a model session) moves.
STARTED_ONLY = ("phone_agent_call_duration_seconds_count", "phone_agent_cost_usd_total")


def sample(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    """Sum of a metric's samples, over every label value."""
    return sum(v for (n, _), v in values.items() if n == name)


def greeting_then_answer() -> list[CallerStep]:
    """Hear the greeting, speak, hear the answer to the speech, hang up."""
    return [
        WaitForAgentAudio(min_ms=300, timeout_ms=10_000),  # the greeting
        WaitForAgentSilence(ms=300, timeout_ms=10_000),
        Say(caller_tone(300.0, 800)),
        WaitForAgentAudio(min_ms=300, timeout_ms=10_000),  # the answer to what the caller said
        HangUp(),
    ]


# -- scenarios ------------------------------------------------------------------------------------


async def test_webhook_on_one_replica_stream_on_the_other(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    call = replicas.new_call()
    answer = await voice_webhook(replicas, a, call)
    assert answer.connected, ET.tostring(answer.twiml)
    # The stream URL is the public one (the load balancer), whichever replica answered.
    assert answer.stream_url == "ws://localhost/twilio/media"
    assert answer.parameters["call_sid"] == call.call_sid
    assert answer.parameters["from"] == call.number

    record = await place_call(b, call, answer.parameters, greeting_then_answer())

    record.assert_clean()
    assert record.close.by_caller, record.close
    heard = heard_by_generation(record)
    assert len(heard) >= 2 and all(ms > 0 for ms in heard.values()), heard  # greeting + answer
    tone = active(record.heard_pcm16())
    assert abs(dominant_hz(tone, 8000) - EMULATOR_REPLY_HZ) < 20  # B's emulator, heard on the phone

    ended = await eventually(
        lambda: b.log_records(event="call.end", call_sid=call.call_sid),
        "replica B logged no end of the call",
        replicas.diagnostics,
    )
    assert ended[0]["reason"] == "caller_stop"
    assert b.log_records(event="call.start", call_sid=call.call_sid)
    assert a.log_records(event="webhook.voice", call_sid=call.call_sid, outcome="connected")
    assert not a.log_records(event="call.start", call_sid=call.call_sid)
    rows = await wait_for_rows(replicas, [call.call_sid])
    # A pre-warmed a session at its webhook, but sessions are process-local: B opened its own.
    assert rows[call.call_sid]["prewarmed"] is False


async def test_a_token_used_on_one_replica_is_refused_on_the_other(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    call = replicas.new_call()
    answer = await voice_webhook(replicas, a, call)
    token = answer.parameters["token"]
    a_before = await metrics(a)
    first = await place_call(a, call, answer.parameters, [WaitForAgentAudio(200), HangUp()])
    first.assert_clean()
    assert first.heard_ms > 0
    await eventually(
        lambda: a.log_records(event="call.end", call_sid=call.call_sid),
        "replica A logged no end of the first call",
        replicas.diagnostics,
    )
    a_after = await metrics(a)
    # What an admitted call moves: its length is observed, its Twilio minutes are billed.
    for started_only in STARTED_ONLY:
        assert sample(a_after, started_only) > sample(a_before, started_only), started_only
    before = await metrics(b)

    # The same stream again (a replay), to the other replica.
    replay = await place_call(b, call, answer.parameters, [Silence(5_000), HangUp()])

    assert replay.close.code == 1008 and not replay.close.by_caller, replay.close
    assert replay.received_audio == b"" and not replay.marks_received
    [rejected] = await eventually(
        lambda: b.log_records(event="call.rejected", call_sid=call.call_sid),
        "replica B did not log the refused stream",
        replicas.diagnostics,
    )
    assert rejected["reason"] == "admission_refused"
    assert "replayed" in rejected["msg"]
    # Refused before the call started (the model session is opened only after): nothing billed.
    assert not b.log_records(event="call.start", call_sid=call.call_sid)
    after = await metrics(b)
    refused = ("phone_agent_calls_total", frozenset({("end_reason", "admission_refused")}))
    assert after.get(refused, 0.0) == before.get(refused, 0.0) + 1
    for started_only in STARTED_ONLY:
        assert sample(after, started_only) == sample(before, started_only), started_only
    for server in (a, b):
        assert token not in server.stderr_text()
    # The replay left A's call record alone.
    rows = await wait_for_rows(replicas, [call.call_sid])
    assert rows[call.call_sid]["end_reason"] == "caller_stop"


async def test_rate_limits_count_calls_on_every_replica(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    for _attempt in range(2):
        call = replicas.new_call()
        window = math.floor(time.time() / 60)  # the limiter's fixed one-minute window
        answers = [await voice_webhook(replicas, server, call) for server in (a, b, a, b)]
        if math.floor(time.time() / 60) == window:
            break
        # The minute turned between the webhooks, so the count restarted: again, fresh number.
    else:
        pytest.fail("two attempts straddled a minute boundary")

    first_a, first_b, third_a, fourth_b = answers
    assert first_a.connected and first_b.connected
    assert third_a.busy, ET.tostring(third_a.twiml)
    assert fourth_b.busy, ET.tostring(fourth_b.twiml)
    for server in (a, b):
        outcomes = [
            r["outcome"] for r in server.log_records(event="webhook.voice", call_sid=call.call_sid)
        ]
        assert outcomes == ["connected", "turned away: per_number_rate"], outcomes


async def test_call_records_from_both_replicas_land_in_one_database(replicas: Replicas) -> None:
    calls: dict[str, CallRecord] = {}

    async def on(server: ServerProcess, call: Call) -> None:
        answer = await voice_webhook(replicas, server, call)
        calls[call.call_sid] = await place_call(
            server, call, answer.parameters, [WaitForAgentAudio(200), HangUp()]
        )

    on_a, on_b = replicas.new_call(), replicas.new_call()
    async with anyio.create_task_group() as group:
        group.start_soon(on, replicas.a, on_a)
        group.start_soon(on, replicas.b, on_b)
    for record in calls.values():
        record.assert_clean()

    rows = await wait_for_rows(replicas, [on_a.call_sid, on_b.call_sid])
    for call in (on_a, on_b):
        row = rows[call.call_sid]
        assert row["end_reason"] == "caller_stop"
        assert row["prewarmed"] is True  # webhook and stream on the same replica
        assert row["duration_s"] > 0
    for carried, other, call in ((replicas.a, replicas.b, on_a), (replicas.b, replicas.a, on_b)):
        assert carried.log_records(event="call.end", call_sid=call.call_sid)
        assert not other.log_records(event="call.end", call_sid=call.call_sid)
