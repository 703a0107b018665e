"""The Live API wire format, sans I/O: client frames in, normalised events out; server messages out.

Clients mix casings (the SDK sends `realtime_input` next to camelCase `setup` keys) and base64
alphabets (the SDK sends URL-safe). Everything is normalised here to snake_case keys and bytes,
except user data (`args`, `response`, schemas), whose keys are the caller's own and stay verbatim.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from phone_agent.emulator.audio import OUTPUT_RATE

CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011

DEFAULT_INPUT_RATE = 16_000

# Values under these keys are user data or schemas: never rename their keys.
_OPAQUE_KEYS = frozenset(
    {
        "args",
        "partial_args",
        "response",
        "parameters",
        "parameters_json_schema",
        "response_json_schema",
        "response_schema",
    }
)
_REALTIME_KEYS = frozenset(
    {"activity_start", "audio", "video", "media_chunks", "text", "activity_end", "audio_stream_end"}
)
_RATE = re.compile(r"rate\s*=\s*(\d+)")


class ProtocolError(Exception):
    """A client message the emulator cannot accept; the connection is closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# -- client events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupInfo:
    """The parts of a `setup` message the emulator acts on or tests look at; `raw` has the rest."""

    raw: Mapping[str, Any]
    model: str
    response_modalities: tuple[str, ...] = ("AUDIO",)
    voice: str | None = None
    language_code: str | None = None
    system_instruction: str | None = None
    input_transcription: bool = False
    output_transcription: bool = False
    resumption: bool = False
    resumption_handle: str | None = None
    tools: tuple[str, ...] = ()
    automatic_activity_detection: bool = True
    silence_duration_ms: int | None = None
    activity_handling: str | None = None

    @property
    def interrupts(self) -> bool:
        """Whether the caller's speech interrupts the model (the default activity handling)."""
        return self.activity_handling != "NO_INTERRUPTION"

    @property
    def text_only(self) -> bool:
        """Whether the model answers in text parts rather than audio."""
        return "AUDIO" not in self.response_modalities


@dataclass(frozen=True)
class Setup:
    info: SetupInfo


@dataclass(frozen=True)
class AudioIn:
    """Caller audio: int16 little-endian mono PCM at `rate` Hz."""

    pcm: bytes
    rate: int


@dataclass(frozen=True)
class MediaIn:
    """Media the emulator does not listen to (video frames, images, non-PCM audio)."""

    mime_type: str
    size: int


@dataclass(frozen=True)
class ActivityStart:
    pass


@dataclass(frozen=True)
class ActivityEnd:
    pass


@dataclass(frozen=True)
class AudioStreamEnd:
    pass


@dataclass(frozen=True)
class TextIn:
    """`realtime_input.text`."""

    text: str


@dataclass(frozen=True)
class ClientContent:
    """`client_content`: turns (normalised dicts) and whether the client's turn is complete."""

    turns: tuple[Mapping[str, Any], ...]
    turn_complete: bool

    @property
    def text(self) -> str:
        return "".join(
            part["text"]
            for turn in self.turns
            for part in _list(turn.get("parts"))
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )


@dataclass(frozen=True)
class FunctionResponse:
    id: str | None
    name: str | None
    response: Mapping[str, Any] = field(default_factory=dict)
    scheduling: str | None = None


@dataclass(frozen=True)
class ToolResponse:
    responses: tuple[FunctionResponse, ...]


@dataclass(frozen=True)
class Unknown:
    """A top-level or `realtime_input` key the emulator does not know; logged and ignored."""

    key: str


ClientEvent = (
    Setup
    | AudioIn
    | MediaIn
    | ActivityStart
    | ActivityEnd
    | AudioStreamEnd
    | TextIn
    | ClientContent
    | ToolResponse
    | Unknown
)


@functools.lru_cache(maxsize=512)
def snake_case(key: str) -> str:
    """`mimeType` -> `mime_type`; snake_case keys are returned unchanged."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def normalise(value: Any) -> Any:
    """Recursively snake_case every key, except inside user data (see `_OPAQUE_KEYS`)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = snake_case(key) if isinstance(key, str) else key
            out[name] = item if name in _OPAQUE_KEYS else normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def decode_base64(data: object) -> bytes:
    """Decode standard or URL-safe base64, padded or not."""
    if not isinstance(data, str):
        raise ProtocolError(CLOSE_INVALID_DATA, "blob data must be a base64 string")
    text = data.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(CLOSE_INVALID_DATA, f"invalid base64 data: {exc}") from None


