from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phone_agent.emulator import protocol
from phone_agent.emulator.protocol import (
    ActivityEnd,
    ActivityStart,
    AudioIn,
    AudioStreamEnd,
    ClientContent,
    FunctionResponse,
    MediaIn,
    ProtocolError,
    Setup,
    TextIn,
    ToolResponse,
    Unknown,
    parse_client_message,
)

PCM = bytes(range(250, 256)) * 3
# Keys the parser looks at, in both casings, so random messages reach deep into it.
_KEYS = [
    "setup",
    "model",
    "realtime_input",
    "realtimeInput",
    "client_content",
    "tool_response",
    "audio",
    "video",
    "media_chunks",
    "mediaChunks",
    "data",
    "mime_type",
    "mimeType",
    "text",
    "activity_start",
    "activityEnd",
    "audio_stream_end",
    "turns",
    "parts",
    "turnComplete",
    "function_responses",
    "functionResponses",
    "id",
    "name",
    "response",
    "generation_config",
    "speechConfig",
    "voice_config",
    "prebuilt_voice_config",
    "voice_name",
    "system_instruction",
    "tools",
    "function_declarations",
    "realtime_input_config",
    "automatic_activity_detection",
    "silence_duration_ms",
    "disabled",
    "session_resumption",
    "handle",
    "response_modalities",
]  # URL-safe and standard base64 differ for these bytes


def frame(message: object) -> bytes:
    return orjson.dumps(message)


def test_base64_both_alphabets_padded_or_not() -> None:
    standard = base64.b64encode(PCM).decode()
    urlsafe = base64.urlsafe_b64encode(PCM).decode()
    assert standard != urlsafe
    for text in (standard, urlsafe, urlsafe.rstrip("="), base64.b64encode(b"ab").decode()[:-1]):
        assert protocol.decode_base64(text) in (PCM, b"ab")
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_base64("a")
    assert caught.value.code == protocol.CLOSE_INVALID_DATA


