"""Tests for the simulated Twilio caller: the playback buffer alone, then whole calls against a
small websockets server standing in for ours."""

from __future__ import annotations

import base64
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from phone_agent.simulator import (
    FRAME_BYTES,
    CallerStep,
    CallRecord,
    Dtmf,
    Gap,
    HangUp,
    PlaybackBuffer,
    Played,
    Say,
    Silence,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)

pytestmark = pytest.mark.timeout(10)

SILENCE = b"\xff"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --- PlaybackBuffer -------------------------------------------------------------------------


def test_mark_on_empty_buffer_is_due_at_once() -> None:
    buf = PlaybackBuffer()
    assert buf.mark("m") == ("m",)
    assert buf.pending_marks == ()


def test_mark_is_due_when_the_audio_before_it_has_played() -> None:
    buf = PlaybackBuffer()
    buf.append(b"\x01" * 100)
    assert buf.mark("a") == ()
    buf.append(b"\x02" * 60)
    assert buf.mark("b") == ()
    assert buf.mark("c") == ()  # same position as "b"

    assert buf.advance(10) == Played(b"\x01" * 80, ())
    assert buf.advance(10) == Played(b"\x01" * 20 + b"\x02" * 60, ("a", "b", "c"))
    assert buf.advance(10) == Played(b"", ())
    assert buf.played_bytes == 160
    assert buf.buffered_bytes == 0


def test_mark_exactly_at_a_slot_boundary_is_due_in_that_slot() -> None:
    buf = PlaybackBuffer()
    buf.append(b"\x01" * 160)
    buf.mark("end")
    assert buf.advance(20).marks == ("end",)


def test_clear_drops_unplayed_audio_and_releases_every_pending_mark() -> None:
    buf = PlaybackBuffer()
    buf.append(b"\x01" * 100)
    buf.mark("a")
    buf.append(b"\x02" * 100)
    buf.mark("b")
    buf.advance(5)  # 40 bytes played

    cleared = buf.clear()
    assert cleared.discarded_bytes == 160
    assert cleared.marks == ("a", "b")
    assert buf.buffered_bytes == 0
    assert buf.pending_marks == ()
    assert (buf.played_bytes, buf.discarded_bytes) == (40, 160)
    # After a clear the buffer is empty: new marks are due at once, new audio plays.
    assert buf.mark("c") == ("c",)
    buf.append(b"\x03" * 8)
    buf.mark("d")
    assert buf.advance(1) == Played(b"\x03" * 8, ("d",))


def test_buffer_accounts_for_every_byte() -> None:
    buf = PlaybackBuffer()
    for size in (1, 7, 160, 333):
        buf.append(bytes(size))
    assert buf.buffered_ms == 501 / 8
    buf.advance(20)
    buf.clear()
    buf.append(bytes(3))
    buf.advance(20)
    assert buf.played_bytes + buf.discarded_bytes == 504
    with pytest.raises(ValueError):
        buf.advance(-1)


def test_steps_validate_their_arguments() -> None:
    with pytest.raises(ValueError):
        Dtmf("x")
    with pytest.raises(ValueError):
        Silence(-1)
    with pytest.raises(ValueError):
        TwilioCallerSimulator("ws://x", [], speed=0)
    with pytest.raises(ValueError, match="finite speed"):
        TwilioCallerSimulator("ws://x", [WaitForAgentAudio()], speed=float("inf"))
    assert repr(Say(b"\x00" * 80)) == "Say(80 bytes, 10 ms)"


# --- whole calls against a local server -----------------------------------------------------

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def twilio_media_server(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None, **kwargs) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/twilio/media"


async def read_until_closed(ws: ServerConnection, into: list[dict[str, Any]]) -> None:
    try:
        async for raw in ws:
            assert isinstance(raw, str), "Twilio sends text frames only"
            into.append(orjson.loads(raw))
    except ConnectionClosed:
        pass


