"""POST /v1/live-token end to end: a first-party client gets a Gemini Live ephemeral token minted by
the real SDK against the emulator, talks to the model with it, and never sees the API key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types
from starlette.applications import Starlette
from websockets.asyncio.client import connect as ws_connect

from phone_agent.app import GeminiTarget
from phone_agent.config import ConfigError, Settings, load_settings
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone, Trigger
from phone_agent.live_tokens import PATH, LiveTokenIssuer, live_token_routes

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(30),
    # The SDK calls ephemeral tokens experimental, on every connection.
    pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning"),
]

API_KEY = "AIza-the-servers-own-key-0123456789"
SECRET = "first-party-client-secret-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "_env_file": None,
        "live_token_client_secret": SECRET,
        "system_prompt": "You answer for the corner shop.",
    }
    base.update(values)
    return Settings(**base)


def emulator() -> GeminiEmulator:
    reply = Reply.of("Corner shop, how can I help?", Tone(440.0, 200), trigger=Trigger.ANY)
    return GeminiEmulator(EmulatorScript(default_reply=reply), speed=float("inf"), api_key=API_KEY)


def target(emu: GeminiEmulator, api_key: str = API_KEY) -> GeminiTarget:
    return GeminiTarget(emu.base_url, api_key, emu.client_ssl_context())


@contextlib.asynccontextmanager
async def server(
    config: Settings, issuer: LiveTokenIssuer | None, address: str = "203.0.113.7"
) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=live_token_routes(config, issuer))
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent.test") as client:
        yield client


def assert_no_key(response: httpx.Response) -> None:
    """What the page receives, byte for byte: no API key, in the body or any header."""
    raw = response.content + b"".join(k + b": " + v for k, v in response.headers.raw)
    assert API_KEY.encode() not in raw
    assert b"Traceback" not in raw


@contextlib.asynccontextmanager
async def browser_session(
    emu: GeminiEmulator, token: str, model: str
) -> AsyncIterator[genai.live.AsyncSession]:
    client = genai.Client(
        api_key=token,
        http_options={
            "api_version": "v1alpha",
            "base_url": emu.base_url,
            "async_client_args": {"ssl": emu.client_ssl_context()},
        },
    )
    try:
        async with client.aio.live.connect(
            model=model, config=types.LiveConnectConfig(system_instruction="Be a pirate.")
        ) as session:
            yield session
    finally:
        await client.aio.aclose()


async def test_a_first_party_client_talks_to_the_model_with_a_single_use_token() -> None:
    config = settings()
    async with (
        emulator() as emu,
        server(config, LiveTokenIssuer.from_settings(config, target(emu))) as http,
    ):
        response = await http.post(PATH, headers=AUTH)
        assert response.status_code == 200, response.text
        assert_no_key(response)
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        token = body["token"]
        assert token.startswith("auth_tokens/") and token in emu.auth_tokens.tokens
        assert body["model"] == f"models/{config.model}" and body["api_version"] == "v1alpha"
        assert body["websocket_url"] == (
            f"wss://127.0.0.1:{emu.port}/ws/google.ai.generativelanguage.v1alpha"
            ".GenerativeService.BidiGenerateContentConstrained"
        )
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(seconds=110) < expires - datetime.now(UTC) <= timedelta(seconds=120)

        async with browser_session(emu, token, config.model) as live:
            await live.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="Hello?")]),
                turn_complete=True,
            )
            messages = [message async for message in live.receive()]
        audio = [
            part.inline_data.data
            for m in messages
            if m.server_content and m.server_content.model_turn
            for part in m.server_content.model_turn.parts or []
            if part.inline_data and part.inline_data.data
        ]
        assert audio and messages[-1].server_content and messages[-1].server_content.turn_complete
        # The session ran with the server's setup, whatever the page asked for.
        setup = emu.sessions[0].setup
        assert setup is not None and emu.sessions[0].auth_token == token
        assert setup.system_instruction == "You answer for the corner shop."
        assert setup.voice == "Puck" and setup.output_transcription and setup.resumption

        with pytest.raises(errors.APIError) as again:
            async with browser_session(emu, token, config.model):
                pass
    assert again.value.code == 1008 and "already used" in str(again.value)


async def test_a_page_connects_to_the_hinted_url_with_access_token() -> None:
    config = settings()
    async with (
        emulator() as emu,
        server(config, LiveTokenIssuer.from_settings(config, target(emu))) as http,
    ):
        body = (await http.post(PATH, headers=AUTH)).json()
        url = f"{body['websocket_url']}?access_token={body['token']}"
        async with ws_connect(url, ssl=emu.client_ssl_context(), proxy=None) as ws:
            await ws.send(orjson.dumps({"setup": {"model": body["model"]}}).decode())
            assert orjson.loads(await ws.recv()) == {"setupComplete": {}}
            await ws.send(orjson.dumps({"realtimeInput": {"text": "Hello?"}}).decode())
            assert "serverContent" in orjson.loads(await ws.recv())
    assert emu.sessions[0].setup is not None
    assert emu.sessions[0].setup.system_instruction == "You answer for the corner shop."


async def test_a_token_is_refused_for_another_model() -> None:
    config = settings()
    async with (
        emulator() as emu,
        server(config, LiveTokenIssuer.from_settings(config, target(emu))) as http,
    ):
        token = (await http.post(PATH, headers=AUTH)).json()["token"]
        with pytest.raises(errors.APIError) as caught:
            async with browser_session(emu, token, "gemini-2.0-flash-live-001"):
                pass
    assert caught.value.code == 1008 and "locked to models/" in str(caught.value)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-secret-wrong-secret"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": SECRET},
        {"Authorization": f"Basic {SECRET}"},
    ],
)
async def test_without_the_client_secret_no_token_is_minted(headers: dict[str, str]) -> None:
    config = settings()
    async with (
        emulator() as emu,
        server(config, LiveTokenIssuer.from_settings(config, target(emu))) as http,
    ):
        response = await http.post(PATH, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_no_key(response)
        assert emu.auth_tokens.create_calls == 0


async def test_the_endpoint_is_off_without_a_client_secret() -> None:
    config = settings(live_token_client_secret=None)
    assert live_token_routes(config, None) == []
    async with server(config, None) as http:
        assert (await http.post(PATH, headers=AUTH)).status_code == 404


async def test_requests_are_rate_limited_per_address() -> None:
    config = settings(live_token_rate_limit_per_address=2)
    async with emulator() as emu:
        issuer = LiveTokenIssuer.from_settings(config, target(emu))
        app = Starlette(routes=live_token_routes(config, issuer))

        async def post(address: str, headers: dict[str, str]) -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(address, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://agent.test") as c:
                return await c.post(PATH, headers=headers)

        assert (await post("198.51.100.1", {})).status_code == 401  # guesses count too
        assert (await post("198.51.100.1", AUTH)).status_code == 200
        limited = await post("198.51.100.1", AUTH)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
        assert "error" in limited.json()
        assert (await post("198.51.100.2", AUTH)).status_code == 200
        assert emu.auth_tokens.create_calls == 2


async def test_gemini_refusing_is_a_plain_502() -> None:
    config = settings()
    async with emulator() as emu:
        issuer = LiveTokenIssuer.from_settings(config, target(emu, api_key="AIza-revoked-key-000"))
        async with server(config, issuer) as http:
            response = await http.post(PATH, headers=AUTH)
    assert response.status_code == 502
    assert response.json() == {"error": "Gemini did not issue a token; try again"}
    assert b"revoked" not in response.content and b"API key not valid" not in response.content


async def test_offline_mode_has_no_tokens_to_give() -> None:
    config = settings()
    assert LiveTokenIssuer.from_settings(config) is None  # no GEMINI_API_KEY
    async with server(config, None) as http:
        response = await http.post(PATH, headers=AUTH)
    assert response.status_code == 503 and "GEMINI_API_KEY" in response.json()["error"]


async def test_the_configured_key_and_base_url_mint_locked_single_use_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with emulator() as emu:
        monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_file))
        config = settings(
            gemini_api_key=API_KEY, gemini_base_url=emu.base_url, live_token_ttl_s=300
        )
        configured = LiveTokenIssuer.from_settings(config)  # its CA from SSL_CERT_FILE
        assert configured is not None
        assert (await configured.mint()).token in emu.auth_tokens.tokens
        now = datetime.now(UTC).replace(microsecond=0)
        issuer = LiveTokenIssuer(config, api_key=API_KEY, base_url=emu.base_url, clock=lambda: now)
        minted = await issuer.mint()
    issued = emu.auth_tokens.tokens[minted.token]
    assert issued.uses == 1 and issued.field_mask is None  # the whole setup is locked
    assert issued.expire_time == (now + timedelta(seconds=300)).timestamp()
    assert issued.new_session_expire_time == (now + timedelta(seconds=60)).timestamp()
    assert issued.setup is not None and issued.setup["model"] == f"models/{config.model}"
    assert issued.setup["system_instruction"]["parts"][0]["text"] == config.system_instruction()
    assert "tools" not in issued.setup  # the page could not run the server's tools
    assert minted.as_json()["expires_at"] == (now + timedelta(seconds=300)).isoformat().replace(
        "+00:00", "Z"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"live_token_client_secret": "short"}, "PHONE_AGENT_LIVE_TOKEN_CLIENT_SECRET"),
        ({"live_token_ttl_s": 1201}, "PHONE_AGENT_LIVE_TOKEN_TTL_S"),
        ({"live_token_rate_limit_per_address": -1}, "PHONE_AGENT_LIVE_TOKEN_RATE_LIMIT"),
    ],
)
def test_bad_settings_name_their_variable(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None, **values)
    assert (
        load_settings(_env_file=None, live_token_client_secret="").live_token_client_secret is None
    )
