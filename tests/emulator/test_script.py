from __future__ import annotations

import base64
import wave
from pathlib import Path

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
