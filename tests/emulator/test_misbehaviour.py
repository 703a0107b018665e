"""The emulator misbehaving on purpose: `Raw` messages sent exactly as scripted, and a server that
never answers the setup. What the bridge makes of them is in tests/test_bad_input.py."""

from __future__ import annotations

import math

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from phone_agent.emulator import (
    EmulatorScript,
    GeminiEmulator,
    Raw,
    Reply,
    Say,
    ScriptError,
    Tone,
    Trigger,
)

from .test_server import SETUP, raw_client, recv_json, set_up

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

UNKNOWN = {"futureMessage": {"detail": 1}}
BAD_BASE64 = {
    "serverContent": {
        "modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm", "data": "!!not base64"}}]}
    }
}


def test_raw_steps_from_dicts() -> None:
    script = EmulatorScript.from_dict(
        {
            "replies": [
                {"steps": [{"raw": UNKNOWN}, {"raw": "not json"}, {"say": "Fine."}]},
            ],
            "setup_complete": False,
        }
    )
    assert script.replies[0].steps == (Raw(UNKNOWN), Raw("not json"), Say("Fine."))
    assert script.setup_complete is False
    assert EmulatorScript.from_dict({}).setup_complete is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replies": [{"steps": [{"raw": 3}]}]}, r"steps\[0\]\.raw: expected an object or a str"),
        ({"replies": [{"steps": [{"raw": {}, "say": "x"}]}]}, "exactly one of"),
        ({"setup_complete": "no"}, "setup_complete: expected true or false"),
    ],
)
def test_bad_raw_steps_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        EmulatorScript.from_dict(data)


def test_a_raw_message_must_be_sendable() -> None:
    with pytest.raises(ScriptError, match="cannot be sent as JSON"):
        Raw({"serverContent": {"when": object()}})
    with pytest.raises(ScriptError, match="expected an object, a string or bytes"):
        Raw(3)  # type: ignore[arg-type]
    assert Raw("text").frame == "text" and Raw(b"\x00").frame == b"\x00"
    assert orjson.loads(Raw(UNKNOWN).frame) == UNKNOWN


async def test_raw_messages_go_out_verbatim_between_normal_ones() -> None:
    reply = Reply(
        [
            Say("One", Tone(440.0, 40)),
            Raw(UNKNOWN),
            Raw(BAD_BASE64),
            Raw("this is not JSON"),
            Raw(b"\xff\xfe"),
            Say("Two", Tone(440.0, 40)),
        ],
        trigger=Trigger.TEXT,
    )
    async with GeminiEmulator(EmulatorScript([reply]), speed=math.inf) as emu:
        async with raw_client(emu) as ws:
            await set_up(ws)
            await ws.send(orjson.dumps({"realtimeInput": {"text": "hi"}}).decode())
            frames = [await ws.recv() for _ in range(6)]
        record = emu.sessions[0]
        await emu.wait_for(lambda: record.ended)

    audio, unknown, bad, text, binary, audio_again = frames
    assert "inlineData" in orjson.loads(audio)["serverContent"]["modelTurn"]["parts"][0]
    # A mapping goes out as binary JSON, exactly as given; str and bytes as they are.
    assert isinstance(unknown, bytes) and orjson.loads(unknown) == UNKNOWN
    assert isinstance(bad, bytes) and orjson.loads(bad) == BAD_BASE64
    assert text == "this is not JSON"
    assert binary == b"\xff\xfe"
    assert "inlineData" in orjson.loads(audio_again)["serverContent"]["modelTurn"]["parts"][0]
    raw = record.sent_of("raw")
    assert [r.data for r in raw] == [
        UNKNOWN,
        BAD_BASE64,
        {"text": "this is not JSON"},
        {"bytes": b"\xff\xfe"},
    ]
    # Raw messages are not reply output: only the two tones count.
    assert record.replies[0].audio_ms_sent == 80.0


async def test_without_setup_complete_the_server_says_nothing_until_the_client_leaves() -> None:
    script = EmulatorScript(replies=[Reply.of("Hello.", trigger=Trigger.ANY)], setup_complete=False)
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with raw_client(emu) as ws:
            await ws.send(orjson.dumps(SETUP).decode())
            session = await emu.wait_for_session(0)
            # Input is read and ignored: no reply, no setupComplete.
            await ws.send(orjson.dumps({"realtimeInput": {"text": "hello?"}}).decode())
            await ws.close()
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
        await emu.wait_for(lambda: session.ended)

    assert session.setup is not None and session.setup.model == "models/test"
    assert session.sent == [] and session.replies == []
    assert (session.closed_by, session.close_code) == ("client", 1000)
