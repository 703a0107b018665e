"""The emulator endpoint with a raw WebSocket client: paths, casing, malformed input, lifecycle."""

from __future__ import annotations

import base64
import contextlib
import math
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.genai import types
from google.genai.live import AsyncSession
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone, Trigger, http_options
from phone_agent.emulator import audio as pcm
from phone_agent.emulator.__main__ import main as cli_main

Connect = Callable[..., contextlib.AbstractAsyncContextManager[AsyncSession]]

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = {"setup": {"model": "models/test"}}


@contextlib.asynccontextmanager
async def raw_client(emu: GeminiEmulator, path: str = LIVE_PATH) -> AsyncIterator[ClientConnection]:
    url = f"wss://127.0.0.1:{emu.port}{path}"
    async with ws_connect(url, ssl=emu.client_ssl_context(), proxy=None) as ws:
        yield ws


async def recv_json(ws: ClientConnection) -> Any:
    return orjson.loads(await ws.recv())


async def set_up(ws: ClientConnection, setup: dict[str, Any] = SETUP) -> None:
    await ws.send(orjson.dumps(setup).decode())
    assert await recv_json(ws) == {"setupComplete": {}}


async def test_urls_certificates_and_sdk_options() -> None:
    emu = GeminiEmulator()
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    async with emu:
        assert emu.base_url == f"https://127.0.0.1:{emu.port}"
        assert emu.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        options = http_options(emu)
        assert options.keys() == emu.http_options().keys()
        assert options["base_url"] == emu.base_url and options["api_version"] == "v1beta"
        assert isinstance((options.get("async_client_args") or {})["ssl"], ssl.SSLContext)
        with pytest.raises(RuntimeError):
            await emu.start()
    assert not emu.ca_file.exists()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        GeminiEmulator(speed=0)
    with pytest.raises(ValueError):
        GeminiEmulator(chunk_ms=0)
    with pytest.raises(ValueError, match="clock must be one of wall, audio"):
        GeminiEmulator(clock="tape")  # type: ignore[arg-type]


async def test_other_paths_are_rejected() -> None:
    async with GeminiEmulator() as emu:
        with pytest.raises(InvalidStatus) as caught:
            async with raw_client(emu, "/ws/something/else"):
                pass
        assert caught.value.response.status_code == 404
        assert emu.sessions == []


async def test_path_is_matched_loosely_and_tokens_are_recorded() -> None:
    async with GeminiEmulator() as emu:
        token = emu.auth_tokens.issue({}).name  # the constrained method wants a real one
        path = (
            "/prefix//ws/google.ai.generativelanguage.v1alpha.GenerativeService"
            f".BidiGenerateContentConstrained?access_token={token}"
        )
        async with raw_client(emu, path) as ws:
            await set_up(ws)
        assert emu.sessions[0].api_key == token


async def test_camel_case_and_standard_base64_at_8_khz() -> None:
    script = EmulatorScript((Reply.of(audio=Tone(440.0, 40)),))
    speech = pcm.tone(300.0, 500, 0.25, 8000) + pcm.silence(600, 8000)
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with raw_client(emu) as ws:
            await set_up(ws, {"setup": {"model": "m", "generation_config": {}}})
            for chunk in pcm.chunks(speech, 100, 8000):
                blob = {"mimeType": "audio/pcm;rate=8000", "data": base64.b64encode(chunk).decode()}
                await ws.send(orjson.dumps({"realtimeInput": {"mediaChunks": [blob]}}))
            first = await recv_json(ws)
            part = first["serverContent"]["modelTurn"]["parts"][0]["inlineData"]
            assert part["mimeType"] == "audio/pcm;rate=24000"
            assert len(base64.b64decode(part["data"], validate=True)) == 1920
        record = emu.sessions[0]
        assert bytes(record.audio_in_pcm) == speech
        assert record.audio_in_rate == 8000 and record.audio_in_ms == 1100.0


