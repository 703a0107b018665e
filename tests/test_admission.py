"""Stream admission: forged, expired, replayed, missing and wrong-call tokens are refused before any
model session is opened; single use holds across processes sharing Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from phone_agent.admission import (
    AdmissionError,
    MemoryNonceStore,
    RedisNonceStore,
    StreamTokens,
    derive_key,
)
from phone_agent.app import create_app
from phone_agent.config import Settings

from .test_bridge import CALL, SID, FakeModel, media_msg, stop_msg


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def tokens(clock: Clock | None = None, key: bytes = b"k" * 32) -> StreamTokens:
    return StreamTokens(key, MemoryNonceStore(), ttl_s=60, clock=clock or Clock())


async def refused(t: StreamTokens, token: str | None, call_sid: str = CALL) -> str:
    with pytest.raises(AdmissionError) as error:
        await t.admit(token, call_sid)
    assert not token or token not in str(error.value)  # never echoed
    return error.value.reason


@pytest.mark.anyio
async def test_a_fresh_token_admits_once() -> None:
    t = tokens()
    token = t.mint(CALL)
    await t.admit(token, CALL)
    assert await refused(t, token) == "replayed"


@pytest.mark.anyio
async def test_each_way_a_token_can_be_wrong() -> None:
    clock = Clock()
    t = tokens(clock)
    assert await refused(t, None) == "missing"
    assert await refused(t, "") == "missing"
    assert await refused(t, "no-dot-here") == "malformed"
    assert await refused(t, tokens(key=b"x" * 32).mint(CALL)) == "forged"
    payload, mac = t.mint(CALL).split(".")
    assert await refused(t, payload[:-2] + "AA." + mac) == "forged"
    assert await refused(t, t.mint("CA" + "9" * 32)) == "wrong_call"
    old = t.mint(CALL)
    clock.now += 61
    assert await refused(t, old) == "expired"


def test_key_derivation() -> None:
    assert derive_key("s", None) == derive_key("s", "twilio")  # explicit secret wins
    assert derive_key(None, "twilio") == derive_key(None, "twilio")  # shared by replicas
    assert derive_key(None, None) != derive_key(None, None)  # random per process


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def start_with(params: dict[str, str]) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": SID,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": SID,
                "callSid": CALL,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def bad_tokens(client: TestClient) -> dict[str, dict[str, str]]:
    state = client.app.state.phone_agent  # type: ignore[attr-defined]
    other = StreamTokens(b"z" * 32, MemoryNonceStore())
    return {
        "missing": {},
        "forged": {"token": other.mint(CALL)},
        "wrong_call": state.stream_parameters("CA" + "7" * 32),
        "malformed": {"token": "garbage"},
    }


@pytest.mark.parametrize("case", ["missing", "forged", "wrong_call", "malformed"])
def test_refused_streams_open_no_model_session(
    case: str, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(), connect_model=model.connect, keep_summaries=5)
    with TestClient(app) as client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_with(bad_tokens(client)[case]))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    assert model.opened == 0
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "call.rejected"]
    assert case in line.getMessage()


def test_a_replayed_token_is_refused(model: FakeModel, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(), connect_model=model.connect, keep_summaries=5)
    with TestClient(app) as client:
        params = client.app.state.phone_agent.stream_parameters(CALL)  # type: ignore[attr-defined]
        with client.websocket_connect("/twilio/media") as ws:
            ws.send_text(start_with(params))
            ws.send_text(media_msg(2))
            ws.send_text(stop_msg(3))
        assert model.opened == 1
        with client.websocket_connect("/twilio/media") as ws:
            ws.send_text(start_with(params))
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
    assert closed.value.code == 1008 and model.opened == 1
    assert any("replayed" in r.getMessage() for r in caplog.records)
    # The token never reaches the logs.
    assert all(params["token"] not in r.getMessage() for r in caplog.records)


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[tuple[RedisNonceStore, RedisNonceStore]]:
    # Two clients, two connections: as two server processes would have.
    first, second = RedisNonceStore(redis_url), RedisNonceStore(redis_url)
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.anyio
async def test_single_use_holds_across_replicas_sharing_redis(
    redis_stores: tuple[RedisNonceStore, RedisNonceStore],
) -> None:
    store_a, store_b = redis_stores
    key = derive_key(None, "shared twilio auth token")
    replica_a = StreamTokens(key, store_a)
    replica_b = StreamTokens(key, store_b)
    token = replica_a.mint(CALL)  # minted by the webhook on replica A
    await replica_b.admit(token, CALL)  # the stream lands on replica B
    with pytest.raises(AdmissionError, match="already used"):
        await replica_a.admit(token, CALL)


def test_a_wrongly_signed_handshake_is_refused_before_accept(model: FakeModel) -> None:
    from twilio.request_validator import RequestValidator

    settings = Settings(twilio_auth_token="tok", public_url="https://agent.example.com")
    app = create_app(settings, connect_model=model.connect)
    good = RequestValidator("tok").compute_signature("wss://agent.example.com/twilio/media", {})
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDisconnect) as refused_,
            client.websocket_connect("/twilio/media", headers={"X-Twilio-Signature": "bm9wZQ=="}),
        ):
            pass
        assert refused_.value.code == 1008
        with client.websocket_connect("/twilio/media", headers={"X-Twilio-Signature": good}) as ws:
            params = client.app.state.phone_agent.stream_parameters(CALL)  # type: ignore[attr-defined]
            ws.send_text(start_with(params))
            ws.send_text(stop_msg(2))
    assert model.opened == 1
