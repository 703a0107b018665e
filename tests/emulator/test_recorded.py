"""`Recorded` replies through the real google-genai SDK: content, timing, tools, barge-in."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import pytest
from google.genai import types

from phone_agent.emulator import (
    EmulatorScript,
    GeminiEmulator,
    Outcome,
    Recorded,
    Reply,
    Trigger,
)
from phone_agent.emulator import audio as pcm

from .test_conversation import (
    Connect,
    audio_of,
    content_flags,
    receive_turn,
    say_something,
    send_audio,
    silence,
    speech,
    transcript,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

Message = Mapping[str, Any]
TURN_COMPLETE: Message = {"serverContent": {"turnComplete": True}}


def audio_message(data: bytes, *, url_safe: bool = False) -> Message:
    encoded = base64.urlsafe_b64encode(data).decode().rstrip("=") if url_safe else data
    blob = {"mimeType": "audio/pcm;rate=24000", "data": encoded}
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}}


def said(text: str) -> Message:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def reply(*messages: tuple[float, Message], trigger: Trigger = Trigger.SPEECH_END) -> Reply:
    return Reply((Recorded(messages),), trigger)


async def test_recorded_messages_are_replayed_with_their_content(connect: Connect) -> None:
    first, second = pcm.tone(500.0, 120, 0.3), pcm.tone(700.0, 80, 0.3)
    std = base64.b64encode(second).decode()
    mixed = {  # snake_case, standard base64, audio and a transcription in one message
        "server_content": {
            "model_turn": {"parts": [{"inline_data": {"mime_type": "audio/pcm", "data": std}}]},
            "output_transcription": {"text": " yesterday."},
        }
    }
    usage = {"promptTokenCount": 11, "responseTokenCount": 7, "totalTokenCount": 18}
    script = EmulatorScript(
        (
            reply(
                (0, {"server_content": {"input_transcription": {"text": "where is it"}}}),
                (10, audio_message(first, url_safe=True)),
                (20, said("It shipped")),
                (30, mixed),
                (40, {"serverContent": {"generationComplete": True}}),
                (41, {"serverContent": {"turnComplete": True}, "usageMetadata": usage}),
            ),
        )
    )
    async with GeminiEmulator(script, speed=math.inf, chunk_ms=40) as emu:
        async with connect(emu) as session:
            await say_something(session)
            messages = await receive_turn(session)

        assert audio_of(messages) == first + second
        assert transcript(messages, "input_transcription") == "where is it"
        assert transcript(messages, "output_transcription") == "It shipped yesterday."
        flags = [content_flags(m) for m in messages]
        assert flags[-2:] == [{"generation_complete"}, {"turn_complete"}]
        assert not any(flags[:-2])  # the recorded flags were not replayed
        # The recorded usage stands for the turn's: it is not reported twice.
        [reported] = [m.usage_metadata for m in messages if m.usage_metadata]
        assert reported.prompt_token_count == 11 and reported.total_token_count == 18

        record = emu.sessions[0]
        assert [r.data["ms"] for r in record.sent_of("audio")] == [40.0, 40.0, 40.0, 40.0, 40.0]
        [played] = record.replies
        assert (played.outcome, played.audio_ms_sent) == (Outcome.COMPLETED, 200.0)


async def test_recorded_timing_is_kept_and_scaled_by_speed(connect: Connect) -> None:
    # On the audio clock, each message's audio time shows exactly when it was due.
    script = EmulatorScript(
        (
            reply(
                (0, said("One")),
                (100, audio_message(pcm.tone(500.0, 200, 0.3))),  # cut into 5, over 100 ms
                (200, said(" two")),
                (300, TURN_COMPLETE),
            ),
        )
    )
    async with GeminiEmulator(script, speed=2.0, chunk_ms=40, clock="audio") as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await say_something(session)  # speech ends at 1500 ms of caller audio, of 1700
            messages = await receive_turn(session)

        record = emu.sessions[0]
        assert [(r.kind, r.audio_ms) for r in record.sent[1:]] == [
            ("outputTranscription", 1500.0),
            ("audio", 1550.0),
            ("audio", 1560.0),
            ("audio", 1570.0),
            ("audio", 1580.0),
            ("audio", 1590.0),
            ("outputTranscription", 1600.0),
            ("generationComplete", 1650.0),
            ("turnComplete", 1650.0),
        ]
        [played] = record.replies
        assert (played.started_audio_ms, played.ended_audio_ms) == (1500.0, 1650.0)
        usage = messages[-1].usage_metadata  # none recorded: computed, recorded audio included
        assert usage is not None and usage.response_token_count == 5


async def test_a_recorded_tool_call_waits_for_its_responses(connect: Connect) -> None:
    calls = [{"id": "call-9", "name": "lookup_order", "args": {"order_id": "1042"}}]
    calls.append({"name": "log_event", "args": {}})  # recorded without an id
    script = EmulatorScript(
        (
            reply(
                (0, {"toolCall": {"functionCalls": calls}}),
                (200, audio_message(pcm.tone(660.0, 80, 0.3))),
                (210, said("Shipped.")),
                (250, TURN_COMPLETE),
                trigger=Trigger.TEXT,
            ),
        )
    )
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await session.send_realtime_input(text="Where is order 1042?")
            messages: list[types.LiveServerMessage] = []
            async for message in session.receive():
                messages.append(message)
                if message.tool_call:
                    received = message.tool_call.function_calls or []
                    assert [(c.id, c.name) for c in received] == [
                        ("call-9", "lookup_order"),
                        ("fc-1", "log_event"),
                    ]
                    answers = [types.FunctionResponse(id=c.id, name=c.name) for c in received]
                    await session.send_tool_response(function_responses=answers)

        assert transcript(messages, "output_transcription") == "Shipped."
        record = emu.sessions[0]
        assert record.replies[0].tool_call_ids == ["call-9", "fc-1"]
        assert record.replies[0].outcome is Outcome.COMPLETED
        [answered] = record.client("tool_response")
        assert record.sent_of("toolCall")[0].at < answered.at <= record.sent_of("audio")[0].at


async def test_a_recorded_tool_call_with_nothing_after_it_ends_the_turn(connect: Connect) -> None:
    # Recorded as two turns: the call, then (triggered by its response) the answer.
    call = {"toolCall": {"functionCalls": [{"id": "sms-1", "name": "send_sms", "args": {}}]}}
    script = EmulatorScript(
        (
            reply((0, call), (5, TURN_COMPLETE), trigger=Trigger.TEXT),
            reply((0, said("Sent.")), trigger=Trigger.TOOL_RESPONSE),
        )
    )
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await session.send_realtime_input(text="Text me the code.")
            first = await receive_turn(session)
            assert first[0].tool_call is not None
            assert content_flags(first[-1]) == {"turn_complete"}
            answer = types.FunctionResponse(id="sms-1", name="send_sms", response={"ok": True})
            await session.send_tool_response(function_responses=[answer])
            assert transcript(await receive_turn(session), "output_transcription") == "Sent."
        record = emu.sessions[0]
        assert [r.trigger for r in record.replies] == [Trigger.TEXT, Trigger.TOOL_RESPONSE]


async def test_caller_speech_interrupts_a_recorded_reply(connect: Connect) -> None:
    chunk = pcm.tone(440.0, 40, 0.3)
    long = reply(*[(40.0 * i, audio_message(chunk)) for i in range(100)], (4000, TURN_COMPLETE))
    async with GeminiEmulator(EmulatorScript((long,)), speed=10.0) as emu:
        async with connect(emu) as session:
            await say_something(session)
            turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                if message.data and not turn:
                    await send_audio(session, speech(600) + silence(700))  # the caller barges in
                turn.append(message)

        flags = [content_flags(m) for m in turn]
        cut = flags.index({"interrupted"})
        assert flags[cut + 1 :] == [{"turn_complete"}]
        assert not any("generation_complete" in f for f in flags)
        heard = audio_of(turn)
        assert 0 < len(heard) < 100 * len(chunk)
        record = emu.sessions[0]
        played, *later = record.replies
        assert played.outcome is Outcome.INTERRUPTED
        assert played.audio_ms_sent == pcm.duration_ms(heard, pcm.OUTPUT_RATE)
        # No audio of the interrupted reply after `interrupted`; only the next reply's.
        interrupted_at = record.sent_of("interrupted")[0].at
        after = [a.at for a in record.sent_of("audio") if a.at >= interrupted_at]
        assert all(later and at >= later[0].started_at for at in after)


async def test_a_recording_cut_short_stays_open_until_the_caller_speaks(connect: Connect) -> None:
    # The recorded model was still talking when its caller cut in: there is no end to replay.
    cut_short = reply(
        (0, audio_message(pcm.tone(440.0, 40, 0.3))),
        (10, {"serverContent": {"interrupted": True}}),
        (11, TURN_COMPLETE),
    )
    async with GeminiEmulator(EmulatorScript((cut_short,)), speed=math.inf) as emu:
        async with connect(emu) as session:
            await say_something(session)
            turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                turn.append(message)
                if message.data:
                    await say_something(session)  # at infinite speed, only this can end it
        assert [content_flags(m) for m in turn] == [set(), {"interrupted"}, {"turn_complete"}]
        assert emu.sessions[0].replies[0].outcome is Outcome.INTERRUPTED


async def test_barge_in_cancels_a_recorded_tool_call(connect: Connect) -> None:
    call = {"toolCall": {"functionCalls": [{"id": "call-9", "name": "lookup_order"}]}}
    asks = reply((0, call), (10, said("It shipped.")))
    async with GeminiEmulator(EmulatorScript((asks,)), speed=math.inf) as emu:
        async with connect(emu) as session:
            await say_something(session)
            turn: list[types.LiveServerMessage] = []
            async for message in session.receive():
                turn.append(message)
                if message.tool_call:
                    await say_something(session)  # instead of answering
        cancellation = turn[1].tool_call_cancellation
        assert cancellation is not None and cancellation.ids == ["call-9"]
        assert [content_flags(m) for m in turn[2:]] == [{"interrupted"}, {"turn_complete"}]
        assert emu.sessions[0].replies[0].tool_call_ids == ["call-9"]


async def test_responses_to_calls_the_recording_cancelled_are_ignored(connect: Connect) -> None:
    call = {"toolCall": {"functionCalls": [{"id": "call-9", "name": "lookup_order"}]}}
    cancelled = {"toolCallCancellation": {"ids": ["call-9"]}}
    script = EmulatorScript(
        (
            reply((0, call), (5, cancelled), (10, said("Never mind.")), trigger=Trigger.TEXT),
            reply((0, said("Next.")), trigger=Trigger.TEXT),
        ),
        default_reply=Reply.of("Default."),  # speech only: a stray trigger would go unmatched
    )
    async with GeminiEmulator(script, speed=math.inf) as emu:
        async with connect(emu, output_audio_transcription={}) as session:
            await session.send_realtime_input(text="Where is my order?")
            first = await receive_turn(session)  # not held: the call is cancelled later on
            assert first[1].tool_call_cancellation is not None
            late = types.FunctionResponse(id="call-9", name="lookup_order", response={})
            await session.send_tool_response(function_responses=[late])
            await session.send_realtime_input(text="And?")
            assert transcript(await receive_turn(session), "output_transcription") == "Next."
        record = emu.sessions[0]
        assert record.unmatched_triggers == [] and len(record.replies) == 2
