"""Pacing on the wall and audio clocks: the pacer alone, then the audio clock end to end."""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from phone_agent.emulator import (
    EmulatorScript,
    GeminiEmulator,
    GoAway,
    Outcome,
    Recorded,
    Reply,
    Tone,
)
from phone_agent.emulator import audio as pcm
from phone_agent.emulator.pacing import (
    AudioClock,
    Changes,
    Interrupted,
    Pacer,
    WallClock,
    wait_until,
)

from .test_server import raw_client, set_up

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

INPUT_RATE = 16_000
FRAME_MS = 20


class FakeAudio:
    """Caller audio time, advanced by hand."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.changes = Changes()
        self.clock = AudioClock(lambda: self.ms)

    def feed(self, ms: float) -> None:
        self.ms += ms
        self.changes.notify()

    def pacer(self, origin: float = 0.0, speed: float = 1.0) -> Pacer:
        return Pacer(self.clock, self.changes, origin, speed)


async def settle() -> None:
    """Let every ready task run (yielding, not sleeping)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the pacer -------------------------------------------------------------------------------------


async def test_a_point_is_due_once_enough_caller_audio_has_arrived() -> None:
    audio = FakeAudio()
    pacer = audio.pacer(origin=1000.0, speed=2.0)
    audio.ms = 1000.0
    waiting = asyncio.create_task(pacer.until(100.0))  # due at 1000 + 100 / 2
    await settle()
    assert not waiting.done()
    audio.feed(40.0)
    await settle()
    assert not waiting.done()  # 1040 < 1050
    audio.feed(20.0)
    await settle()
    assert waiting.result() == 1050.0 and pacer.reached == 1050.0


async def test_at_infinite_speed_everything_is_due_at_the_origin() -> None:
    audio = FakeAudio()
    pacer = audio.pacer(origin=0.0, speed=math.inf)
    assert await pacer.until(60_000.0) == 0.0


async def test_on_the_audio_clock_speech_cuts_the_reply_where_it_started() -> None:
    audio = FakeAudio()
    pacer = audio.pacer()
    audio.feed(500.0)  # the reply fell behind, then the caller's speech started at 300
    pacer.stop(300.0)
    assert await pacer.until(200.0) == 200.0  # due before the speech: still sent
    assert pacer.check() == 200.0
    with pytest.raises(Interrupted):
        await pacer.until(300.0)


async def test_a_stop_wakes_a_waiting_reply() -> None:
    audio = FakeAudio()
    pacer = audio.pacer()
    waiting = asyncio.create_task(pacer.until(100.0))
    await settle()
    audio.ms = 60.0
    pacer.stop(60.0)
    await settle()
    with pytest.raises(Interrupted):
        waiting.result()


async def test_after_a_hold_later_points_are_due_no_earlier_and_keep_their_spacing() -> None:
    audio = FakeAudio()
    pacer = audio.pacer()
    audio.feed(1000.0)
    assert await pacer.until(100.0) == 100.0
    await pacer.hold(lambda: 250.0)  # e.g. a tool response at 250
    assert await pacer.until(150.0) == 250.0
    assert await pacer.until(200.0) == 300.0
    assert await pacer.until(600.0) == 700.0


async def test_a_hold_is_cut_unless_answered_before_the_speech() -> None:
    audio = FakeAudio()
    pacer = audio.pacer()
    answer: list[float] = []
    holding = asyncio.create_task(pacer.hold(lambda: answer[0] if answer else None))
    await settle()
    assert not holding.done()
    answer.append(120.0)
    audio.changes.notify()
    await settle()
    assert holding.done() and pacer.reached == 120.0

    pacer.stop(200.0)
    await pacer.hold(lambda: 150.0)  # answered before the speech started
    for late in (lambda: 200.0, lambda: None):
        with pytest.raises(Interrupted):
            await pacer.hold(late)


async def test_on_the_wall_clock_speech_stops_the_reply_at_once() -> None:
    clock = WallClock()
    pacer = Pacer(clock, Changes(), clock.now(), math.inf)
    await pacer.until(0.0)
    pacer.stop(clock.now() + 10_000.0)
    with pytest.raises(Interrupted):
        await pacer.until(0.0)


async def test_wait_until_follows_the_clock() -> None:
    audio = FakeAudio()
    waiting = asyncio.create_task(wait_until(audio.clock, audio.changes, 100.0))
    await settle()
    audio.feed(80.0)
    await settle()
    assert not waiting.done()
    audio.feed(20.0)
    await settle()
    assert waiting.done()


# -- the audio clock, end to end -------------------------------------------------------------------


def frame_message(data: bytes) -> bytes:
    blob = {"mime_type": f"audio/pcm;rate={INPUT_RATE}", "data": base64.b64encode(data).decode()}
    return orjson.dumps({"realtime_input": {"audio": blob}})