def to_json(msg: dict[str, Any]) -> str:
    return orjson.dumps(msg).decode()


def media(sid: str, audio: bytes) -> str:
    payload = base64.b64encode(audio).decode()
    return to_json({"event": "media", "streamSid": sid, "media": {"payload": payload}})


def mark(sid: str, name: str) -> str:
    return to_json({"event": "mark", "streamSid": sid, "mark": {"name": name}})


def clear(sid: str) -> str:
    return to_json({"event": "clear", "streamSid": sid})


async def place_call(url: str, script: list[CallerStep], **kwargs: Any) -> CallRecord:
    with anyio.fail_after(5):
        return await TwilioCallerSimulator(url, script, **kwargs).run()


@pytest.mark.anyio
async def test_caller_sends_twilio_shaped_messages() -> None:
    received: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["path"] = ws.request.path
        seen["signature"] = ws.request.headers.get("X-Twilio-Signature", "")
        await read_until_closed(ws, received)

    call_sid, stream_sid = "CA" + "1" * 32, "MZ" + "2" * 32
    script: list[CallerStep] = [
        Dtmf("1"),
        Say(b"\x01" * 400),  # 2.5 frames
        Silence(30),  # rounds up to 2 frames
        Gap(40),  # 2 slots with no frame
        Say(b"\x02" * FRAME_BYTES),
        Dtmf("#"),
        HangUp(),
    ]
    async with twilio_media_server(handler) as url:
        record = await place_call(
            url,
            script,
            custom_parameters={"token": "t0k"},
            call_sid=call_sid,
            stream_sid=stream_sid,
            headers={"X-Twilio-Signature": "sig"},
            speed=float("inf"),
        )

    assert seen == {"path": "/twilio/media", "signature": "sig"}
    assert received[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert received[1] == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": {"token": "t0k"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    after_start = received[2:]
    assert [m["sequenceNumber"] for m in after_start] == [str(i) for i in range(2, 11)]
    assert all(m["streamSid"] == stream_sid for m in after_start)
    assert [m["event"] for m in after_start] == ["dtmf"] + ["media"] * 6 + ["dtmf", "stop"]
    assert after_start[0]["dtmf"] == {"track": "inbound_track", "digit": "1"}
    assert after_start[7]["dtmf"] == {"track": "inbound_track", "digit": "#"}
    assert after_start[8]["stop"] == {"accountSid": "AC" + "0" * 32, "callSid": call_sid}

    frames = [m["media"] for m in after_start[1:7]]
    assert [f["track"] for f in frames] == ["inbound"] * 6
    assert [f["chunk"] for f in frames] == ["1", "2", "3", "4", "5", "6"]
    # A frame is sent when its 20 ms have elapsed; the gap skips 120 and 140.
    assert [f["timestamp"] for f in frames] == ["20", "40", "60", "80", "100", "160"]
    payloads = [base64.b64decode(f["payload"]) for f in frames]
    assert payloads[:3] == [b"\x01" * 160, b"\x01" * 160, b"\x01" * 80 + SILENCE * 80]
    assert payloads[3:] == [SILENCE * 160, SILENCE * 160, b"\x02" * 160]

    assert (record.call_sid, record.stream_sid, record.duration_ms) == (call_sid, stream_sid, 160)
    assert record.caller_audio == (
        b"\x01" * 400 + SILENCE * (80 + 320 + 320) + b"\x02" * 160
    )  # gap slots are silence in the aligned track
    assert record.heard_audio == SILENCE * len(record.caller_audio)
    assert [(e.t_ms, e.detail) for e in record.events("frame_sent")] == [
        (20, 1), (40, 2), (60, 3), (80, 4), (100, 5), (160, 6),
    ]  # fmt: skip
    assert [(e.t_ms, e.detail) for e in record.events("dtmf_sent")] == [(0, "1"), (160, "#")]
    assert record.close.by_caller and record.close.code == 1000
    record.assert_clean()


@pytest.mark.anyio
async def test_caller_plays_audio_echoes_marks_and_obeys_clear(tmp_path: Path) -> None:
    agent_a, agent_b = b"\x10" * 1600, b"\x20" * 16000  # 200 ms, then 2000 ms
    received: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        start = orjson.loads(await ws.recv())
        while start["event"] != "start":
            start = orjson.loads(await ws.recv())
        sid = start["streamSid"]
        await ws.send(media(sid, agent_a))
        await ws.send(mark(sid, "a"))
        for i in range(0, len(agent_b), 2000):
            await ws.send(media(sid, agent_b[i : i + 2000]))
        await ws.send(mark(sid, "b"))
        barged_in = False
        async for raw in ws:
            msg = orjson.loads(raw)
            received.append(msg)
            if msg["event"] != "media" or barged_in:
                continue
            if base64.b64decode(msg["media"]["payload"]).strip(SILENCE):
                barged_in = True  # the caller talks over the agent
                await ws.send(clear(sid))
                await ws.send(mark(sid, "c"))

    script: list[CallerStep] = [
        WaitForAgentAudio(min_ms=400),
        Say(b"\x05" * 800),
        WaitForAgentSilence(ms=100),
        HangUp(),
    ]
    async with twilio_media_server(handler) as url:
        record = await place_call(url, script, speed=10)

    record.assert_clean()
    # Echoes reach the server in order, numbered in line with everything else.
    echoes = [m["mark"]["name"] for m in received if m["event"] == "mark"]
    assert echoes == ["a", "b", "c"]
    seqs = [int(m["sequenceNumber"]) for m in received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert record.marks_received == ("a", "b", "c")
    assert [(e.name, e.cleared) for e in record.mark_echoes] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]

    # "a" is echoed once its 200 ms have played, not when it arrived.
    echo_a = record.mark_echoes[0]
    first_play = record.play_events[0][0]
    assert echo_a.t_ms == first_play + 200

    # The caller heard all of A, then B up to the clear; the rest of B was discarded.
    heard = record.heard_audio.strip(SILENCE)
    assert heard.startswith(agent_a)
    heard_b = heard[len(agent_a) :]
    assert heard_b == b"\x20" * len(heard_b) and len(heard_b) >= 1600  # waited for 400 ms
    assert len(record.clears) == 1
    clear_rec = record.clears[0]
    assert record.heard_ms + clear_rec.discarded_ms == 2200
    assert record.received_audio == agent_a + agent_b
    # Nothing plays after the clear.
    assert all(t < clear_rec.t_ms for t, _ in record.play_events)
    say_started = next(e.t_ms for e in record.events("step") if str(e.detail).startswith("Say"))
    assert say_started <= clear_rec.t_ms
    assert record.close.by_caller

    assert len(record.heard_audio) == len(record.caller_audio) == record.duration_ms * 8
    assert record.heard_pcm16().shape == (len(record.heard_audio),)
    path = tmp_path / "call.wav"
    record.write_wav(path)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == len(record.caller_audio)


@pytest.mark.anyio
async def test_server_hanging_up_ends_the_call() -> None:
    async def handler(ws: ServerConnection) -> None:
        frames = 0
        async for raw in ws:
            frames += orjson.loads(raw)["event"] == "media"
            if frames == 5:
                await ws.close(1000, "agent hung up")

    async with twilio_media_server(handler) as url:
        sim = TwilioCallerSimulator(url, [Say(b"\x01" * 160)], speed=10)  # no HangUp
        with anyio.fail_after(5):
            record = await sim.run()
        with pytest.raises(RuntimeError):
            await sim.run()

    assert record.close.by_caller is False
    assert (record.close.code, record.close.reason) == (1000, "agent hung up")
    assert record.events("stop_sent") == []
    assert len(record.events("frame_sent")) >= 5  # silence keeps flowing after the script


@pytest.mark.anyio
async def test_protocol_violations_are_recorded() -> None:
    async def handler(ws: ServerConnection) -> None:
        start = orjson.loads(await ws.recv())
        while start["event"] != "start":
            start = orjson.loads(await ws.recv())
        sid = start["streamSid"]
        bad: list[str | bytes] = [
            b"\x00\x01",
            "not json",
            "[1, 2]",
            media("MZwrong", b"\x00"),
            to_json({"event": "dance", "streamSid": sid}),
            to_json({"event": "media", "streamSid": sid, "media": {"payload": "!!"}}),
            to_json({"event": "clear", "streamSid": sid, "sequenceNumber": "1"}),
            to_json({"event": "mark", "streamSid": sid, "mark": {}}),
        ]
        for msg in bad:
            await ws.send(msg)
        await ws.send(mark(sid, "ok"))  # echoed at once: everything before it was handled
        async for raw in ws:
            if orjson.loads(raw)["event"] == "mark":
                await ws.close()

    async with twilio_media_server(handler) as url:
        record = await place_call(url, [], speed=10)

    assert [v.code for v in record.violations] == [31950] + [31951] * 7
    assert "streamSid" in record.violations[3].reason
    assert "base64" in record.violations[5].reason
    assert "sequenceNumber" in record.violations[6].reason
    assert record.received_audio == b""
    assert record.clears == ()
    assert [e.name for e in record.mark_echoes] == ["ok"]
    with pytest.raises(AssertionError, match="31950"):
        record.assert_clean()


@pytest.mark.anyio
async def test_wait_step_times_out_in_call_time() -> None:
    async def handler(ws: ServerConnection) -> None:
        await read_until_closed(ws, [])

    script: list[CallerStep] = [WaitForAgentAudio(min_ms=100, timeout_ms=200), HangUp()]
    async with twilio_media_server(handler) as url:
        record = await place_call(url, script, speed=20)

    assert [(w.t_ms, w.step) for w in record.wait_timeouts] == [
        (200, "WaitForAgentAudio(min_ms=100, timeout_ms=200)")
    ]
    assert len(record.events("frame_sent")) == 10  # silence while waiting
    assert record.events("stop_sent")[0].t_ms == 200
    with pytest.raises(AssertionError, match="timed out"):
        record.assert_clean()


@pytest.mark.anyio
@pytest.mark.parametrize(("speed", "call_ms"), [(1.0, 200), (4.0, 400)])
async def test_frames_are_paced_by_call_time(speed: float, call_ms: int) -> None:
    arrivals: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            if orjson.loads(raw)["event"] == "media":
                arrivals.append(time.monotonic())

    async with twilio_media_server(handler) as url:
        began = time.monotonic()
        record = await place_call(url, [Silence(call_ms), HangUp()], speed=speed)
        elapsed = time.monotonic() - began

    real_s = call_ms / 1000 / speed
    assert len(arrivals) == call_ms // 20
    assert real_s <= elapsed < real_s + 1.0
    # Frame k (from 1) is never sent before k * 20 ms of call time have elapsed.
    assert all(t - began >= k * 0.020 / speed for k, t in enumerate(arrivals, start=1))
    assert record.duration_ms == call_ms


@pytest.mark.anyio
async def test_refused_handshake_raises() -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(HTTPStatus.FORBIDDEN, "bad token\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("never accepted")

    async with twilio_media_server(handler, process_request=refuse) as url:
        with pytest.raises(InvalidStatus) as excinfo:
            await place_call(url, [HangUp()])
    assert excinfo.value.response.status_code == HTTPStatus.FORBIDDEN


@pytest.mark.anyio
async def test_server_closing_at_once_still_gives_a_record() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4000, "go away")

    async with twilio_media_server(handler) as url:
        record = await place_call(url, [Say(b"\x01" * 1600), HangUp()], speed=10)

    assert (record.close.code, record.close.reason, record.close.by_caller) == (
        4000,
        "go away",
        False,
    )
    assert record.events("stop_sent") == []
