"""The conversation logic through the real google-genai SDK: turns, barge-in, tools, resumption."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from google.genai import errors, types
from google.genai.live import AsyncSession

from phone_agent.emulator import (
    CallTools,
    Close,
    EmulatorScript,
    FunctionCall,
    GeminiEmulator,
    GoAway,
    Outcome,
    Reply,
    Say,
    Tone,
    Trigger,
)
from phone_agent.emulator import audio as pcm

Connect = Callable[..., contextlib.AbstractAsyncContextManager[AsyncSession]]

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
INPUT_RATE = 16_000
SPEECH_AMPLITUDE = 10 ** (-12 / 20)  # a 300 Hz tone peaking at -12 dBFS stands in for speech


def speech(ms: int) -> bytes:
    return pcm.tone(300.0, ms, SPEECH_AMPLITUDE, INPUT_RATE)


def silence(ms: int) -> bytes:
    return pcm.silence(ms, INPUT_RATE)


async def send_audio(session: AsyncSession, data: bytes) -> None:
    for chunk in pcm.chunks(data, 20, INPUT_RATE):
        blob = types.Blob(data=chunk, mime_type=f"audio/pcm;rate={INPUT_RATE}")
        await session.send_realtime_input(audio=blob)


async def say_something(session: AsyncSession) -> None:
    await send_audio(session, speech(1000) + silence(700))


async def receive_turn(session: AsyncSession) -> list[types.LiveServerMessage]:
    return [message async for message in session.receive()]


def audio_of(messages: list[types.LiveServerMessage]) -> bytes:
    return b"".join(m.data for m in messages if m.data)


def transcript(messages: list[types.LiveServerMessage], which: str) -> str:
    pieces = [getattr(m.server_content, which) for m in messages if m.server_content]
    return "".join(p.text for p in pieces if p is not None and p.text)


def dominant_hz(data: bytes, rate: int = pcm.OUTPUT_RATE) -> float:
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def content_flags(message: types.LiveServerMessage) -> set[str]:
    content = message.server_content
    if content is None:
        return set()
    flags = ("interrupted", "generation_complete", "turn_complete")
    return {flag for flag in flags if getattr(content, flag)}


async def test_setup_handshake_records_the_setup(connect: Connect) -> None:
    async with GeminiEmulator(speed=math.inf) as emu:
        config: dict[str, Any] = {
            "system_instruction": "Be brief.",
            "speech_config": {"voice_config": {"prebuilt_voice_config": {"voice_name": "Kore"}}},
            "input_audio_transcription": {},
            "tools": [{"function_declarations": [{"name": "lookup_order"}]}],
            "realtime_input_config": {"automatic_activity_detection": {"silence_duration_ms": 300}},
        }
        async with connect(emu, **config):
            record = await emu.wait_for_session()
            setup = record.setup
            assert setup is not None
            assert setup.model == f"models/{MODEL}"
            assert setup.voice == "Kore"
            assert setup.system_instruction == "Be brief."
            assert setup.input_transcription and not setup.output_transcription
            assert setup.tools == ("lookup_order",)
            assert setup.silence_duration_ms == 300
            assert record.api_key == "test-key"
            assert record.path.endswith("v1beta.GenerativeService.BidiGenerateContent")
            assert record.sent_kinds == ["setupComplete"]
        await emu.wait_for(lambda: record.ended)
        assert (record.closed_by, record.close_code) == ("client", 1000)


async def test_caller_speech_triggers_the_scripted_reply(connect: Connect) -> None:
    reply = Reply.of(
        "Your order shipped yesterday.",
        Tone(1000.0, 400, 0.3),
        input_transcript="where is my order",
    )
    async with GeminiEmulator(EmulatorScript((reply,)), speed=math.inf) as emu:
        config: dict[str, Any] = {"input_audio_transcription": {}, "output_audio_transcription": {}}
        async with connect(emu, **config) as session:
            await say_something(session)
            messages = await receive_turn(session)

        assert transcript(messages, "input_transcription") == "where is my order"
        assert transcript(messages, "output_transcription") == "Your order shipped yesterday."
        data = audio_of(messages)
        assert len(data) == 2 * 24_000 * 400 // 1000
        assert dominant_hz(data) == pytest.approx(1000.0, abs=5)
        last = messages[-1]
        assert content_flags(last) == {"turn_complete"}
        assert content_flags(messages[-2]) == {"generation_complete"}
        usage = last.usage_metadata
        assert usage is not None
        # Caller audio up to the end of speech (1.5 s) at 25 tokens/s; 0.4 s of reply audio.
        assert (usage.prompt_token_count, usage.response_token_count) == (38, 10)

        record = emu.sessions[0]
        assert record.audio_in_ms == 1700.0
        assert len(record.audio_in_pcm) == 2 * 1700 * 16 and record.audio_in_rate == 16_000
        assert [(s.kind, s.source, s.audio_ms) for s in record.speech] == [
            ("start", "vad", 60.0),
            ("end", "vad", 1500.0),
        ]
        [played] = record.replies
        assert (played.script_index, played.trigger, played.outcome) == (
            0,
            Trigger.SPEECH_END,
            Outcome.COMPLETED,
        )
        assert played.audio_ms_sent == 400.0


async def test_audio_is_paced_at_speed(connect: Connect) -> None:
    script = EmulatorScript((Reply.of(audio=Tone(440.0, 800)),))
    async with GeminiEmulator(script, speed=4.0, chunk_ms=40) as emu:
        async with connect(emu) as session:
            await say_something(session)
            await receive_turn(session)
        sent = emu.sessions[0].sent_of("audio")
        assert len(sent) == 20
        # 19 chunks of 40 ms after the first, at four times real time: 190 ms.
        assert 0.18 <= sent[-1].at - sent[0].at < 1.5


async def test_speech_during_a_reply_interrupts_it(connect: Connect) -> None:
    long = Reply.of("A very long answer.", Tone(440.0, 20_000))
    short = Reply.of("Sorry, go on.", Tone(880.0, 200))
    async with GeminiEmulator(EmulatorScript((long, short)), speed=10.0) as emu:
        async with connect(emu) as session:
            await say_something(session)
            first_turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                if message.data and not first_turn:
                    await send_audio(session, speech(600) + silence(700))  # the caller barges in
                first_turn.append(message)
            second_turn = await receive_turn(session)

        flags = [content_flags(m) for m in first_turn]
        cut = flags.index({"interrupted"})
        assert flags[cut + 1 :] == [{"turn_complete"}]
        assert not any("generation_complete" in f for f in flags)
        heard = audio_of(first_turn)
        assert 0 < len(heard) < 2 * 24_000 * 2  # far less than the 20 s scripted
        assert dominant_hz(audio_of(second_turn)) == pytest.approx(880.0, abs=5)
        assert content_flags(second_turn[-1]) == {"turn_complete"}

        record = emu.sessions[0]
        assert [r.outcome for r in record.replies] == [Outcome.INTERRUPTED, Outcome.COMPLETED]
        kinds = record.sent_kinds
        assert kinds[kinds.index("interrupted") + 1] == "turnComplete"
        interrupted_at = record.sent_of("interrupted")[0].at
        later_audio = [a.at for a in record.sent_of("audio") if a.at >= interrupted_at]
        assert later_audio and min(later_audio) >= record.replies[1].started_at


async def test_barge_in_cancels_a_pending_tool_call(connect: Connect) -> None:
    asks = Reply.of("It shipped.", tool_calls=[FunctionCall("lookup_order", {"order_id": "1042"})])
    async with GeminiEmulator(EmulatorScript((asks,)), speed=math.inf) as emu:
        async with connect(emu) as session:
            await say_something(session)
            turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                turn.append(message)
                if message.tool_call:
                    await say_something(session)  # instead of answering
            assert turn[0].tool_call is not None
            cancellation = turn[1].tool_call_cancellation
            assert cancellation is not None and cancellation.ids == ["fc-1"]
            assert [content_flags(m) for m in turn[2:]] == [{"interrupted"}, {"turn_complete"}]

            # The caller's speech gets the default reply; a late answer to fc-1 is ignored.
            assert is_default_reply(await receive_turn(session))
            await session.send_tool_response(
                function_responses=[types.FunctionResponse(id="fc-1", name="lookup_order")]
            )
            record = emu.sessions[0]
            await emu.wait_for(lambda: record.client("tool_response"))
        assert record.unmatched_triggers == []
        assert [r.outcome for r in record.replies] == [Outcome.INTERRUPTED, Outcome.COMPLETED]
        assert record.replies[0].tool_call_ids == ["fc-1"]


def is_default_reply(messages: list[types.LiveServerMessage]) -> bool:
    """The default reply: a 440 Hz tone, then turnComplete."""
    return dominant_hz(audio_of(messages)) == pytest.approx(440.0, abs=5) and bool(
        content_flags(messages[-1]) == {"turn_complete"}
    )


async def test_tool_call_round_trip(connect: Connect) -> None:
    reply = Reply.of(
        "It shipped yesterday.",
        Tone(660.0, 200),
        tool_calls=[FunctionCall("lookup_order", {"orderId": "1042"})],
        trigger=Trigger.TEXT,
    )
    async with GeminiEmulator(EmulatorScript((reply,)), speed=math.inf) as emu:
        tools = [{"function_declarations": [{"name": "lookup_order"}]}]
        async with connect(emu, tools=tools, output_audio_transcription={}) as session:
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text="Where is order 1042?")])
            )
            messages: list[types.LiveServerMessage] = []
            async for message in session.receive():
                messages.append(message)
                if message.tool_call:
                    [call] = message.tool_call.function_calls or []
                    assert (call.id, call.name, call.args) == (
                        "fc-1",
                        "lookup_order",
                        {"orderId": "1042"},
                    )
                    response = types.FunctionResponse(
                        id=call.id, name=call.name, response={"orderStatus": "shipped"}
                    )
                    await session.send_tool_response(function_responses=[response])

        assert messages[0].tool_call is not None
        assert transcript(messages, "output_transcription") == "It shipped yesterday."
        assert dominant_hz(audio_of(messages)) == pytest.approx(660.0, abs=5)
        record = emu.sessions[0]
        [answer] = record.client("tool_response")
        assert answer.data["function_responses"][0]["response"] == {"orderStatus": "shipped"}
        assert record.replies[0].outcome is Outcome.COMPLETED
        kinds = record.sent_kinds
        assert kinds.index("toolCall") < kinds.index("audio")


async def test_text_input_triggers_replies(connect: Connect) -> None:
    replies = (
        Reply.of("First.", trigger=Trigger.TEXT),
        Reply.of("Second.", trigger=Trigger.ANY),
    )
    async with GeminiEmulator(EmulatorScript(replies), speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await session.send_client_content(turns={"parts": [{"text": "Hi"}]}, turn_complete=True)
            assert transcript(await receive_turn(session), "output_transcription") == "First."
            await session.send_realtime_input(text="And then?")
            assert transcript(await receive_turn(session), "output_transcription") == "Second."
        record = emu.sessions[0]
        assert [r.trigger for r in record.replies] == [Trigger.TEXT, Trigger.TEXT]
        assert record.client("text")[0].data == {"text": "And then?"}


async def test_a_trigger_the_script_does_not_expect_gets_no_reply(connect: Connect) -> None:
    script = EmulatorScript((Reply.of("Only after speech."),))
    async with GeminiEmulator(script, speed=math.inf) as emu, connect(emu) as session:
        await session.send_realtime_input(text="Hello?")
        record = await emu.wait_for_session()
        assert await emu.wait_for(lambda: record.unmatched_triggers) == [Trigger.TEXT]
        assert record.replies == []


async def test_session_resumption_updates_and_resuming(connect: Connect) -> None:
    replies = (Reply.of("One.", trigger=Trigger.TEXT), Reply.of("Two.", trigger=Trigger.TEXT))
    async with GeminiEmulator(EmulatorScript(replies), speed=math.inf) as emu:
        config: dict[str, Any] = {"session_resumption": {}, "output_audio_transcription": {}}
        async with connect(emu, **config) as session:
            await session.send_realtime_input(text="one")
            assert transcript(await receive_turn(session), "output_transcription") == "One."
            async for message in session.receive():
                update = message.session_resumption_update
                assert update is not None and update.resumable
                handle = update.new_handle
                break

        assert handle
        config["session_resumption"] = {"handle": handle}
        async with connect(emu, **config) as session:
            await session.send_realtime_input(text="two")
            assert transcript(await receive_turn(session), "output_transcription") == "Two."
        resumed = emu.sessions[1]
        assert resumed.setup is not None and resumed.setup.resumption_handle == handle
        assert resumed.replies[0].script_index == 1


async def test_default_reply_when_the_script_runs_out(connect: Connect) -> None:
    async with GeminiEmulator(speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            for _ in range(2):
                await say_something(session)
                messages = await receive_turn(session)
                assert transcript(messages, "output_transcription") == "I'm the emulator."
                assert is_default_reply(messages)
        assert [r.script_index for r in emu.sessions[0].replies] == [None, None]


async def test_text_modality_answers_in_text_parts(connect: Connect) -> None:
    script = EmulatorScript((Reply.of("Plain text answer.", trigger=Trigger.TEXT),))
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu, response_modalities=["TEXT"]) as session:
            await session.send_realtime_input(text="hi")
            messages = await receive_turn(session)
        assert "".join(m.text for m in messages if m.text) == "Plain text answer."
        assert audio_of(messages) == b""


async def test_client_activity_signals_when_automatic_detection_is_off(connect: Connect) -> None:
    script = EmulatorScript((Reply.of("Heard you.", Tone(500.0, 100)),))
    async with GeminiEmulator(script, speed=math.inf) as emu:
        config = {"realtime_input_config": {"automatic_activity_detection": {"disabled": True}}}
        async with connect(emu, **config) as session:
            await session.send_realtime_input(activity_start=types.ActivityStart())
            await send_audio(session, speech(300))  # the energy VAD is off: this alone is no turn
            await session.send_realtime_input(activity_end=types.ActivityEnd())
            messages = await receive_turn(session)
        assert dominant_hz(audio_of(messages)) == pytest.approx(500.0, abs=10)
        record = emu.sessions[0]
        assert [(s.kind, s.source) for s in record.speech] == [
            ("start", "client"),
            ("end", "client"),
        ]


async def test_go_away_then_close(connect: Connect) -> None:
    script = EmulatorScript(go_away=GoAway(after_s=0.01, time_left_s=0.05))
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu) as session:
            received: list[types.LiveServerMessage] = []
            with pytest.raises(errors.APIError) as caught:
                async for message in session.receive():
                    received.append(message)
        assert received[0].go_away is not None
        assert received[0].go_away.time_left == "0.05s"
        assert caught.value.code == 1000
        record = emu.sessions[0]
        await emu.wait_for(lambda: record.ended)
        assert (record.closed_by, record.close_code) == ("emulator", 1000)


async def test_scripted_close_mid_reply(connect: Connect) -> None:
    failing = Reply(steps=(Say("Let me", Tone(440.0, 80)), Close(1011, "Internal error.")))
    async with GeminiEmulator(EmulatorScript((failing,)), speed=math.inf) as emu:
        async with connect(emu) as session:
            await say_something(session)
            received: list[types.LiveServerMessage] = []
            with pytest.raises(errors.APIError) as caught:
                async for message in session.receive():
                    received.append(message)
        assert caught.value.code == 1011
        assert len(audio_of(received)) == 2 * 24 * 80
        record = emu.sessions[0]
        await emu.wait_for(lambda: record.ended)
        assert (record.closed_by, record.close_code) == ("emulator", 1011)
        assert record.replies[0].outcome is Outcome.ABORTED


async def test_non_waiting_tool_call_and_a_tool_response_trigger(connect: Connect) -> None:
    calls = CallTools((FunctionCall("send_sms", {"to": "+15550100"}),), wait=False)
    replies = (
        Reply(steps=(calls, Say("Sending it now.")), trigger=Trigger.TEXT),
        Reply.of("Sent.", trigger=Trigger.TOOL_RESPONSE),
    )
    async with GeminiEmulator(EmulatorScript(replies), speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await session.send_realtime_input(text="Text me the code.")
            first = await receive_turn(session)
            assert first[0].tool_call is not None
            assert transcript(first, "output_transcription") == "Sending it now."
            response = types.FunctionResponse(id="fc-1", name="send_sms", response={"ok": True})
            await session.send_tool_response(function_responses=[response])
            second = await receive_turn(session)
            assert transcript(second, "output_transcription") == "Sent."
        assert [r.trigger for r in emu.sessions[0].replies] == [Trigger.TEXT, Trigger.TOOL_RESPONSE]


async def test_closing_the_emulator_closes_sessions_with_1000(connect: Connect) -> None:
    emu = await GeminiEmulator(speed=math.inf).start()
    ca_file = emu.ca_file
    try:
        async with connect(emu) as session:
            await emu.wait_for_session()
            started = time.monotonic()
            await emu.close()
            with pytest.raises(errors.APIError) as caught:
                await receive_turn(session)
            assert caught.value.code == 1000
            assert time.monotonic() - started < 3
    finally:
        await emu.close()
    assert not ca_file.exists()
    assert emu.sessions[0].closed_by == "emulator"


async def test_speech_resuming_right_after_a_pause_interrupts_the_new_reply(
    connect: Connect,
) -> None:
    # Sent in one burst, the second utterance may be read before the first reply even begins.
    # Turn-taking follows audio order, so the first reply is interrupted all the same.
    long = Reply.of(audio=Tone(440.0, 20_000))
    short = Reply.of(audio=Tone(880.0, 100))
    async with GeminiEmulator(EmulatorScript((long, short)), speed=10.0) as emu:
        async with connect(emu) as session:
            await send_audio(session, speech(600) + silence(600) + speech(600) + silence(600))
            first = await receive_turn(session)
            second = await receive_turn(session)
        assert [content_flags(m) for m in first[-2:]] == [{"interrupted"}, {"turn_complete"}]
        assert dominant_hz(audio_of(second)) == pytest.approx(880.0, abs=10)
        outcomes = [r.outcome for r in emu.sessions[0].replies]
        assert outcomes == [Outcome.INTERRUPTED, Outcome.COMPLETED]


async def test_no_interruption_activity_handling(connect: Connect) -> None:
    first = Reply.of(audio=Tone(440.0, 1_000))
    second = Reply.of(audio=Tone(880.0, 100))
    async with GeminiEmulator(EmulatorScript((first, second)), speed=10.0) as emu:
        config = {"realtime_input_config": {"activity_handling": "NO_INTERRUPTION"}}
        async with connect(emu, **config) as session:
            await say_something(session)
            turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                if message.data and not turn:
                    await say_something(session)
                turn.append(message)
            assert len(audio_of(turn)) == 2 * 24_000  # all of it
            assert dominant_hz(audio_of(await receive_turn(session))) == pytest.approx(880, abs=10)
        outcomes = [r.outcome for r in emu.sessions[0].replies]
        assert outcomes == [Outcome.COMPLETED, Outcome.COMPLETED]


async def test_record_messages_off_keeps_records_small(connect: Connect) -> None:
    async with GeminiEmulator(speed=math.inf, record_messages=False) as emu:
        async with connect(emu) as session:
            await say_something(session)
            await receive_turn(session)
        record = emu.sessions[0]
        assert record.audio_in_ms == 1700.0 and len(record.speech) == 2
        assert record.client_messages == [] and record.sent == []
        assert record.audio_in_pcm == bytearray()
        assert [r.outcome for r in record.replies] == [Outcome.COMPLETED]