async def test_unknown_keys_are_ignored() -> None:
    script = EmulatorScript((Reply.of("ok", trigger=Trigger.TEXT),))
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with raw_client(emu) as ws:
            await set_up(ws)
            await ws.send('{"someFutureMessage": {"x": 1}}')
            await ws.send('{"realtime_input": {"text": "hi", "futureField": 2}}')
            assert "serverContent" in await recv_json(ws)
        kinds = [(r.kind, r.data) for r in emu.sessions[0].client_messages]
        assert ("unknown", {"key": "some_future_message"}) in kinds
        assert ("unknown", {"key": "realtime_input.future_field"}) in kinds


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        ("not json", None, 1007),
        ('{"realtime_input": {"text": "hi"}}', None, 1008),
        ('{"setup": {"model": ""}}', None, 1007),
        (orjson.dumps(SETUP).decode(), "{oops", 1007),
        (orjson.dumps(SETUP).decode(), orjson.dumps(SETUP).decode(), 1008),
        (orjson.dumps(SETUP).decode(), '{"realtime_input": {"audio": {"data": "@@"}}}', 1007),
    ],
)
async def test_malformed_input_closes_the_connection(
    first: str, second: str | None, code: int
) -> None:
    async with GeminiEmulator() as emu:
        async with raw_client(emu) as ws:
            await ws.send(first)
            if second is not None:
                assert await recv_json(ws) == {"setupComplete": {}}
                await ws.send(second)
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            assert caught.value.rcvd is not None and caught.value.rcvd.code == code
        record = emu.sessions[0]
        await emu.wait_for(lambda: record.ended)
        assert (record.closed_by, record.close_code) == ("emulator", code)
        assert record.error


async def test_a_malformed_client_does_not_disturb_another(connect: Connect) -> None:
    script = EmulatorScript((Reply.of("still here", trigger=Trigger.ANY),))
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as good:
            async with raw_client(emu) as bad:
                await set_up(bad)
                await bad.send("{{{")
                with pytest.raises(ConnectionClosed):
                    await bad.recv()
            await good.send_realtime_input(text="Are you there?")
            messages = [m async for m in good.receive()]
            text = "".join(
                m.server_content.output_transcription.text or ""
                for m in messages
                if m.server_content and m.server_content.output_transcription
            )
            assert text == "still here"
            assert isinstance(messages[-1], types.LiveServerMessage)
        good_record, bad_record = emu.sessions
        assert bad_record.close_code == 1007 and good_record.error is None


async def test_wait_for_times_out() -> None:
    async with GeminiEmulator() as emu:
        with pytest.raises(TimeoutError, match=r"within 0\.01 s"):
            await emu.wait_for(lambda: False, timeout=0.01)


def test_cli_rejects_a_bad_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"replies": [{"trigger": "never"}]}')
    assert cli_main(["--script", str(path)]) == 2
    assert "replies[0].trigger" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_stopped(stop: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "phone_agent.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url_line = process.stdout.readline()
        ca_line = process.stdout.readline()
        assert url_line.startswith("Gemini Live emulator: https://127.0.0.1:")
        ca_file = Path(ca_line.split(":", 1)[1].strip())
        assert ca_file.exists()
        process.send_signal(stop)
        assert process.wait(timeout=10) == 0
        assert not ca_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def test_odd_but_valid_input_is_survived() -> None:
    script = EmulatorScript((Reply.of("fine", trigger=Trigger.TEXT),))
    odd = [
        {"realtime_input": {}},
        {"realtime_input": {"audio": {"data": "AAAA", "mime_type": "audio/pcm;rate=16000"}}},
        {"realtime_input": {"audio": {"data": "AA==", "mime_type": "audio/pcm;rate=16000"}}},
        {"realtime_input": {"video": {"data": "AAAA", "mime_type": "image/jpeg"}}},
        {"realtime_input": {"activityEnd": {}}},
        {"realtime_input": {"audioStreamEnd": True}},
        {"client_content": {"turns": [{"parts": 5}, {"parts": ["x", {"text": 3}]}]}},
        {"tool_response": {"functionResponses": [{"id": "nobody-asked", "name": "f"}]}},
    ]
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with raw_client(emu) as ws:
            await set_up(ws)
            for message in odd:
                await ws.send(orjson.dumps(message))
            # The stray tool response was a trigger nobody scripted; the text gets the reply.
            await ws.send(orjson.dumps({"realtime_input": {"text": "still there?"}}))
            while "turnComplete" not in (await recv_json(ws)).get("serverContent", {}):
                pass
        record = emu.sessions[0]
        await emu.wait_for(lambda: record.ended)
        assert record.error is None and record.closed_by == "client"
        assert record.unmatched_triggers == [Trigger.TOOL_RESPONSE]
        assert record.audio_in_ms == 0.0625  # one whole sample; odd bytes are not audio time
