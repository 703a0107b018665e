"""Bad input from either side, end to end over real sockets.

A model that misbehaves (the emulator scripted to): messages with keys the SDK does not know,
audio that is not base64, not 16-bit PCM at 24 kHz or of an odd length, a server that never
finishes set-up, a connection aborted mid-answer. And a phone that stops reading. For each: one
clear log line, the call recovers or ends the way Twilio expects (the apology when the model
cannot be reached), a call alongside is not disturbed, and nothing is buffered without bound.

A 1011 close mid-answer is covered by test_conversation_e2e.py
(`test_a_1011_drop_mid_answer_is_recovered`, and its recorded replay) and, at the SDK, by
emulator/test_conversation.py (`test_scripted_close_mid_reply`); the TCP abort (1006) is here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from starlette.applications import Starlette
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from phone_agent import gemini
from phone_agent.app import AppState, create_app
from phone_agent.bridge import CallSummary, EndReason
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import (
    Close,
    EmulatorScript,
    GeminiEmulator,
    Raw,
    Reply,
    Say,
    Tone,
    Trigger,
)
from phone_agent.emulator import audio as pcm
from phone_agent.emulator.tls import EmulatorTLS
from phone_agent.model_link import ModelLink, ModelUnavailable
from phone_agent.simulator import (
    CallerStep,
    CallRecord,
    HangUp,
    Silence,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)
from phone_agent.simulator import Say as CallerSay

from .test_call_e2e import caller_tone, dominant_hz

pytestmark = pytest.mark.anyio

TOKEN = "bad-input-token"
PUBLIC = "https://agent.example.com"
TRANSFER = "+15557654321"


# -- the stack: emulator, app on uvicorn, calls -------------------------------------------------


@dataclass
class Stack:
    emulator: GeminiEmulator
    app: Starlette
    base_url: str

    @property
    def media_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/twilio/media"

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.phone_agent
        return state

    def summary(self, call_sid: str) -> CallSummary:
        [summary] = [s for s in self.state.summaries if s.call_sid == call_sid]
        return summary

    async def calls_ended(self, count: int) -> None:
        with anyio.fail_after(10):  # a hang guard, not a measurement
            await self.state.wait_calls_ended(count)


def settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "greeting": "",
        "silence_reprompt_s": 0,
        "silence_hang_up_s": 0,
        "prewarm": False,
    }
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def stack(
    script: EmulatorScript,
    config: Settings | None = None,
    *,
    speed: float = 2.0,
    setup_timeout_s: float = 10.0,
) -> AsyncIterator[Stack]:
    config = config or settings()
    async with GeminiEmulator(script, speed=speed) as emulator:
        connector = gemini.GeminiConnector(
            config,
            api_key="test-key",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
            setup_timeout_s=setup_timeout_s,
        )
        app = create_app(config, connect_model=connector.connect, keep_summaries=10)
        async with embedded_server(app) as base_url:
            yield Stack(emulator, app, base_url)


async def place(
    s: Stack, steps: Sequence[CallerStep], call_sid: str | None = None
) -> tuple[str, CallRecord]:
    """Dial the media socket as Twilio would, with the stream token the webhook would mint."""
    call_sid = call_sid or new_call_sid()
    parameters = s.state.stream_parameters(call_sid)
    simulator = TwilioCallerSimulator(
        s.media_url, steps, call_sid=call_sid, custom_parameters=parameters
    )
    with anyio.fail_after(20):
        return call_sid, await simulator.run()


async def ended(s: Stack, call_sid: str) -> CallSummary:
    """`call_sid`'s summary, once that call has ended (whichever others end first)."""
    state = s.state
    with anyio.fail_after(10):  # a hang guard, not a measurement
        count = state.calls_ended + 1
        while not any(x.call_sid == call_sid for x in state.summaries):
            await state.wait_calls_ended(count)
            count += 1
    return s.summary(call_sid)


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


HEALTHY: list[CallerStep] = [
    CallerSay(caller_tone(300.0, 600)),
    WaitForAgentAudio(min_ms=550),
    WaitForAgentSilence(ms=300),
    HangUp(),
]
HEALTHY_REPLY = Reply.of("Hello there.", Tone(600.0, 600, 0.3))