@pytest.mark.parametrize("outer", ["realtime_input", "realtimeInput"])
@pytest.mark.parametrize("mime_key", ["mime_type", "mimeType"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_audio_in_every_casing_and_alphabet(outer: str, mime_key: str, encode: object) -> None:
    assert callable(encode)
    data = encode(PCM).decode()
    message = {outer: {"audio": {"data": data, mime_key: "audio/pcm;rate=16000"}}}
    assert parse_client_message(frame(message)) == [AudioIn(PCM, 16000)]


def test_audio_rate_comes_from_the_mime_type() -> None:
    def parse(mime: str) -> object:
        message = {"realtime_input": {"audio": {"data": "AAA=", "mime_type": mime}}}
        return parse_client_message(frame(message))

    assert parse("audio/pcm;rate=8000") == [AudioIn(b"\0\0", 8000)]
    assert parse("audio/pcm; rate = 24000") == [AudioIn(b"\0\0", 24000)]
    assert parse("audio/pcm") == [AudioIn(b"\0\0", 16000)]
    assert parse("image/jpeg") == [MediaIn("image/jpeg", 2)]
    with pytest.raises(ProtocolError):
        parse("audio/pcm;rate=0")


def test_legacy_media_chunks() -> None:
    chunk = {"data": base64.b64encode(PCM).decode(), "mimeType": "audio/pcm;rate=8000"}
    events = parse_client_message(frame({"realtime_input": {"mediaChunks": [chunk, chunk]}}))
    assert events == [AudioIn(PCM, 8000)] * 2


def test_realtime_signals_and_text() -> None:
    def parse(body: object) -> object:
        return parse_client_message(frame({"realtime_input": body}))

    assert parse({"activityStart": {}}) == [ActivityStart()]
    assert parse({"activity_end": {}}) == [ActivityEnd()]
    assert parse({"audioStreamEnd": True}) == [AudioStreamEnd()]
    assert parse({"audio_stream_end": False}) == []
    assert parse({"text": "hello"}) == [TextIn("hello")]
    assert parse({"activityStart": {}, "text": "hi", "activityEnd": {}, "bogus": 1}) == [
        ActivityStart(),
        TextIn("hi"),
        ActivityEnd(),
        Unknown("realtime_input.bogus"),
    ]


def test_client_content() -> None:
    message = {
        "client_content": {
            "turns": [{"parts": [{"text": "Hi "}, {"text": "there"}], "role": "user"}],
            "turnComplete": True,
        }
    }
    [event] = parse_client_message(frame(message))
    assert isinstance(event, ClientContent)
    assert event.turn_complete and event.text == "Hi there"
    [partial] = parse_client_message(frame({"clientContent": {"turns": []}}))
    assert partial == ClientContent((), False)


def test_tool_response_keeps_user_keys_verbatim() -> None:
    response = {"orderStatus": "shipped", "lineItems": [{"skuId": 1}]}
    message = {
        "toolResponse": {
            "functionResponses": [
                {"id": "fc-1", "name": "lookup_order", "response": response, "scheduling": "SILENT"}
            ]
        }
    }
    assert parse_client_message(frame(message)) == [
        ToolResponse((FunctionResponse("fc-1", "lookup_order", response, "SILENT"),))
    ]


def test_setup_from_the_sdk() -> None:
    setup = {
        "setup": {
            "model": "models/gemini-x",
            "generationConfig": {
                "responseModalities": ["AUDIO"],
                "speechConfig": {
                    "voice_config": {"prebuilt_voice_config": {"voice_name": "Puck"}},
                    "language_code": "en-US",
                },
            },
            "systemInstruction": {"parts": [{"text": "Be brief."}], "role": "user"},
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "lookup_order",
                            "parameters": {"type": "OBJECT", "properties": {"orderId": {}}},
                        }
                    ]
                }
            ],
            "realtimeInputConfig": {
                "automatic_activity_detection": {"disabled": False, "silence_duration_ms": 300},
                "activity_handling": "NO_INTERRUPTION",
            },
            "sessionResumption": {"handle": "h-1"},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
        }
    }
    [event] = parse_client_message(frame(setup))
    assert isinstance(event, Setup)
    info = event.info
    assert info.model == "models/gemini-x"
    assert info.voice == "Puck" and info.language_code == "en-US"
    assert info.system_instruction == "Be brief."
    assert info.tools == ("lookup_order",)
    assert info.input_transcription and info.output_transcription
    assert info.resumption and info.resumption_handle == "h-1"
    assert info.automatic_activity_detection and info.silence_duration_ms == 300
    assert not info.interrupts and not info.text_only
    # Schemas are user data: property names keep their casing.
    assert info.raw["tools"][0]["function_declarations"][0]["parameters"]["properties"] == {
        "orderId": {}
    }


def test_minimal_setup_defaults() -> None:
    [event] = parse_client_message(frame({"setup": {"model": "m"}}))
    assert isinstance(event, Setup)
    info = event.info
    assert info.response_modalities == ("AUDIO",)
    assert not (info.input_transcription or info.output_transcription or info.resumption)
    assert info.automatic_activity_detection and info.interrupts
    assert info.silence_duration_ms is None and info.resumption_handle is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"setup": {}}',
        b'{"setup": []}',
        b'{"setup": {"model": "m", "generationConfig": {"responseModalities": "AUDIO"}}}',
        b'{"realtime_input": {"audio": {"data": 5}}}',
        b'{"realtime_input": {"mediaChunks": {}}}',
        b'{"realtime_input": {"text": 1}}',
        b'{"client_content": {"turns": "hi"}}',
        b'{"tool_response": {"functionResponses": [{"response": 3}]}}',
    ],
)
def test_malformed_messages_raise_protocol_errors(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert caught.value.code == protocol.CLOSE_INVALID_DATA


def test_unknown_top_level_keys_are_reported_not_fatal() -> None:
    assert parse_client_message('{"futureThing": {}}') == [Unknown("future_thing")]


def test_server_messages() -> None:
    audio = protocol.model_audio(PCM)
    blob = audio["serverContent"]["modelTurn"]["parts"][0]["inlineData"]
    assert blob["mimeType"] == "audio/pcm;rate=24000"
    assert base64.b64decode(blob["data"], validate=True) == PCM  # standard alphabet
    assert protocol.turn_complete({"totalTokenCount": 3}) == {
        "serverContent": {"turnComplete": True},
        "usageMetadata": {"totalTokenCount": 3},
    }
    assert protocol.tool_call([("fc-1", "f", {"a": 1})]) == {
        "toolCall": {"functionCalls": [{"id": "fc-1", "name": "f", "args": {"a": 1}}]}
    }
    assert protocol.go_away(50) == {"goAway": {"timeLeft": "50s"}}
    assert protocol.duration(0.25) == "0.25s"
    assert protocol.encode(protocol.setup_complete()) == b'{"setupComplete":{}}'


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _json, max_size=3))
def test_arbitrary_json_parses_or_raises_a_protocol_error(message: dict[str, object]) -> None:
    try:
        events = parse_client_message(orjson.dumps(message))
    except ProtocolError as exc:
        assert exc.code == protocol.CLOSE_INVALID_DATA
    else:
        assert all(e is not None for e in events)
        for event in events:  # derived properties must not raise either
            if isinstance(event, ClientContent):
                assert isinstance(event.text, str)


