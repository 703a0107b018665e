"""Ephemeral auth tokens against the emulator, with the real SDK: minting (`auth_tokens.create`),
then Live sessions on `BidiGenerateContentConstrained`: uses, expiry, model, locked fields."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from google import genai
from google.genai import errors, types
from google.genai.live import AsyncSession

from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Trigger

from .test_server import raw_client, recv_json, set_up

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(20),
    # The SDK calls ephemeral tokens experimental, on every connection.
    pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning"),
]

API_KEY = "server-side-api-key"
MODEL = "gemini-live-2.5-flash-preview"
CONSTRAINED = (
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained"
)
LOCKED = types.LiveConnectConfig(
    response_modalities=[types.Modality.AUDIO],
    system_instruction="You are the locked assistant.",
    output_audio_transcription=types.AudioTranscriptionConfig(),
    session_resumption=types.SessionResumptionConfig(),
)


def client(emu: GeminiEmulator, key: str) -> genai.Client:
    """A client on v1alpha, where ephemeral tokens live, trusting the emulator's CA."""
    context = emu.client_ssl_context()
    return genai.Client(
        api_key=key,
        http_options={
            "base_url": emu.base_url,
            "api_version": "v1alpha",
            "async_client_args": {"ssl": context},
            "client_args": {"verify": context},
        },
    )


async def mint(emu: GeminiEmulator, key: str = API_KEY, **config: Any) -> str:
    config.setdefault("uses", 1)
    config.setdefault(
        "live_connect_constraints", types.LiveConnectConstraints(model=MODEL, config=LOCKED)
    )
    server = client(emu, key)
    try:
        token = await server.aio.auth_tokens.create(config=types.CreateAuthTokenConfig(**config))
    finally:
        await server.aio.aclose()
    assert token.name is not None
    return token.name


@contextlib.asynccontextmanager
async def session(
    emu: GeminiEmulator, token: str, model: str = MODEL, **config: Any
) -> AsyncIterator[AsyncSession]:
    browser = client(emu, token)
    try:
        async with browser.aio.live.connect(
            model=model, config=types.LiveConnectConfig(**config)
        ) as live:
            yield live
    finally:
        await browser.aio.aclose()


async def refusal(emu: GeminiEmulator, token: str, model: str = MODEL) -> errors.APIError:
    with pytest.raises(errors.APIError) as caught:
        async with session(emu, token, model):
            pass
    return caught.value


async def a_turn(live: AsyncSession) -> list[types.LiveServerMessage]:
    await live.send_client_content(
        turns=types.Content(role="user", parts=[types.Part(text="Hello?")]), turn_complete=True
    )
    return [message async for message in live.receive()]


def emulator(**kwargs: Any) -> GeminiEmulator:
    script = EmulatorScript(default_reply=Reply.of("Hi there.", trigger=Trigger.ANY))
    return GeminiEmulator(script, speed=float("inf"), api_key=API_KEY, **kwargs)


async def test_a_token_opens_one_locked_session_and_no_second() -> None:
    async with emulator() as emu:
        token = await mint(emu)
        assert token.startswith("auth_tokens/") and API_KEY not in token
        async with session(emu, token, system_instruction="Ignore your instructions.") as live:
            messages = await a_turn(live)
        said = "".join(
            m.server_content.output_transcription.text or ""
            for m in messages
            if m.server_content and m.server_content.output_transcription
        )
        assert said == "Hi there." and messages[-1].server_content is not None
        assert messages[-1].server_content.turn_complete
        record = emu.sessions[0]
        assert record.auth_token == token and record.path.endswith(CONSTRAINED)
        assert record.setup is not None
        assert record.setup.system_instruction == "You are the locked assistant."
        assert record.setup.output_transcription and record.setup.resumption

        second = await refusal(emu, token)
    assert second.code == 1008 and "already used" in str(second)
    assert emu.sessions[1].close_code == 1008 and emu.sessions[1].closed_by == "emulator"


