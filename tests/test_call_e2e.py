"""End to end over real sockets: uvicorn on an ephemeral port, the real google-genai SDK talking to
the Gemini Live emulator over TLS, and the Twilio caller simulator as the phone."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import numpy as np
import numpy.typing as npt
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from phone_agent.app import create_app
from phone_agent.audio import pcm16_to_mulaw
from phone_agent.bridge import CallSummary, EndReason
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone
from phone_agent.gemini import GeminiConnector, ModelSessionClosed
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

pytestmark = pytest.mark.anyio


def caller_tone(freq: float, ms: int, dbfs: float = -12.0) -> bytes:
    """Speech stand-in: a tone as 8 kHz mu-law."""
    t = np.arange(8 * ms) / 8000
    amplitude = 32767 * 10 ** (dbfs / 20)
    return pcm16_to_mulaw((np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes())


def band_energy(pcm: npt.NDArray[np.int16], rate: int, freq: float, width: float = 30.0) -> float:
    if len(pcm) == 0:
        return 0.0
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float(spectrum[(freqs > freq - width) & (freqs < freq + width)].sum())


def active(pcm: npt.NDArray[np.int16], level: int = 500) -> npt.NDArray[np.int16]:
    """From the first to the last sample louder than `level`."""
    loud = np.flatnonzero(np.abs(pcm) > level)
    return pcm[loud[0] : loud[-1] + 1] if len(loud) else pcm[:0]


def dominant_hz(pcm: npt.NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


@dataclass
class Stack:
    emulator: GeminiEmulator
    app: Starlette
    media_url: str

    def summaries(self) -> list[CallSummary]:
        return list(self.app.state.phone_agent.summaries)


@asynccontextmanager
async def stack(script: EmulatorScript, *, speed: float = 2.0) -> AsyncIterator[Stack]:
    async with GeminiEmulator(script, speed=speed) as emulator:
        settings = Settings()
        connector = GeminiConnector(
            settings,
            api_key="test-key",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
        )
        app = create_app(settings, connect_model=connector.connect, keep_summaries=10)
        async with embedded_server(app) as base_url:
            media_url = base_url.replace("http://", "ws://") + "/twilio/media"
            yield Stack(emulator, app, media_url)


async def call(s: Stack, script: list[CallerStep], limit_s: float = 20.0) -> CallRecord:
    """Dial the media socket as Twilio would, with the stream token the webhook would mint."""
    call_sid = new_call_sid()
    parameters = s.app.state.phone_agent.stream_parameters(call_sid)
    simulator = TwilioCallerSimulator(
        s.media_url, script, call_sid=call_sid, custom_parameters=parameters
    )
    with anyio.fail_after(limit_s):
        return await simulator.run()


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def wait_for_summaries(s: Stack, n: int) -> list[CallSummary]:
    # The bridge records its summary just after the socket closes.
    with anyio.fail_after(5):
        await s.app.state.phone_agent.wait_calls_ended(n)
    return s.summaries()


async def test_caller_speaks_and_hears_the_agent_tone_through_both_conversions() -> None:
    script = EmulatorScript(
        replies=[Reply.of("Your order is on its way.", Tone(1000.0, 1200, 0.3))]
    )
    async with stack(script) as s:
        record = await call(
            s,
            [
                Silence(200),
                Say(caller_tone(300.0, 800)),
                WaitForAgentAudio(min_ms=1000),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
        [summary] = await wait_for_summaries(s, 1)
        [session] = s.emulator.sessions

    record.assert_clean()
    # Uplink: the model received the caller's 300 Hz at 16 kHz.
    caller_at_model = np.frombuffer(bytes(session.audio_in_pcm), dtype="<i2")
    assert abs(dominant_hz(caller_at_model, 16000) - 300.0) < 5
    # Downlink: the caller heard the model's 1 kHz tone, all of it.
    heard = record.heard_pcm16()
    assert abs(dominant_hz(active(heard), 8000) - 1000.0) < 5
    assert 1150 <= record.heard_ms <= 1260
    # What the caller heard is known from mark echoes, and it matches.
    [turn] = summary.tracker.turns if summary.tracker else []
    assert turn.fully_heard and abs(turn.heard_ms - record.heard_ms) < 25, (
        turn,
        record.marks_received,
        record.mark_echoes,
    )
    assert summary.end_reason is EndReason.CALLER_STOP
    assert summary.agent_transcript and "order" in "".join(summary.agent_transcript)


async def test_barge_in_clears_playback_and_no_interrupted_audio_is_heard_after() -> None:
    script = EmulatorScript(
        replies=[
            Reply.of("A very long answer.", Tone(1000.0, 6000, 0.3)),
            Reply.of("Sure.", Tone(600.0, 500, 0.3)),
        ]
    )
    # speed=1: the model is still generating when the caller talks over it.
    async with stack(script, speed=1.0) as s:
        record = await call(
            s,
            [
                Say(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=800),
                Say(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=300),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
        [summary] = await wait_for_summaries(s, 1)

    record.assert_clean()
    [clear] = record.clears
    clear_at = int(clear.t_ms * 8)
    before, after = record.heard_pcm16()[:clear_at], record.heard_pcm16()[clear_at:]
    assert band_energy(before, 8000, 1000.0) > 0
    # Nothing of the interrupted generation after the clear; the next answer is heard in full.
    assert band_energy(after, 8000, 1000.0) < 1e-4 * band_energy(after, 8000, 600.0)
    assert band_energy(after, 8000, 600.0) > 0
    assert summary.tracker is not None
    first, second = summary.tracker.turns
    assert first.interrupted and first.cleared and first.heard_ms < 6000
    assert second.fully_heard
    # The bridge's idea of what was heard of the cut-off turn matches the phone's, within a mark.
    heard_first = len(active(before)) / 8
    assert first.heard_ms <= heard_first + 25


async def test_bad_input_on_one_call_leaves_a_concurrent_call_alone() -> None:
    script = EmulatorScript(replies=[Reply.of("Hello.", Tone(1000.0, 600, 0.3))])
    async with stack(script) as s:

        async def bad_call() -> int | None:
            async with connect(s.media_url) as ws:
                await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
                await ws.send("this is not json")
                await ws.wait_closed()
                return ws.close_code

        async with anyio.create_task_group() as group:
            good: list[CallRecord] = []

            async def good_call() -> None:
                good.append(
                    await call(
                        s,
                        [
                            Say(caller_tone(300.0, 600)),
                            WaitForAgentAudio(min_ms=500),
                            WaitForAgentSilence(ms=300),
                            HangUp(),
                        ],
                    )
                )

            group.start_soon(good_call)
            codes = [await bad_call()]
        summaries = await wait_for_summaries(s, 2)

    assert codes == [1008]
    good[0].assert_clean()
    assert good[0].heard_ms >= 550
    reasons = sorted(x.end_reason.value for x in summaries if x.end_reason)
    assert reasons == ["caller_stop", "protocol_error"]


async def test_ssl_cert_file_is_honoured_for_a_local_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with GeminiEmulator(EmulatorScript()) as emulator:
        monkeypatch.setenv("SSL_CERT_FILE", str(emulator.ca_file))
        # No explicit TLS context: the emulator's CA comes from SSL_CERT_FILE alone.
        connector = GeminiConnector(Settings(), api_key="k", base_url=emulator.base_url)
        async with connector.connect() as session:
            await session.send_text("hello")
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusting = GeminiConnector(Settings(), api_key="k", base_url=emulator.base_url)
        with pytest.raises(ModelSessionClosed):
            async with untrusting.connect():
                pass