@pytest.mark.parametrize("value", [0, -5, True, "300", None])
def test_unusable_silence_durations_fall_back_to_the_default(value: object) -> None:
    detection = {"automaticActivityDetection": {"silenceDurationMs": value}}
    setup = {"setup": {"model": "m", "realtimeInputConfig": detection}}
    [event] = parse_client_message(orjson.dumps(setup))
    assert isinstance(event, Setup) and event.info.silence_duration_ms is None


# -- recorded server messages ----------------------------------------------------------------------

AUDIO_24K = bytes(range(256)) * 15  # 80 ms at 24 kHz; every byte value, so both alphabets differ


def recorded_audio_message(data: str | bytes, casing: str = "camel") -> dict[str, object]:
    if casing == "snake":
        blob = {"mime_type": "audio/pcm;rate=24000", "data": data}
        return {"server_content": {"model_turn": {"parts": [{"inline_data": blob}]}}}
    blob = {"mimeType": "audio/pcm;rate=24000", "data": data}
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}}


@pytest.mark.parametrize(
    "recorded",
    [
        recorded_audio_message(base64.b64encode(AUDIO_24K).decode()),
        recorded_audio_message(base64.urlsafe_b64encode(AUDIO_24K).decode().rstrip("=")),
        recorded_audio_message(base64.urlsafe_b64encode(AUDIO_24K).decode(), "snake"),
        recorded_audio_message(AUDIO_24K, "snake"),  # an SDK `model_dump()`: raw bytes
    ],
    ids=["standard", "url-safe-unpadded", "snake-case", "sdk-dump-bytes"],
)
def test_recorded_audio_in_every_form_becomes_the_normal_form(recorded: dict[str, object]) -> None:
    ready = protocol.recorded_message(recorded)
    assert ready.message == protocol.model_audio(AUDIO_24K)
    assert ready.audio == (("audio/pcm;rate=24000", AUDIO_24K),)
    assert (ready.audio_ms, ready.kind, ready.generated) == (80.0, "audio", True)


def test_recorded_sdk_dump_with_nulls_and_enums() -> None:
    from google.genai import types

    message = types.LiveServerMessage.model_validate(
        {
            "toolCall": {"functionCalls": [{"id": "a", "name": "f", "args": {"order_id": 1}}]},
            "usageMetadata": {
                "promptTokenCount": 3,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 3}],
            },
        }
    )
    ready = protocol.recorded_message(message.model_dump())
    assert orjson.loads(protocol.encode(ready.message)) == {
        "toolCall": {"functionCalls": [{"id": "a", "name": "f", "args": {"order_id": 1}}]},
        "usageMetadata": {
            "promptTokenCount": 3,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 3}],
        },
    }
    assert ready.calls == (("a", "f"),) and ready.kind == "toolCall"