def assert_healthy(record: CallRecord) -> None:
    """The call alongside heard its whole 600 Hz answer, and nothing broke the protocol."""
    record.assert_clean()
    assert record.heard_ms >= 550
    assert abs(dominant_hz(record.heard_pcm16(), 8000) - 600.0) < 10


def bad_output_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if getattr(r, "event", None) == "model.bad_output" and r.levelno == logging.WARNING
    ]


def pcm_part(data: str, mime: str = "audio/pcm;rate=24000") -> dict[str, object]:
    return {
        "serverContent": {
            "modelTurn": {"parts": [{"inlineData": {"mimeType": mime, "data": data}}]}
        }
    }


def purity(samples: npt.NDArray[np.int16], freq: float) -> float:
    """The share of the audio's energy within 60 Hz of `freq`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    return float(spectrum[np.abs(freqs - freq) < 60].sum() / spectrum.sum())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- (a) unknown keys ------------------------------------------------------------------------


async def test_messages_with_unknown_keys_are_skipped_and_the_answer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reply = Reply(
        [
            Say("Your order", Tone(1000.0, 400, 0.3)),
            # Only keys a newer API might add: the SDK cannot parse it at all.
            Raw({"futureMessage": {"detail": "x"}}),
            # Unknown fields next to known ones: the SDK keeps what it knows.
            Raw({"serverContent": {"futureField": 1, "outputTranscription": {"text": " is"}}}),
            Say(" on its way.", Tone(1000.0, 400, 0.3)),
        ]
    )
    async with stack(EmulatorScript([reply])) as s:
        call_sid, record = await place(
            s,
            [
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=750),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
        await s.calls_ended(1)
        summary = s.summary(call_sid)

    record.assert_clean()
    assert record.heard_ms >= 750  # both halves of the answer
    assert summary.end_reason is EndReason.CALLER_STOP and summary.reconnects == 0
    assert "".join(summary.agent_transcript) == "Your order is on its way."
    assert bad_output_lines(caplog) == [
        "bad model output: unparsable server message skipped (no field the SDK knows (TypeError))"
    ]


# -- (b) garbage audio -----------------------------------------------------------------------


async def test_garbage_audio_is_never_played_and_a_call_alongside_is_undisturbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tone = pcm.tone(1000.0, 200, 0.3)
    noise = np.random.default_rng(7).integers(-20000, 20000, 4800, dtype="<i2").tobytes()
    reply = Reply(
        [
            Say("One", Tone(1000.0, 400, 0.3)),
            Raw(pcm_part("!!not base64!!")),
            Raw(pcm_part(b64(noise), mime="audio/mpeg")),
            Raw(pcm_part(b64(noise), mime="audio/pcm;rate=16000")),
            Raw(pcm_part(b64(tone + b"\x01"))),  # odd length: whole samples, then one byte
            Say("two", Tone(1000.0, 400, 0.3)),
        ]
    )
    async with stack(EmulatorScript([reply])) as s:
        bad_sid = new_call_sid()
        healthy: list[tuple[str, CallRecord]] = []

        async def alongside() -> None:
            await s.emulator.wait_for_session(0)  # the garbage call is connected...
            s.emulator.script = EmulatorScript([HEALTHY_REPLY])  # ...this one gets a sane model
            healthy.append(await place(s, HEALTHY))

        async with anyio.create_task_group() as group:
            group.start_soon(alongside)
            _, record = await place(
                s,
                [
                    CallerSay(caller_tone(300.0, 600)),
                    WaitForAgentAudio(min_ms=950),
                    WaitForAgentSilence(ms=300),
                    HangUp(),
                ],
                bad_sid,
            )
        await s.calls_ended(2)
        summary, good = s.summary(bad_sid), s.summary(healthy[0][0])

    record.assert_clean()
    assert summary.end_reason is EndReason.CALLER_STOP and summary.reconnects == 0
    # The caller heard the two tones and the odd-length one, and nothing else: no noise, and no
    # sample shifted by a stray byte (that turns the rest of the turn into noise).
    heard = np.frombuffer(bytes(record.received_audio), dtype=np.uint8)
    played = record.heard_pcm16()
    assert 950 <= len(heard) / 8 <= 1100
    assert purity(played, 1000.0) > 0.95
    # The tones peak at 0.3 of full scale; noise, or samples shifted by a byte, go far higher.
    assert np.abs(played.astype(np.int32)).max() < 0.4 * 32768
    assert bad_output_lines(caplog) == [
        "bad model output: unparsable server message skipped "
        "(serverContent.modelTurn.parts: data is not base64)",
        "bad model output: model audio in an unexpected format dropped ('audio/mpeg')",
        "bad model output: model audio of an odd length cut to whole samples (9601 bytes)",
    ]
    assert good.started_at < summary.ended_at  # alongside, and undisturbed:
    assert good.end_reason is EndReason.CALLER_STOP
    assert_healthy(healthy[0][1])


# -- (c) a server that never finishes set-up ------------------------------------------------


def signed(path: str, form: dict[str, str]) -> dict[str, str]:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, form)
    return {"X-Twilio-Signature": str(signature)}


def stream_parameters(twiml: str) -> dict[str, str]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}


async def dial_via_webhook(
    s: Stack, http: httpx.AsyncClient, call_sid: str
) -> tuple[dict[str, str], TwilioCallerSimulator]:
    """Twilio's side of a call: the voice webhook, then the media stream its TwiML names."""
    form = {"CallSid": call_sid, "From": "+15550001111", "To": "+15557654321"}
    voice = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    assert voice.status_code == 200, voice.text
    simulator = TwilioCallerSimulator(
        s.media_url,
        [Silence(10_000)],  # the caller waits to hear something
        call_sid=call_sid,
        custom_parameters=stream_parameters(voice.text),
    )
    return form, simulator


