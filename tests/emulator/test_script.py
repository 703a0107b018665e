from __future__ import annotations

import base64
import math
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from phone_agent.emulator import (
    DEFAULT_REPLY,
    CallTools,
    Close,
    EmulatorScript,
    FunctionCall,
    GoAway,
    Pause,
    Pcm,
    Recorded,
    Reply,
    Say,
    ScriptError,
    Silence,
    Tone,
    Trigger,
    Usage,
)
from phone_agent.emulator.script import render_audio


def test_empty_dict_is_the_default_script() -> None:
    script = EmulatorScript.from_dict({})
    assert script == EmulatorScript()
    assert script.default_reply == DEFAULT_REPLY
    assert DEFAULT_REPLY.trigger is Trigger.ANY
    assert DEFAULT_REPLY.steps == (Say("I'm the emulator.", Tone(440.0, 600, 0.3)),)


def test_flat_reply_puts_tool_calls_before_the_speech() -> None:
    script = EmulatorScript.from_dict(
        {
            "replies": [
                {
                    "input_transcript": "where is my order",
                    "tool_calls": [{"name": "lookup_order", "args": {"orderId": "1042"}}],
                    "text": "It shipped.",
                    "audio": {"tone": {"frequency_hz": 880, "duration_ms": 300}},
                    "usage": {"prompt_tokens": 7},
                }
            ]
        }
    )
    assert script.replies == (
        Reply(
            steps=(
                CallTools((FunctionCall("lookup_order", {"orderId": "1042"}),)),
                Say("It shipped.", Tone(880.0, 300, 0.3)),
            ),
            trigger=Trigger.SPEECH_END,
            input_transcript="where is my order",
            usage=Usage(prompt_tokens=7),
        ),
    )


def test_steps_form_and_every_step_kind() -> None:
    pcm = b"\x01\x00\x02\x00"
    script = EmulatorScript.from_dict(
        {
            "replies": [
                {
                    "trigger": "text",
                    "steps": [
                        {"say": "Let me check."},
                        {"say": {"text": "Hm.", "audio": {"silence_ms": 200}}},
                        {"call_tools": {"calls": [{"name": "f", "id": "call-7"}], "wait": False}},
                        {"pause_ms": 150},
                        {"say": {"audio": {"pcm_base64": base64.b64encode(pcm).decode()}}},
                        {"close": {"code": 1006}},
                    ],
                }
            ],
            "go_away": {"after_s": 1.5, "time_left_s": 2},
            "resumption_updates": False,
        }
    )
    assert script.replies[0] == Reply(
        steps=(
            Say("Let me check."),
            Say("Hm.", Silence(200)),
            CallTools((FunctionCall("f", {}, "call-7"),), wait=False),
            Pause(150),
            Say("", Pcm(pcm)),
            Close(1006, "Internal error encountered."),
        ),
        trigger=Trigger.TEXT,
    )
    assert script.go_away == GoAway(1.5, 2.0, 1000)
    assert script.resumption_updates is False


