from __future__ import annotations

from google.genai import types

from phone_agent import gemini
from phone_agent.config import Settings


def msg(**fields: object) -> types.LiveServerMessage:
    return types.LiveServerMessage.model_validate(fields)


def test_audio_and_transcripts_in_order() -> None:
    events = gemini.translate(
        msg(
            server_content={
                "model_turn": {
                    "parts": [
                        {"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": b"\x01\x02"}}
                    ]
                },
                "output_transcription": {"text": "Hello"},
                "input_transcription": {"text": "hi", "finished": True},
            }
        )
    )
    assert events == [
        gemini.InputTranscript("hi", True),
        gemini.ModelAudio(b"\x01\x02"),
        gemini.OutputTranscript("Hello"),
    ]


def test_interrupted_then_turn_complete_last() -> None:
    events = gemini.translate(
        msg(
            server_content={"interrupted": True, "turn_complete": True},
            usage_metadata={
                "prompt_token_count": 10,
                "response_token_count": 5,
                "total_token_count": 15,
                "prompt_tokens_details": [{"modality": "AUDIO", "token_count": 10}],
            },
        )
    )
    assert isinstance(events[0], gemini.Interrupted)
    assert isinstance(events[-1], gemini.TurnComplete)
    usage = next(e for e in events if isinstance(e, gemini.Usage))
    assert usage.prompt_by_modality == {"AUDIO": 10} and usage.total_tokens == 15


def test_tool_call_resumption_and_go_away() -> None:
    events = gemini.translate(
        msg(
            tool_call={
                "function_calls": [{"id": "fc-1", "name": "lookup_order", "args": {"n": "1"}}]
            },
            session_resumption_update={"new_handle": "h1", "resumable": True},
            go_away={"time_left": "50s"},
        )
    )
    assert (
        gemini.ToolCallRequest((gemini.FunctionCall("fc-1", "lookup_order", {"n": "1"}),)) in events
    )
    assert gemini.ResumptionUpdate("h1", True) in events
    assert gemini.GoAway(50.0) in events
    cancel = gemini.translate(msg(tool_call_cancellation={"ids": ["fc-1"]}))
    assert cancel == [gemini.ToolCallCancelled(("fc-1",))]


def test_non_audio_parts_are_ignored() -> None:
    events = gemini.translate(msg(server_content={"model_turn": {"parts": [{"text": "thinking"}]}}))
    assert events == []


def test_connect_config_asks_for_audio_voice_transcripts_and_resumption() -> None:
    config = gemini.connect_config(Settings(voice="Kore", system_prompt="Be brief."))
    assert config.response_modalities == [types.Modality.AUDIO]
    assert config.speech_config is not None and config.speech_config.voice_config is not None
    voice = config.speech_config.voice_config.prebuilt_voice_config
    assert voice is not None and voice.voice_name == "Kore"
    assert config.input_audio_transcription is not None
    assert config.output_audio_transcription is not None
    assert config.session_resumption is not None
    assert config.system_instruction is not None


def test_context_window_compression_only_where_the_model_supports_it() -> None:
    on = gemini.connect_config(Settings(model="gemini-live-2.5-flash-preview"))
    assert on.context_window_compression is not None
    assert on.context_window_compression.sliding_window is not None
    off = gemini.connect_config(Settings(model="some-unknown-model"))
    assert off.context_window_compression is None


def test_the_fast_audio_frame_is_the_one_the_sdk_writes() -> None:
    import json

    from google.genai import _common
    from google.genai import _live_converters as live_converters

    from phone_agent.gemini import INPUT_MIME, realtime_audio_frame

    pcm = bytes(range(256)) * 3
    parameters = types.LiveSendRealtimeInputParameters.model_validate(
        {"audio": types.Blob(data=pcm, mime_type=INPUT_MIME)}
    )
    converted = live_converters._LiveSendRealtimeInputParameters_to_mldev(from_object=parameters)
    sdk = json.dumps(
        {"realtime_input": _common.encode_unserializable_types(_common.convert_to_dict(converted))}
    )
    assert json.loads(realtime_audio_frame(pcm)) == json.loads(sdk)


def test_only_pure_audio_messages_take_the_fast_path() -> None:
    from phone_agent.gemini import audio_only

    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "AAA="}}
    assert audio_only({"serverContent": {"modelTurn": {"parts": [part]}}}) == [
        ("audio/pcm;rate=24000", "AAA=")
    ]
    for other in (
        {"serverContent": {"modelTurn": {"parts": [part]}, "turnComplete": True}},
        {"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}},
        {"serverContent": {"modelTurn": {"parts": [part]}}, "usageMetadata": {}},
        {"serverContent": {"modelTurn": {"parts": []}}},
        {"toolCall": {}},
    ):
        assert audio_only(other) is None


def test_transcription_only_messages_take_the_fast_path() -> None:
    from phone_agent.gemini import InputTranscript, OutputTranscript, transcript_only

    assert transcript_only({"serverContent": {"outputTranscription": {"text": "Hi"}}}) == (
        OutputTranscript("Hi")
    )
    assert transcript_only(
        {"serverContent": {"inputTranscription": {"text": "yes", "finished": True}}}
    ) == InputTranscript("yes", True)
    for other in (
        {"serverContent": {"outputTranscription": {"text": "Hi"}, "turnComplete": True}},
        {"serverContent": {"outputTranscription": {"text": 3}}},
        {"serverContent": {"outputTranscription": {"text": "Hi", "extra": 1}}},
    ):
        assert transcript_only(other) is None
