"""Bridge behaviour against a scripted fake model, through Starlette's in-process WebSocket client.

The real-socket, real-SDK path is covered in tests/test_call_e2e.py.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from google.genai import types
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from phone_agent import gemini
from phone_agent.app import create_app
from phone_agent.config import ConfigError, Settings
from phone_agent.tools.registry import CallContext, ToolRegistry

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32
FRAME = b"\xff" * 160


@dataclass
class FakeModel:
    """Yields each scripted event once `after_bytes` of caller audio has arrived."""

    script: list[tuple[int, gemini.ModelEvent]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    opened: int = 0
    closed: int = 0
    tool_responses: list[types.FunctionResponse] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    # Released once per tool response, for tests in another thread than the app.
    responded: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    @asynccontextmanager
    async def connect(
        self, *, resumption_handle: str | None = None, extra_instruction: str = ""
    ) -> AsyncIterator[gemini.ModelSession]:
        self.opened += 1
        try:
            yield _FakeSession(self)
        finally:
            self.closed += 1


class _FakeSession:
    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.arrived = anyio.Event()
        self.on_message: Callable[[Mapping[str, Any]], None] | None = None

    async def send_audio(self, pcm16k: bytes) -> None:
        self.model.audio += pcm16k
        self.arrived.set()
        self.arrived = anyio.Event()

    async def send_text(self, text: str) -> None:
        self.model.texts.append(text)

    async def send_context(self, text: str) -> None:
        self.model.context.append(text)

    async def send_tool_responses(self, responses: list[types.FunctionResponse]) -> None:
        self.model.tool_responses.extend(responses)
        for _ in responses:
            self.model.responded.release()

    async def events(self) -> AsyncIterator[gemini.ModelEvent]:
        for after_bytes, event in self.model.script:
            while len(self.model.audio) < after_bytes:
                await self.arrived.wait()
            yield event
        await anyio.sleep_forever()


def start_msg(client: TestClient, caller: str | None = None) -> str:
    """`start` with the stream token the webhook would have minted for this call."""
    extra = {"from": caller} if caller else {}
    params = client.app.state.phone_agent.stream_parameters(CALL, **extra)  # type: ignore[attr-defined]
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


def media_msg(seq: int, payload: bytes = FRAME) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": SID,
            "media": {
                "track": "inbound",
                "chunk": str(seq - 1),
                "timestamp": str((seq - 2) * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def stop_msg(seq: int) -> str:
    return json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": SID})


def make_client(
    model: FakeModel, registry: ToolRegistry | None = None, **settings: object
) -> TestClient:
    values: dict[str, object] = {"start_timeout_s": 1.0}
    values.update(settings)
    app = create_app(
        Settings(**values),  # type: ignore[arg-type]
        connect_model=model.connect,
        registry=registry,
        keep_summaries=10,
    )
    return TestClient(app)


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "call.rejected"]


BAD_BEFORE_START = {
    "not-json": "hello",
    "unknown-event": '{"event":"bogus"}',
    "media-before-start": media_msg(2),
    "oversized": json.dumps({"event": "media", "pad": "x" * 70_000}),
}


@pytest.mark.parametrize("message", BAD_BEFORE_START.values(), ids=BAD_BEFORE_START.keys())
def test_bad_input_closes_call_with_one_log_line_and_no_model_session(
    message: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = FakeModel()
    with make_client(model) as client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(message)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    assert len(rejected_lines(caplog)) == 1
    assert model.opened == 0


def test_binary_frame_closes_call(caplog: pytest.LogCaptureFixture) -> None:
    model = FakeModel()
    with make_client(model) as client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client))
        ws.send_bytes(b"\x00\x01\x02")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    [line] = rejected_lines(caplog)
    assert "binary" in line.getMessage()
    assert model.opened == model.closed == 1


def test_invalid_base64_after_start_closes_call(caplog: pytest.LogCaptureFixture) -> None:
    model = FakeModel()
    with make_client(model) as client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client))
        ws.send_text(media_msg(2).replace(base64.b64encode(FRAME).decode(), "@@@"))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    assert "base64" in rejected_lines(caplog)[0].getMessage()


def test_no_start_in_time_closes_call(caplog: pytest.LogCaptureFixture) -> None:
    model = FakeModel()
    with (
        make_client(model, start_timeout_s=0.2) as client,
        client.websocket_connect("/twilio/media") as ws,
    ):
        ws.send_text('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008
    assert "no 'start'" in rejected_lines(caplog)[0].getMessage()
    assert model.opened == 0


def test_caller_audio_is_upsampled_and_stop_ends_the_call() -> None:
    model = FakeModel()
    client = make_client(model)
    with client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client))
        for seq in range(2, 12):
            ws.send_text(media_msg(seq))
        ws.send_text(stop_msg(12))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1000
    # 10 frames of 20 ms at 16 kHz, 16-bit: 640 bytes each.
    assert len(model.audio) == 10 * 640
    summary = client.app.state.phone_agent.summaries[-1]  # type: ignore[attr-defined]
    assert summary.end_reason.value == "caller_stop" and summary.frames_in == 10
    assert model.closed == 1


def tone24k(ms: int) -> bytes:
    import numpy as np

    t = np.arange(24 * ms) / 24000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


def test_barge_in_sends_clear_and_drops_late_audio() -> None:
    model = FakeModel(
        script=[
            (640, gemini.ModelAudio(tone24k(40))),
            (640, gemini.ModelAudio(tone24k(200))),
            (1280, gemini.Interrupted()),
            (1280, gemini.ModelAudio(tone24k(40))),  # late audio of the interrupted generation
            (1280, gemini.TurnComplete()),
            (1920, gemini.ModelAudio(tone24k(40))),
            (1920, gemini.TurnComplete()),
        ]
    )
    client = make_client(model)
    received: list[dict[str, object]] = []
    with client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client))
        ws.send_text(media_msg(2))
        for _ in range(4):  # media, mark, media, mark
            received.append(json.loads(ws.receive_text()))
        ws.send_text(media_msg(3))
        received.append(json.loads(ws.receive_text()))  # clear
        ws.send_text(media_msg(4))
        while len(received) < 9:  # g2: media, first mark, flushed filter tail, final mark
            received.append(json.loads(ws.receive_text()))
        ws.send_text(stop_msg(5))
    events = [m["event"] for m in received]
    assert events == ["media", "mark", "media", "mark", "clear", "media", "mark", "media", "mark"]
    marks = [m["mark"]["name"] for m in received if m["event"] == "mark"]  # type: ignore[index]
    assert marks[0].startswith("g1:m1:") and marks[2].startswith("g2:m1:")
    summary = client.app.state.phone_agent.summaries[-1]  # type: ignore[attr-defined]
    assert summary.clears == 1 and summary.dropped_audio_chunks == 1
    first, second = summary.tracker.turns
    assert first.interrupted and first.cleared and not second.interrupted


def test_tool_calls_are_answered_and_cancelled_ones_are_not() -> None:
    registry = ToolRegistry()
    slow_cancelled = threading.Event()

    @registry.tool(timeout_s=30)
    async def echo(ctx: CallContext, text: str) -> dict[str, str]:
        """Say it back.

        Args:
            text: What to say.
        """
        return {"text": text, "caller": ctx.caller_number or ""}

    @registry.tool(timeout_s=0.05)
    async def stuck(ctx: CallContext) -> str:
        """Times out."""
        await anyio.sleep_forever()
        return "unreachable"

    @registry.tool()
    async def broken(ctx: CallContext) -> str:
        """Fails unexpectedly."""
        raise RuntimeError("database password is hunter2")

    @registry.tool(timeout_s=30)
    async def slow(ctx: CallContext) -> str:
        """Never finishes on its own."""
        try:
            await anyio.sleep_forever()
        finally:
            slow_cancelled.set()
        return "unreachable"

    model = FakeModel(
        script=[
            (640, gemini.ToolCallRequest((gemini.FunctionCall("fc-1", "echo", {"text": "hi"}),))),
            (640, gemini.ToolCallRequest((gemini.FunctionCall("fc-2", "slow", {}),))),
            (1280, gemini.ToolCallCancelled(("fc-2",))),
            (1280, gemini.ToolCallRequest((gemini.FunctionCall("fc-3", "nope", {}),))),
            (1280, gemini.ToolCallRequest((gemini.FunctionCall("fc-4", "echo", {"txt": 1}),))),
            (1280, gemini.ToolCallRequest((gemini.FunctionCall("fc-5", "stuck", {}),))),
            (1280, gemini.ToolCallRequest((gemini.FunctionCall("fc-6", "broken", {}),))),
            # The call goes on: the model still speaks and the caller still hears it.
            (1920, gemini.ModelAudio(tone24k(40))),
        ]
    )
    client = make_client(model, registry, tools=["echo", "slow", "stuck", "broken"])
    with client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client, caller="+15550001111"))
        ws.send_text(media_msg(2))
        ws.send_text(media_msg(3))
        assert slow_cancelled.wait(5)
        ws.send_text(media_msg(4))
        assert json.loads(ws.receive_text())["event"] == "media"
        for _ in range(5):
            assert model.responded.acquire(timeout=5)
        ws.send_text(stop_msg(5))
    by_id = {r.id: r for r in model.tool_responses}
    assert sorted(by_id) == ["fc-1", "fc-3", "fc-4", "fc-5", "fc-6"]  # not fc-2: cancelled
    assert by_id["fc-1"].response == {"output": {"text": "hi", "caller": "+15550001111"}}
    for call_id in ("fc-3", "fc-4", "fc-5", "fc-6"):
        response = by_id[call_id].response
        assert response is not None and set(response) == {"error"}
    assert "hunter2" not in str(by_id["fc-6"].response)  # internals never reach the model
    summary = client.app.state.phone_agent.summaries[-1]  # type: ignore[attr-defined]
    assert summary.tools_called == ["echo", "slow", "nope", "echo", "stuck", "broken"]
    statuses = {r.id: r.status for r in summary.tool_results}
    assert statuses == {
        "fc-1": "ok",
        "fc-3": "unknown_tool",
        "fc-4": "invalid_arguments",
        "fc-5": "timeout",
        "fc-6": "error",
    }
    assert summary.end_reason.value == "caller_stop"


def test_unknown_enabled_tool_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="PHONE_AGENT_TOOLS"):
        create_app(Settings(tools=["no_such_tool"]), connect_model=FakeModel().connect)


def test_a_phone_that_stops_playing_ends_the_call_instead_of_buffering() -> None:
    # The model keeps talking; the phone never echoes a mark (it stopped reading).
    model = FakeModel(script=[(640, gemini.ModelAudio(tone24k(1000))) for _ in range(8)])
    settings = Settings(max_unheard_s=5.0, silence_reprompt_s=0, silence_hang_up_s=0)
    client = TestClient(create_app(settings, connect_model=model.connect, keep_summaries=1))
    with client, client.websocket_connect("/twilio/media") as ws:
        ws.send_text(start_msg(client))
        ws.send_text(media_msg(2))
        with pytest.raises(WebSocketDisconnect):
            while True:  # drain what was sent, without ever echoing a mark
                ws.receive_text()
    summary = client.app.state.phone_agent.summaries[-1]  # type: ignore[attr-defined]
    assert summary.end_reason.value == "playback_stalled"