def frames(data: bytes) -> list[bytes]:
    return [frame_message(chunk) for chunk in pcm.chunks(data, FRAME_MS, INPUT_RATE)]


def speech(ms: int) -> bytes:
    return pcm.tone(300.0, ms, 10 ** (-12 / 20), INPUT_RATE)


def silence(ms: int) -> bytes:
    return pcm.silence(ms, INPUT_RATE)


def transcription(text: str) -> dict[str, Any]:
    return {"serverContent": {"outputTranscription": {"text": text}}}


async def recv_json(ws: ClientConnection) -> Any:
    return orjson.loads(await ws.recv())


async def test_a_reply_on_the_audio_clock_waits_for_caller_audio() -> None:
    recorded = Recorded([(0, transcription("One")), (60, transcription("Two"))])
    go_away = GoAway(after_s=0.13, close_code=None)  # 130 ms of caller audio
    script = EmulatorScript((Reply((recorded,)),), go_away=go_away)
    no_vad = {"realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}
    async with GeminiEmulator(script, speed=1.0, clock="audio") as emu, raw_client(emu) as ws:
        await set_up(ws, {"setup": {"model": "m", **no_vad}})
        await ws.send('{"realtime_input": {"activity_start": {}}}')
        for message in frames(silence(100)):
            await ws.send(message)
        await ws.send('{"realtime_input": {"activity_end": {}}}')  # the trigger, at 100 ms
        assert await recv_json(ws) == transcription("One")
        # No caller audio, no progress: on the wall clock, "Two" and goAway would be sent by now.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await ws.recv()
        for message in frames(silence(60)):
            await ws.send(message)
        received = [await recv_json(ws) for _ in range(4)]
        assert transcription("Two") in received and {"goAway": {"timeLeft": "10s"}} in received
        record = emu.sessions[0]
        assert [(r.kind, r.audio_ms) for r in record.sent if r.kind != "goAway"] == [
            ("setupComplete", 0.0),
            ("outputTranscription", 100.0),
            ("outputTranscription", 160.0),
            ("generationComplete", 160.0),
            ("turnComplete", 160.0),
        ]
        assert record.sent_of("goAway")[0].audio_ms == 130.0
        assert record.replies[0].started_audio_ms == 100.0


SentLine = tuple[str, float, int | None]


async def converse(feed: Callable[[ClientConnection, list[bytes]], Any]) -> list[SentLine]:
    """One call: the caller asks, barges into the long recorded answer, gets the short one."""
    chunk = pcm.tone(700.0, 40, 0.3)
    long_answer = Recorded(
        [(0, {"serverContent": {"inputTranscription": {"text": "hello"}}})]
        + [
            (40 * i, {"serverContent": {"modelTurn": {"parts": [audio_part(chunk)]}}})
            for i in range(40)
        ]
        + [(1600, {"serverContent": {"turnComplete": True}})]
    )
    script = EmulatorScript((Reply((long_answer,)), Reply.of("Go on.", Tone(880.0, 200))))
    caller = speech(600) + silence(700) + silence(300) + speech(600) + silence(1200)
    async with GeminiEmulator(script, speed=1.0, clock="audio") as emu, raw_client(emu) as ws:
        await set_up(ws)
        turns = 0
        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed(ws, frames(caller)))
            while turns < 2:
                message = await recv_json(ws)
                turns += "turnComplete" in message.get("serverContent", {})
        record = emu.sessions[0]
        assert [r.outcome for r in record.replies] == [Outcome.INTERRUPTED, Outcome.COMPLETED]
        [_, barge_in, _] = [s.audio_ms for s in record.speech if s.kind == "start"] + [None]
        assert record.sent_of("interrupted")[0].audio_ms == barge_in
        return [(r.kind, r.audio_ms, r.data.get("bytes")) for r in record.sent]


def audio_part(data: bytes) -> dict[str, Any]:
    return {
        "inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(data).decode()}
    }


async def test_replies_are_the_same_in_audio_time_whatever_the_feeding_rate() -> None:
    async def as_fast_as_possible(ws: ClientConnection, messages: list[bytes]) -> None:
        for message in messages:
            await ws.send(message)

    async def paced(ws: ClientConnection, messages: list[bytes]) -> None:
        for message in messages:
            await ws.send(message)
            await asyncio.sleep(0.002)  # pacing the caller, not waiting for the emulator

    fast = await converse(as_fast_as_possible)
    slow = await converse(paced)
    assert fast == slow
    kinds = [kind for kind, _, _ in fast]
    cut = kinds.index("interrupted")
    assert kinds[cut - 1] == "audio" and kinds[cut + 1] == "turnComplete"
    assert 0 < kinds[:cut].count("audio") < 40  # cut part-way through the long answer