def test_recorded_turn_state_and_session_messages_are_left_out() -> None:
    flags = {"turnComplete": True, "generationComplete": True, "interactionStatus": "IDLE"}
    mixed = {"serverContent": {"outputTranscription": {"text": "Hi"}, **flags}}
    assert protocol.recorded_message(mixed).message == {
        "serverContent": {"outputTranscription": {"text": "Hi"}}
    }
    cut = protocol.recorded_message({"serverContent": {"interrupted": True}})
    assert cut.message == {} and cut.interrupted
    usage = {"usage_metadata": {"total_token_count": 9}, "server_content": {"turn_complete": True}}
    assert protocol.recorded_message(usage).message == {"usageMetadata": {"totalTokenCount": 9}}
    sessions: list[dict[str, Any]] = [
        {"setupComplete": {}},
        {"goAway": {"timeLeft": "5s"}},
        {"voiceActivity": {}},
    ]
    for session in sessions:
        assert protocol.recorded_message(session).message == {}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"somethingNew": {}}, ": unknown server message key(s) 'somethingNew'"),
        ({"serverContent": []}, ".serverContent: expected an object"),
        (recorded_audio_message("@@"), ".serverContent.modelTurn.parts[0].inlineData.data: "),
        ({"toolCall": {"functionCalls": [{"args": {}}]}}, ".toolCall.functionCalls[0].name: "),
        ({"toolCallCancellation": {"ids": [1]}}, ".toolCallCancellation.ids: expected a list"),
        ({"toolCall": {"functionCalls": [{"name": "f", "args": {"x": b"1"}}]}}, ": cannot be sent"),
    ],
)
def test_bad_recorded_messages_name_the_field(message: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError) as caught:
        protocol.recorded_message(message)
    assert str(caught.value).startswith(error)


def test_long_recorded_audio_is_cut_into_pieces_with_the_other_content_first() -> None:
    blob = {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(AUDIO_24K).decode()}
    parts = [{"text": "thinking"}, {"inlineData": blob}]
    recorded = {
        "serverContent": {"modelTurn": {"parts": parts}, "outputTranscription": {"text": "Hi"}}
    }
    ready = protocol.recorded_message(recorded)
    assert ready.pieces(80.0) == [(ready.message, 80.0, len(AUDIO_24K))]
    pieces = ready.pieces(30.0)
    assert [(p.audio_ms, p.audio_bytes) for p in pieces] == [
        (30.0, 1440),
        (30.0, 1440),
        (20.0, 960),
    ]
    first = pieces[0].message["serverContent"]
    assert first["outputTranscription"] == {"text": "Hi"}
    assert first["modelTurn"]["parts"][0] == {"text": "thinking"}
    assert pieces[2].message == protocol.model_audio(AUDIO_24K[2880:])
    rejoined = b"".join(
        base64.b64decode(p.message["serverContent"]["modelTurn"]["parts"][-1]["inlineData"]["data"])
        for p in pieces
    )
    assert rejoined == AUDIO_24K


def test_recorded_calls_get_their_ids() -> None:
    ready = protocol.recorded_message({"toolCall": {"functionCalls": [{"name": "f"}]}})
    assert ready.calls == ((None, "f"),)
    numbered = ready.with_call_ids(["fc-3"])
    assert numbered.calls == (("fc-3", "f"),)
    assert numbered.message == {"toolCall": {"functionCalls": [{"name": "f", "id": "fc-3"}]}}


_SERVER_KEYS = [
    "serverContent",
    "server_content",
    "modelTurn",
    "parts",
    "inlineData",
    "mimeType",
    "data",
    "text",
    "turnComplete",
    "interrupted",
    "toolCall",
    "functionCalls",
    "name",
    "id",
    "args",
    "toolCallCancellation",
    "ids",
    "usageMetadata",
    "goAway",
]
_server_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(_SERVER_KEYS), children, max_size=3)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_SERVER_KEYS), _server_json, max_size=3))
def test_arbitrary_recorded_messages_are_prepared_or_raise_value_error(
    message: dict[str, object],
) -> None:
    try:
        ready = protocol.recorded_message(message)
    except ValueError:
        return
    protocol.encode(ready.message)
    for piece in ready.pieces(1.0):  # derived properties must not raise either
        protocol.encode(piece.message)
    assert isinstance(ready.kind, str) and ready.audio_ms >= 0