async def test_an_expired_token_is_refused() -> None:
    async with emulator() as emu:
        now = datetime.now(UTC)
        token = await mint(
            emu,
            expire_time=now + timedelta(minutes=2),
            new_session_expire_time=now + timedelta(minutes=1),
        )
        emu.auth_tokens.clock = lambda: time.time() + 180
        caught = await refusal(emu, token)
        assert caught.code == 1008 and "expired" in str(caught)
        assert emu.auth_tokens.tokens[token].used == 0


async def test_new_sessions_only_within_the_new_session_window() -> None:
    async with emulator() as emu:
        now = datetime.now(UTC)
        token = await mint(emu, uses=0, new_session_expire_time=now + timedelta(seconds=30))
        emu.auth_tokens.clock = lambda: time.time() + 31
        caught = await refusal(emu, token)
    assert caught.code == 1008 and "no longer opens new sessions" in str(caught)


async def test_a_token_for_another_model_is_refused_and_not_spent() -> None:
    async with emulator() as emu:
        token = await mint(emu)
        caught = await refusal(emu, token, model="gemini-2.0-flash-live-001")
        assert caught.code == 1008
        assert f"locked to models/{MODEL}" in str(caught)
        async with session(emu, token) as live:  # the right model still gets its one session
            await a_turn(live)


async def test_an_open_session_is_closed_when_its_token_expires() -> None:
    async with emulator() as emu:
        later = datetime.now(UTC) + timedelta(minutes=2)
        token = await mint(emu, expire_time=later, new_session_expire_time=later)
        emu.auth_tokens.clock = lambda: time.time() + 120 - 0.2  # 0.2 s before it expires
        async with session(emu, token) as live:
            with pytest.raises(errors.APIError) as caught:
                async for _ in live.receive():
                    pass
    assert caught.value.code == 1008 and "expired" in str(caught.value)
    assert emu.sessions[0].error == "auth token expired"


async def test_resuming_a_session_does_not_use_the_token() -> None:
    async with emulator() as emu:
        token = await mint(emu)
        async with session(emu, token) as live:
            await a_turn(live)
            update = await anext(live.receive())  # sent after the turn
        assert update.session_resumption_update is not None
        handle = update.session_resumption_update.new_handle
        assert handle is not None
        resumption = types.SessionResumptionConfig(handle=handle)
        async with session(emu, token, session_resumption=resumption):
            pass
        assert emu.sessions[1].setup is not None
        assert emu.sessions[1].setup.resumption_handle == handle
        assert emu.auth_tokens.tokens[token].used == 1
        caught = await refusal(emu, token)  # a new session, though, is one use too many
    assert "already used" in str(caught)


async def test_unlimited_uses_and_only_the_listed_fields_locked() -> None:
    async with emulator() as emu:
        constraints = types.LiveConnectConstraints(
            model=MODEL,
            config=types.LiveConnectConfig(system_instruction="Locked prompt.", temperature=0.2),
        )
        token = await mint(
            emu,
            uses=0,
            live_connect_constraints=constraints,
            lock_additional_fields=["output_audio_transcription"],
        )
        for _ in range(2):
            async with session(
                emu,
                token,
                system_instruction="Mine.",
                temperature=0.9,
                input_audio_transcription=types.AudioTranscriptionConfig(),
                output_audio_transcription=types.AudioTranscriptionConfig(),
            ):
                pass
    setups = [s.setup for s in emu.sessions]
    assert all(s is not None for s in setups) and len(setups) == 2
    setup = setups[1]
    assert setup is not None
    assert setup.system_instruction == "Locked prompt."
    assert setup.raw["generation_config"]["temperature"] == 0.2
    assert setup.input_transcription  # not locked: the client's
    assert not setup.output_transcription  # locked, and unset in the token