async def stream_ended(http: httpx.AsyncClient, form: dict[str, str]) -> ET.Element:
    """What Twilio gets from `<Connect action>` once the stream has closed."""
    response = await http.post(
        "/twilio/stream-ended", data=form, headers=signed("/twilio/stream-ended", form)
    )
    assert response.status_code == 200, response.text
    return ET.fromstring(response.text)


def assert_apology(twiml: ET.Element) -> None:
    say, dial = twiml.find("Say"), twiml.find("Dial")
    assert say is not None and "not available" in (say.text or "")
    assert dial is not None and dial.text == TRANSFER


WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TWILIO = {"twilio_auth_token": TOKEN, "public_url": PUBLIC, "transfer_number": TRANSFER}


async def test_a_model_that_never_finishes_set_up_gets_the_caller_an_apology(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hung = EmulatorScript([HEALTHY_REPLY], setup_complete=False)
    async with (
        stack(hung, settings(**TWILIO), setup_timeout_s=1.0) as s,
        httpx.AsyncClient(base_url=s.base_url) as http,
    ):
        bad_sid = new_call_sid()
        healthy: list[tuple[str, CallRecord]] = []

        async def alongside() -> None:
            await s.emulator.wait_for_session(0)  # the first call waits on a hung set-up...
            s.emulator.script = EmulatorScript([HEALTHY_REPLY])  # ...while this one is answered
            healthy.append(await place(s, HEALTHY))

        form, simulator = await dial_via_webhook(s, http, bad_sid)
        async with anyio.create_task_group() as group:
            group.start_soon(alongside)
            with anyio.fail_after(10):
                record = await simulator.run()
        await s.calls_ended(2)
        twiml = await stream_ended(http, form)
        hung_session = s.emulator.sessions[0]
        await s.emulator.wait_for(lambda: hung_session.ended)
        bad, good = s.summary(bad_sid), s.summary(healthy[0][0])

    assert bad.end_reason is EndReason.MODEL_UNAVAILABLE
    assert bad.detail == "model session closed (code None): no setupComplete within 1 s"
    assert not record.close.by_caller and record.heard_ms == 0
    assert_apology(twiml)  # never dead air: Twilio says sorry and puts the caller through
    # The connector gave up and closed its connection: nothing is left open on the model side.
    assert hung_session.closed_by == "client" and hung_session.sent == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings if r.name == "phone_agent.gemini"] == [
        "model session not set up within 1 s"
    ]
    assert [getattr(r, "reason", None) for r in warnings if r.name == "phone_agent.bridge"] == [
        "model_unavailable"
    ]
    # The healthy call overlapped the hung one, and did not notice it.
    assert good.started_at < bad.ended_at < good.ended_at
    assert good.end_reason is EndReason.CALLER_STOP
    assert_healthy(healthy[0][1])