def test_go_away_close_code_null_leaves_the_connection_open() -> None:
    script = EmulatorScript.from_dict({"go_away": {"after_s": 0, "close_code": None}})
    assert script.go_away == GoAway(0.0, 10.0, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replies": [{"trigger": "later"}]}, "replies[0].trigger: 'later' is not one of"),
        ({"replies": [{"txt": "hi"}]}, "replies[0]: unknown key(s) 'txt'"),
        ({"replies": [{"text": 3}]}, "replies[0].text: expected a string"),
        ({"replies": [{"steps": [{"sing": "la"}]}]}, "replies[0].steps[0]: unknown step 'sing'"),
        ({"replies": [{"steps": [], "text": "x"}]}, "use either 'steps' or text"),
        ({"replies": [{"audio": {"tone": {}, "silence_ms": 3}}]}, "exactly one of tone"),
        ({"replies": [{"audio": {"tone": {"amplitude": 2}}}]}, "amplitude: expected a fraction"),
        ({"replies": [{"audio": {"silence_ms": -1}}]}, "silence_ms: a whole number >= 0"),
        ({"replies": [{"audio": {"pcm_base64": "%%%"}}]}, "pcm_base64: not valid base64"),
        ({"replies": [{"tool_calls": [{"args": {}}]}]}, "tool_calls[0].name: a function call"),
        ({"replies": [{"steps": [{"call_tools": {"calls": []}}]}]}, "at least one call"),
        ({"replies": "nope"}, "script.replies: expected a list"),
        ({"go_away": {}}, "go_away.after_s"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScriptError, match=None) as caught:
        EmulatorScript.from_dict(data)
    assert message in str(caught.value)


def test_load_json_with_audio_files_relative_to_it(tmp_path: Path) -> None:
    pcm = audio_bytes = b"\x10\x00" * 240
    (tmp_path / "hello.raw").write_bytes(audio_bytes)
    with wave.open(str(tmp_path / "hello.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(pcm)
    path = tmp_path / "script.json"
    path.write_bytes(
        orjson.dumps(
            {
                "replies": [
                    {"audio": {"pcm_file": "hello.raw"}},
                    {"audio": {"wav_file": "hello.wav"}},
                ]
            }
        )
    )
    script = EmulatorScript.load(path)
    assert [r.steps for r in script.replies] == [(Say("", Pcm(pcm)),)] * 2


def test_load_reports_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text("{not json")
    with pytest.raises(ScriptError, match="not valid JSON"):
        EmulatorScript.load(path)
    path.write_text('{"replies": [{"audio": {"wav_file": "missing.wav"}}]}')
    with pytest.raises(ScriptError, match="cannot read"):
        EmulatorScript.load(path)
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(b"\0" * 8)
    path.write_text('{"replies": [{"audio": {"wav_file": "stereo.wav"}}]}')
    with pytest.raises(ScriptError, match="need 16-bit mono 24000 Hz"):
        EmulatorScript.load(path)


def test_reply_of_builds_steps() -> None:
    call = FunctionCall("f")
    assert Reply.of() == Reply()
    assert Reply.of("hi", tool_calls=[call], wait_for_tools=False, trigger=Trigger.ANY) == Reply(
        (CallTools((call,), wait=False), Say("hi")), Trigger.ANY
    )


def test_rendering() -> None:
    assert render_audio(Silence(10)) == bytes(480)
    assert len(render_audio(Tone(440.0, 100))) == 4800
    assert render_audio(Pcm(b"ab")) == b"ab"
    assert Say().render() == b""
    # Text without audio: a tone as long as the text takes to say, 60 ms a character, >= 300 ms.
    assert len(Say("hi").render()) == 2 * 24_000 * 300 // 1000
    assert len(Say("x" * 10).render()) == 2 * 24_000 * 600 // 1000


def test_sequences_are_stored_as_tuples() -> None:
    call = FunctionCall("f")
    reply = Reply([CallTools([call])])
    assert reply == Reply((CallTools((call,)),))
    assert EmulatorScript([reply]) == EmulatorScript((reply,))
    assert isinstance(EmulatorScript([reply]).replies, tuple)


# -- recorded steps ------------------------------------------------------------------------------

Message = Mapping[str, Any]
HELLO: Message = {"serverContent": {"outputTranscription": {"text": "Hello"}}}
CALL: Message = {"toolCall": {"functionCalls": [{"id": "call-1", "name": "lookup_order"}]}}
DONE: Message = {"serverContent": {"generationComplete": True, "turnComplete": True}}


def test_recorded_steps_in_both_dict_forms() -> None:
    entries = [{"t_ms": 0, "message": HELLO}, {"t_ms": 250.5, "message": DONE}]
    script = EmulatorScript.from_dict(
        {
            "replies": [
                {"trigger": "text", "recorded": entries, "input_transcript": "hi"},
                {"steps": [{"recorded": entries}, {"say": "More."}]},
                {"steps": [{"recorded": {"messages": entries, "wait_for_tools": False}}]},
                {"recorded": entries, "wait_for_tools": False},
            ]
        }
    )
    recorded = Recorded([(0, HELLO), (250.5, DONE)])
    unwaited = Recorded([(0, HELLO), (250.5, DONE)], wait_for_tools=False)
    assert script.replies == (
        Reply((recorded,), Trigger.TEXT, "hi"),
        Reply((recorded, Say("More."))),
        Reply((unwaited,)),
        Reply((unwaited,)),
    )


def test_recorded_items_leave_out_turn_state_and_know_where_the_step_ends() -> None:
    json_pair: Any = [0, HELLO]  # pairs straight from JSON are lists: accepted too
    recorded = Recorded([json_pair, (120, {"serverContent": {"interrupted": True}}), (121, DONE)])
    assert recorded.messages == (
        (0, HELLO),
        (120, {"serverContent": {"interrupted": True}}),
        (121, DONE),
    )
    assert [(i.t_ms, i.message.kind) for i in recorded.items] == [(0.0, "outputTranscription")]
    assert (recorded.end_ms, recorded.cut_short) == (121, True)
    assert Recorded([]).items == () and not Recorded([(5, HELLO)]).cut_short


def test_which_recorded_calls_the_reply_waits_for() -> None:
    def waits(*messages: Message, wait: bool = True) -> list[tuple[bool, ...]]:
        recorded = Recorded([(i * 10, m) for i, m in enumerate(messages)], wait)
        return [item.waits for item in recorded.items if item.message.calls]

    usage: Message = {"usageMetadata": {"totalTokenCount": 5}}
    heard: Message = {"serverContent": {"inputTranscription": {"text": "late caller words"}}}
    cancel: Message = {"toolCallCancellation": {"ids": ["call-1"]}}
    assert waits(CALL, HELLO) == [(True,)]
    assert waits(CALL, HELLO, wait=False) == [(False,)]
    # Nothing the model says after it: the turn ends, and the response starts the next one.
    assert waits(CALL, usage, heard, DONE) == [(False,)]
    assert waits(CALL, cancel, HELLO) == [(False,)]
    two: Message = {"toolCall": {"functionCalls": [{"id": "call-1", "name": "f"}, {"name": "g"}]}}
    assert waits(two, cancel, HELLO) == [(False, True)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replies": [{"recorded": {}}]}, "replies[0].recorded: expected a list"),
        ({"replies": [{"recorded": [{"message": HELLO}]}]}, "replies[0].recorded[0].t_ms: the"),
        ({"replies": [{"recorded": [{"t_ms": -1, "message": HELLO}]}]}, "recorded[0].t_ms: a num"),
        (
            {
                "replies": [
                    {"recorded": [{"t_ms": 5, "message": HELLO}, {"t_ms": 4, "message": {}}]}
                ]
            },
            "replies[0].recorded[1].t_ms: 4.0 is before the previous message's 5.0",
        ),
        ({"replies": [{"recorded": [{"t_ms": 0, "message": "hi"}]}]}, "recorded[0].message: exp"),
        (
            {"replies": [{"recorded": [{"t_ms": 0, "msg": {}}]}]},
            "recorded[0]: unknown key(s) 'msg'",
        ),
        (
            {
                "replies": [
                    {"recorded": [{"t_ms": 0, "message": {"serverContent": {"modelTurn": 1}}}]}
                ]
            },
            "replies[0].recorded[0].message.serverContent.modelTurn: expected an object",
        ),
        ({"replies": [{"recorded": [], "text": "x"}]}, "use either 'recorded' or text, not both"),
        (
            {"replies": [{"steps": [{"recorded": {"messages": [], "wait": True}}]}]},
            "replies[0].steps[0].recorded: unknown key(s) 'wait'",
        ),
        (
            {"replies": [{"steps": [{"recorded": {"messages": [{"t_ms": 0, "message": 3}]}}]}]},
            "replies[0].steps[0].recorded.messages[0].message: expected an object",
        ),
    ],
)
def test_recorded_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScriptError) as caught:
        EmulatorScript.from_dict(data)
    assert message in str(caught.value)


def test_recorded_errors_from_the_api() -> None:
    with pytest.raises(ScriptError, match=r"^Recorded.messages\[1\]: expected a \(t_ms, message\)"):
        Recorded([(0, HELLO), (1,)])  # type: ignore[list-item]
    with pytest.raises(ScriptError, match=r"^Recorded.messages\[0\].t_ms: expected a number"):
        Recorded([(math.nan, HELLO)])
    with pytest.raises(ScriptError, match=r"^Recorded.messages\[0\].message: unknown server"):
        Recorded([(0, {"noSuchMessage": {}})])