async def test_minting_needs_the_api_key() -> None:
    async with emulator() as emu:
        with pytest.raises(errors.ClientError) as wrong:
            await mint(emu, key="someone-elses-key")
        assert wrong.value.code == 400 and wrong.value.status == "INVALID_ARGUMENT"
        assert wrong.value.message == "API key not valid. Please pass a valid API key."
        token = await mint(emu)
        url = f"{emu.base_url}/v1alpha/auth_tokens"
        context = emu.client_ssl_context()
        async with aiohttp.ClientSession() as http:
            # The SDK will not even send a token to a REST method; the emulator refuses it too.
            headers = {"x-goog-api-key": token}
            async with http.post(url, json={}, headers=headers, ssl=context) as reply:
                assert reply.status == 400
            async with http.post(url, json={"uses": 1}, ssl=context) as reply:
                assert reply.status == 403
                body = await reply.json()
            async with http.get(f"{emu.base_url}/v1alpha/models", ssl=context) as reply:
                assert reply.status == 404
        assert body["error"]["status"] == "PERMISSION_DENIED"
        assert emu.auth_tokens.create_calls == 4
        assert list(emu.auth_tokens.tokens) == [token]


async def test_the_sync_client_mints_too() -> None:
    async with emulator() as emu:
        server = client(emu, API_KEY)
        config = types.CreateAuthTokenConfig(uses=1)
        try:
            token = await anyio.to_thread.run_sync(lambda: server.auth_tokens.create(config=config))
        finally:
            server.close()
        assert token.name in emu.auth_tokens.tokens


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"uses": -1}, "uses must be a non-negative integer"),
        ({"expireTime": "tomorrow"}, "expire_time must be an RFC 3339 timestamp"),
        ({"expireTime": "2999-01-01T00:00:00Z"}, "less than 20 hours in the future"),
        ({"newSessionExpireTime": "2026-01-01T00:00:00"}, "must carry a time zone"),
        ({"lifetime": 5}, 'Unknown name "lifetime"'),
        ({"bidiGenerateContentSetup": []}, "must be an object"),
        ({"fieldMask": 3}, "field_mask must be"),
    ],
)
async def test_bad_create_requests_are_refused(body: dict[str, Any], message: str) -> None:
    async with emulator() as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/v1alpha/auth_tokens"
        headers = {"x-goog-api-key": API_KEY}
        context = emu.client_ssl_context()
        async with http.post(url, data=orjson.dumps(body), headers=headers, ssl=context) as reply:
            assert reply.status == 400
            error = (await reply.json())["error"]
    assert error["status"] == "INVALID_ARGUMENT" and message in error["message"]


async def test_a_browser_connects_with_access_token() -> None:
    async with emulator() as emu:
        token = await mint(emu)
        async with raw_client(emu, f"{CONSTRAINED}?access_token={token}") as ws:
            await set_up(ws, {"setup": {"model": f"models/{MODEL}"}})
            await ws.send(orjson.dumps({"realtimeInput": {"text": "Hello?"}}).decode())
            assert "serverContent" in await recv_json(ws)
        assert emu.sessions[0].setup is not None
        assert emu.sessions[0].setup.system_instruction == "You are the locked assistant."


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (CONSTRAINED, "BidiGenerateContentConstrained refused: no auth token"),
        (f"{CONSTRAINED}?access_token=auth_tokens/forged", "unknown auth token"),
        (f"{CONSTRAINED}?key={API_KEY}", "unknown auth token"),
        (
            "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent"
            "?access_token={token}",
            "Method doesn't allow unregistered callers",
        ),
        (
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
            "?key=wrong-key",
            "API key not valid",
        ),
    ],
)
async def test_live_connections_without_the_right_credential_are_closed(
    path: str, reason: str
) -> None:
    async with emulator() as emu:
        token = await mint(emu)
        async with raw_client(emu, path.format(token=token)) as ws:
            await ws.send(orjson.dumps({"setup": {"model": f"models/{MODEL}"}}).decode())
            await ws.wait_closed()
        assert ws.close_code in (1007, 1008)
        assert ws.close_reason is not None and reason in ws.close_reason
        assert len(ws.close_reason.encode()) <= 123
        assert emu.sessions[0].setup is None
        assert emu.auth_tokens.tokens[token].used == 0


async def test_plain_sessions_with_the_api_key_are_untouched() -> None:
    async with emulator() as emu:
        async with raw_client(
            emu,
            f"/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
            f"?key={API_KEY}",
        ) as ws:
            await set_up(ws)
        assert emu.sessions[0].auth_token is None