async def test_a_hung_set_up_while_the_phone_rings_still_ends_in_the_apology(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Pre-warming (at the webhook) meets the hung server first, then the stream's own attempt.
    hung = EmulatorScript(setup_complete=False)
    config = settings(prewarm=True, **TWILIO)
    async with (
        stack(hung, config, setup_timeout_s=0.3) as s,
        httpx.AsyncClient(base_url=s.base_url) as http,
    ):
        call_sid = new_call_sid()
        form, simulator = await dial_via_webhook(s, http, call_sid)
        with anyio.fail_after(10):
            await simulator.run()
        await s.calls_ended(1)
        twiml = await stream_ended(http, form)
        sessions = s.emulator.sessions
        await s.emulator.wait_for(lambda: all(x.ended for x in sessions))

    assert s.summary(call_sid).end_reason is EndReason.MODEL_UNAVAILABLE
    assert_apology(twiml)
    assert len(sessions) == 2 and all(x.closed_by == "client" for x in sessions)
    assert any(r.getMessage().startswith("pre-warming failed") for r in caplog.records)


async def test_a_set_up_that_times_out_leaves_no_connection_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against a server that takes the WebSocket handshake and then answers nothing, not even
    the client's close frame, the connector still drops its connection (after CLOSE_TIMEOUT_S):
    hung set-ups must not leak sockets, call after call."""
    monkeypatch.setattr(gemini, "CLOSE_TIMEOUT_S", 0.2)
    tls = EmulatorTLS()
    hung_up = anyio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        [key] = [
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        ]
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.read(65536):  # read and ignore: the setup, the close frame
                pass
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=tls.server_context())
    try:
        port = server.sockets[0].getsockname()[1]
        connector = gemini.GeminiConnector(
            settings(),
            api_key="test-key",
            base_url=f"https://127.0.0.1:{port}",
            ssl_context=tls.client_context(),
            setup_timeout_s=0.2,
        )
        with pytest.raises(gemini.ModelSessionClosed, match=r"no setupComplete within 0\.2 s"):
            async with connector.connect():
                pass  # pragma: no cover - never set up
        with anyio.fail_after(5):  # a hang guard: without the drop, the socket stays open
            await hung_up.wait()
    finally:
        server.close()
        await server.wait_closed()
        tls.close()


async def test_reconnects_that_never_finish_set_up_end_in_model_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropping = EmulatorScript(
        [Reply([Say("Your order", Tone(1000.0, 200, 0.3)), Close(1011)], trigger=Trigger.TEXT)]
    )
    async with GeminiEmulator(dropping, speed=math.inf) as emulator:
        connector = gemini.GeminiConnector(
            settings(),
            api_key="test-key",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
            setup_timeout_s=0.3,
        )
        events: list[object] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                link = ModelLink(
                    connector.connect, group, clock=time.monotonic, retry_delays_s=(0.0, 0.0)
                )
                await link.open()
                await emulator.wait_for_session(0)
                emulator.script = EmulatorScript(setup_complete=False)  # every reconnect hangs
                await link.send_text("Where is my order?")
                with pytest.raises(ModelUnavailable):
                    async for event in link.events():
                        events.append(event)
                group.cancel_scope.cancel()
            link.close()
        sessions = emulator.sessions
        await emulator.wait_for(lambda: all(x.ended for x in sessions))

    assert any(isinstance(e, gemini.ModelAudio) for e in events)
    assert [x.close_code for x in sessions] == [1011, 1011, 1011]
    assert [x.closed_by for x in sessions] == ["emulator", "client", "client"]
    assert [r.getMessage() for r in caplog.records if r.name == "phone_agent.model_link"] == [
        "model session dropped (code 1011); resuming",
        "reconnect attempt 1 failed: model session closed (code None): "
        "no setupComplete within 0.3 s",
        "reconnect attempt 2 failed: model session closed (code None): "
        "no setupComplete within 0.3 s",
    ]


# -- (d) the connection aborted mid-answer (1011 is in test_conversation_e2e.py) ------------


async def test_a_connection_aborted_mid_answer_is_recovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = EmulatorScript(
        [
            Reply(
                [Say("Your order has", Tone(1000.0, 800, 0.3)), Close(1006)],
                input_transcript="where is my order",
            )
        ]
    )
    after = EmulatorScript([Reply.of("shipped.", Tone(1000.0, 600, 0.3), trigger=Trigger.TEXT)])
    async with stack(first) as s:

        async def resume_with_the_rest() -> None:
            await s.emulator.wait_for_session(0)
            s.emulator.script = after

        async with anyio.create_task_group() as group:
            group.start_soon(resume_with_the_rest)
            call_sid, record = await place(
                s,
                [
                    CallerSay(caller_tone(300.0, 600)),
                    WaitForAgentAudio(min_ms=1350),
                    WaitForAgentSilence(ms=300),
                    HangUp(),
                ],
            )
        await s.calls_ended(1)
        summary = s.summary(call_sid)
        dropped = s.emulator.sessions[0]

    record.assert_clean()
    assert record.heard_ms >= 1350  # the first half, then the rest from the resumed session
    assert summary.reconnects == 1 and summary.end_reason is EndReason.CALLER_STOP
    assert (dropped.closed_by, dropped.close_code) == ("emulator", 1006)
    assert "model session dropped (code 1006); resuming" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    ]


# -- a server that sends nothing but garbage --------------------------------------------------


async def test_a_session_sending_only_garbage_counts_as_closed_after_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="phone_agent.gemini")
    limit = gemini.GeminiSession.MAX_UNPARSABLE_IN_A_ROW
    garbage = Reply([Raw(f"garbage {i}") for i in range(limit + 10)], trigger=Trigger.TEXT)
    async with GeminiEmulator(EmulatorScript([garbage]), speed=math.inf) as emulator:
        connector = gemini.GeminiConnector(
            settings(),
            api_key="test-key",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
        )
        with anyio.fail_after(10):
            async with connector.connect() as session:
                await session.send_text("hello")
                with pytest.raises(gemini.ModelSessionClosed) as closed:
                    async for _ in session.events():
                        pass
        assert session.skipped == limit
    assert closed.value.reason == f"{limit} unparsable messages in a row"
    lines = [r for r in caplog.records if getattr(r, "event", None) == "model.bad_output"]
    # One warning, then the same problem only at DEBUG: a broken server does not flood the log.
    assert [r.levelno for r in lines] == [logging.WARNING] + [logging.DEBUG] * (limit - 1)


# -- a phone that stops reading ---------------------------------------------------------------


@asynccontextmanager
async def deaf_phone(s: Stack, call_sid: str) -> AsyncIterator[ClientConnection]:
    """Twilio's side of a stream that sends `start` and then a frame every 20 ms, but never reads
    what the server sends: websockets stops reading the socket once one message is queued
    (`max_queue=1`), so the server's writes back up in the kernel as they would on a real network.
    """
    stream_sid = "MZ" + call_sid[2:]
    sequence = itertools.count(1)

    def message(event: str, **body: object) -> str:
        numbered = {"event": event, "sequenceNumber": str(next(sequence)), "streamSid": stream_sid}
        return orjson.dumps({**numbered, **body}).decode()

    start = {
        "accountSid": "AC" + "0" * 32,
        "streamSid": stream_sid,
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": s.state.stream_parameters(call_sid),
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    frame = base64.b64encode(b"\xff" * 160).decode("ascii")

    async def talk(ws: ClientConnection) -> None:
        for chunk in itertools.count(1):
            media = {"chunk": str(chunk), "timestamp": str(20 * chunk), "payload": frame}
            try:
                await ws.send(message("media", media=media))
            except ConnectionClosed:
                return
            await anyio.sleep(0.02)  # Twilio's pace, not a synchronisation

    # compression=None: Twilio does not negotiate permessage-deflate.
    async with connect(s.media_url, max_queue=1, compression=None) as ws:
        await ws.send(orjson.dumps({"event": "connected", "protocol": "Call"}).decode())
        await ws.send(message("start", start=start))
        async with anyio.create_task_group() as group:
            group.start_soon(talk, ws)
            yield ws
            group.cancel_scope.cancel()


async def read_everything(ws: ClientConnection) -> tuple[int, int]:
    """Read what the server wrote until it closed: agent audio bytes and marks. (The phone's
    own frames stop when the server's close arrives.)"""
    audio = marks = 0
    with anyio.fail_after(10):
        try:
            async for message in ws:
                body = orjson.loads(message)
                if body["event"] == "media":
                    audio += len(base64.b64decode(body["media"]["payload"]))
                elif body["event"] == "mark":
                    marks += 1
        except ConnectionClosed:
            pass
    return audio, marks


async def test_a_phone_that_stops_reading_is_hung_up_with_bounded_audio_in_flight(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="phone_agent.bridge")
    hello = EmulatorScript([Reply.of("Hi.", Tone(600.0, 1500, 0.3), trigger=Trigger.TEXT)])
    # To the deaf phone, the model greets with half a minute of audio, as fast as it can: far
    # more than the phone may leave unconfirmed (2 s), all of it in well under a second.
    long_greeting = EmulatorScript(
        [Reply.of("Hello!", Tone(1000.0, 30_000, 0.3), trigger=Trigger.TEXT)]
    )
    config = settings(greeting="Greet the caller.", max_unheard_s=2.0)
    async with stack(hello, config, speed=math.inf) as s:
        deaf_sid = new_call_sid()
        healthy: list[tuple[str, CallRecord]] = []

        async def healthy_call() -> None:
            # A phone that plays and confirms everything, on the same server, at the same time.
            steps: list[CallerStep] = [WaitForAgentAudio(1400), WaitForAgentSilence(300), HangUp()]
            healthy.append(await place(s, steps))

        async with anyio.create_task_group() as group:
            group.start_soon(healthy_call)
            await s.emulator.wait_for_session(0)
            s.emulator.script = long_greeting
            async with deaf_phone(s, deaf_sid) as ws:
                # The server gives up on the deaf phone while it is still sending...
                summary = await ended(s, deaf_sid)
                # ...and only then does the phone read: everything the server had written for it.
                audio_bytes, marks = await read_everything(ws)
        await s.calls_ended(2)
        model_session = s.emulator.sessions[1]
        await s.emulator.wait_for(lambda: model_session.ended)
        good = s.summary(healthy[0][0])

    assert summary.end_reason is EndReason.PLAYBACK_STALLED
    assert summary.detail == "the phone stopped confirming playback"
    # What the server wrote for the deaf phone, counted on the wire, is what the bridge counted:
    # the unheard limit plus at most one chunk of the model's audio (40 ms), however fast the
    # model speaks. Nothing else was held back for it.
    assert summary.tracker is not None
    sent_ms = sum(turn.sent_ms for turn in summary.tracker.turns)
    assert audio_bytes / 8 == sent_ms
    assert 2000 < sent_ms <= 2000 + 40 + 5
    assert marks == sum(turn.marks_sent for turn in summary.tracker.turns)
    # Its model session was closed with the call, not left talking.
    assert model_session.closed_by == "client"
    ends = [r.__dict__ for r in caplog.records if getattr(r, "event", None) == "call.end"]
    assert [end["reason"] for end in ends if end["call_sid"] == deaf_sid] == ["playback_stalled"]
    # The call alongside overlapped it, and heard its whole answer.
    assert good.started_at < summary.ended_at < good.ended_at
    assert good.end_reason is EndReason.CALLER_STOP
    [(_, record)] = healthy
    record.assert_clean()
    assert record.heard_ms >= 1400