def parse_client_message(frame: str | bytes) -> list[ClientEvent]:
    """Parse one client frame (text or binary JSON) into events, in the order to act on them.

    Raises `ProtocolError` for anything malformed; unknown keys become `Unknown` events.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(CLOSE_INVALID_DATA, f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(CLOSE_INVALID_DATA, "a client message must be a JSON object")
    message = normalise(message)
    events: list[ClientEvent] = []
    for key, body in message.items():
        match key:
            case "setup":
                events.append(Setup(parse_setup(body)))
            case "realtime_input":
                events.extend(_realtime_input(_object(body, key)))
            case "client_content":
                events.append(_client_content(_object(body, key)))
            case "tool_response":
                events.append(_tool_response(_object(body, key)))
            case _:
                events.append(Unknown(key))
    return events


def parse_setup(body: object) -> SetupInfo:
    """Pick the fields the emulator uses out of a normalised `setup` body."""
    setup = _object(body, "setup")
    model = setup.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError(CLOSE_INVALID_DATA, "setup.model must be a non-empty string")
    generation = _object(setup.get("generation_config") or {}, "setup.generation_config")
    speech = _object(generation.get("speech_config") or {}, "speech_config")
    detection = _dig(setup, "realtime_input_config", "automatic_activity_detection") or {}
    resumption = setup.get("session_resumption")
    silence = detection.get("silence_duration_ms") if isinstance(detection, dict) else None
    return SetupInfo(
        raw=setup,
        model=model,
        response_modalities=_modalities(generation.get("response_modalities")),
        voice=_str(_dig(speech, "voice_config", "prebuilt_voice_config", "voice_name")),
        language_code=_str(speech.get("language_code")),
        system_instruction=_content_text(setup.get("system_instruction")),
        input_transcription=setup.get("input_audio_transcription") is not None,
        output_transcription=setup.get("output_audio_transcription") is not None,
        resumption=resumption is not None,
        resumption_handle=_str(resumption.get("handle")) if isinstance(resumption, dict) else None,
        tools=tuple(
            decl["name"]
            for tool in _list(setup.get("tools"))
            if isinstance(tool, dict)
            for decl in _list(tool.get("function_declarations"))
            if isinstance(decl, dict) and isinstance(decl.get("name"), str)
        ),
        automatic_activity_detection=not (
            isinstance(detection, dict) and detection.get("disabled")
        ),
        silence_duration_ms=_positive_int(silence),
        activity_handling=_str(_dig(setup, "realtime_input_config", "activity_handling")),
    )


def _modalities(value: object) -> tuple[str, ...]:
    if value is None:
        return ("AUDIO",)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(CLOSE_INVALID_DATA, "response_modalities must be a list of strings")
    return tuple(v.upper() for v in value) or ("AUDIO",)


def _realtime_input(body: Mapping[str, Any]) -> list[ClientEvent]:
    # One key per message from the SDK; if several arrive together, act in a sensible order.
    events: list[ClientEvent] = []
    if "activity_start" in body:
        events.append(ActivityStart())
    for key in ("audio", "video"):
        if body.get(key) is not None:
            events.append(_blob(body[key], f"realtime_input.{key}"))
    chunks = body.get("media_chunks")
    if chunks is not None:
        if not isinstance(chunks, list):
            raise ProtocolError(CLOSE_INVALID_DATA, "realtime_input.media_chunks must be a list")
        events.extend(_blob(chunk, "realtime_input.media_chunks[]") for chunk in chunks)
    if body.get("text") is not None:
        if not isinstance(body["text"], str):
            raise ProtocolError(CLOSE_INVALID_DATA, "realtime_input.text must be a string")
        events.append(TextIn(body["text"]))
    if "activity_end" in body:
        events.append(ActivityEnd())
    if body.get("audio_stream_end"):
        events.append(AudioStreamEnd())
    events.extend(Unknown(f"realtime_input.{k}") for k in body if k not in _REALTIME_KEYS)
    return events


def _blob(body: object, where: str) -> AudioIn | MediaIn:
    blob = _object(body, where)
    mime = blob.get("mime_type") or "audio/pcm"
    if not isinstance(mime, str):
        raise ProtocolError(CLOSE_INVALID_DATA, f"{where}.mime_type must be a string")
    data = decode_base64(blob.get("data", ""))
    if not mime.lower().startswith(("audio/pcm", "audio/l16")):
        return MediaIn(mime, len(data))
    match = _RATE.search(mime)
    rate = int(match.group(1)) if match else DEFAULT_INPUT_RATE
    if not 1_000 <= rate <= 192_000:
        raise ProtocolError(CLOSE_INVALID_DATA, f"unsupported sample rate in {mime!r}")
    return AudioIn(data, rate)


def _client_content(body: Mapping[str, Any]) -> ClientContent:
    turns = body.get("turns") or []
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ProtocolError(CLOSE_INVALID_DATA, "client_content.turns must be a list of objects")
    return ClientContent(tuple(turns), bool(body.get("turn_complete")))


def _tool_response(body: Mapping[str, Any]) -> ToolResponse:
    responses = body.get("function_responses") or []
    if not isinstance(responses, list):
        raise ProtocolError(CLOSE_INVALID_DATA, "tool_response.function_responses must be a list")
    parsed = []
    for item in responses:
        r = _object(item, "tool_response.function_responses[]")
        response = r.get("response") or {}
        if not isinstance(response, dict):
            raise ProtocolError(CLOSE_INVALID_DATA, "function response must be an object")
        parsed.append(
            FunctionResponse(
                _str(r.get("id")), _str(r.get("name")), response, _str(r.get("scheduling"))
            )
        )
    return ToolResponse(tuple(parsed))


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(CLOSE_INVALID_DATA, f"{where} must be an object")
    return value


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        return None
    return int(value)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, dict):
        return None
    texts = [p["text"] for p in _list(content.get("parts")) if isinstance(p, dict) and "text" in p]
    return "".join(t for t in texts if isinstance(t, str)) if texts else None


# -- server messages -------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """A server message as UTF-8 JSON."""
    return orjson.dumps(message)


def setup_complete() -> dict[str, Any]:
    return {"setupComplete": {}}


def model_audio(pcm: bytes, rate: int = OUTPUT_RATE) -> dict[str, Any]:
    blob = {"mimeType": f"audio/pcm;rate={rate}", "data": base64.b64encode(pcm).decode("ascii")}
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}}


def model_text(text: str) -> dict[str, Any]:
    return {"serverContent": {"modelTurn": {"parts": [{"text": text}]}}}


def output_transcription(text: str) -> dict[str, Any]:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def input_transcription(text: str, finished: bool = True) -> dict[str, Any]:
    return {"serverContent": {"inputTranscription": {"text": text, "finished": finished}}}


def generation_complete() -> dict[str, Any]:
    return {"serverContent": {"generationComplete": True}}


def interrupted() -> dict[str, Any]:
    return {"serverContent": {"interrupted": True}}


def turn_complete(usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`turnComplete`, with `usageMetadata` riding alongside so `receive()` yields both at once."""
    message: dict[str, Any] = {"serverContent": {"turnComplete": True}}
    if usage is not None:
        message["usageMetadata"] = usage
    return message


def tool_call(calls: Sequence[tuple[str, str, Mapping[str, Any]]]) -> dict[str, Any]:
    """`toolCall` for `(id, name, args)` triples."""
    return {
        "toolCall": {"functionCalls": [{"id": i, "name": n, "args": dict(a)} for i, n, a in calls]}
    }


def tool_call_cancellation(ids: Sequence[str]) -> dict[str, Any]:
    return {"toolCallCancellation": {"ids": list(ids)}}


def go_away(time_left_s: float) -> dict[str, Any]:
    return {"goAway": {"timeLeft": duration(time_left_s)}}


def resumption_update(handle: str, resumable: bool = True) -> dict[str, Any]:
    return {"sessionResumptionUpdate": {"newHandle": handle, "resumable": resumable}}


def duration(seconds: float) -> str:
    """A protobuf Duration in its JSON form: `50s`, `0.25s`."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"
