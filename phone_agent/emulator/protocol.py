"""The Live API wire format, sans I/O: client frames in, normalised events out; server messages out.

Clients mix casings (the SDK sends `realtime_input` next to camelCase `setup` keys) and base64
alphabets (the SDK sends URL-safe). Everything is normalised here to snake_case keys and bytes,
except user data (`args`, `response`, schemas), whose keys are the caller's own and stay verbatim.

Server messages go out in one normal form, as the service sends them: camelCase keys, standard
base64. Recorded server messages (either casing, either alphabet) are brought to it for replay by
`recorded_message`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from phone_agent.emulator import audio
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


# -- recorded server messages ----------------------------------------------------------------------

# `serverContent` fields that end or cut a turn: the emulator sends its own.
_TURN_STATE = frozenset(
    {
        "interrupted",
        "turnComplete",
        "generationComplete",
        "turnCompleteReason",
        "waitingForInput",
        "interactionStatus",
    }
)
# Connection-level messages: the emulator makes its own (and its VAD judges the caller's voice).
_SESSION_KEYS = frozenset(
    {
        "setupComplete",
        "sessionResumptionUpdate",
        "goAway",
        "voiceActivityDetectionSignal",
        "voiceActivity",
    }
)
_REPLAYED_KEYS = frozenset({"serverContent", "toolCall", "toolCallCancellation", "usageMetadata"})


@functools.lru_cache(maxsize=512)
def camel_case(key: str) -> str:
    """`mime_type` -> `mimeType`; camelCase keys are returned unchanged."""
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def wire_form(value: Any) -> Any:
    """A server message in either casing as the service sends it: camelCase keys, no null fields,
    bytes as standard base64. User data (`args`, …) is kept verbatim."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            if not isinstance(key, str):
                out[key] = wire_form(item)
            elif snake_case(key) in _OPAQUE_KEYS:
                out[camel_case(key)] = item
            else:
                out[camel_case(key)] = wire_form(item)
        return out
    if isinstance(value, list | tuple):
        return [wire_form(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return value


class Piece(NamedTuple):
    """A message to send, with the audio it carries."""

    message: dict[str, Any]
    audio_ms: float
    audio_bytes: int


@dataclass(frozen=True)
class RecordedMessage:
    """A recorded server message ready to replay (see `recorded_message`)."""

    message: Mapping[str, Any]
    """In the normal form, turn state removed; empty if nothing is left to send."""
    interrupted: bool = False
    """Whether it carried `interrupted`: the recorded turn was cut short by the caller."""
    audio: tuple[tuple[str, bytes], ...] = ()
    """The MIME type and PCM of each audio part, in order."""
    audio_ms: float = 0.0
    calls: tuple[tuple[str | None, str], ...] = ()
    """The id (None when the recording has none) and name of each function call."""
    cancelled: tuple[str, ...] = ()
    """The ids of a `toolCallCancellation`."""
    text_chars: int = 0
    """Characters of text parts."""

    @property
    def generated(self) -> bool:
        """Whether it is model output: parts, an output transcription or a tool call."""
        content = self.message.get("serverContent", {})
        return (
            "toolCall" in self.message or "modelTurn" in content or "outputTranscription" in content
        )

    @property
    def kind(self) -> str:
        """What it mainly is, as the emulator's records name messages (`audio`, `toolCall`, …)."""
        content = self.message.get("serverContent", {})
        if self.audio:
            return "audio"
        for key in ("toolCall", "toolCallCancellation"):
            if key in self.message:
                return key
        for key in ("outputTranscription", "inputTranscription"):
            if key in content:
                return key
        if "modelTurn" in content:
            return "text"
        return "usageMetadata" if "usageMetadata" in self.message else "serverContent"

    def with_call_ids(self, ids: Sequence[str]) -> RecordedMessage:
        """This message with its function calls' ids set to `ids`."""
        tool_call = self.message["toolCall"]
        calls = [
            {**call, "id": call_id}
            for call, call_id in zip(tool_call["functionCalls"], ids, strict=True)
        ]
        message = {**self.message, "toolCall": {**tool_call, "functionCalls": calls}}
        named = tuple((call_id, name) for call_id, (_, name) in zip(ids, self.calls, strict=True))
        return dataclasses.replace(self, message=message, calls=named)

    def pieces(self, max_ms: float) -> list[Piece]:
        """The messages to send for this one, each with at most `max_ms` of audio.

        Longer audio is cut into chunks, one a message; the other content rides with the first.
        """
        if self.audio_ms <= max_ms:
            size = sum(len(data) for _, data in self.audio)
            return [Piece(dict(self.message), self.audio_ms, size)]
        content = self.message["serverContent"]
        turn = content["modelTurn"]
        others = [part for part in turn["parts"] if _pcm_mime(part) is None]
        out: list[Piece] = []
        for mime, pcm in self.audio:
            rate = _pcm_rate(mime)
            for chunk in audio.chunks(pcm, max_ms, rate):
                part = {"inlineData": {"mimeType": mime, "data": _b64(chunk)}}
                if out:
                    message: dict[str, Any] = {"serverContent": {"modelTurn": {"parts": [part]}}}
                else:
                    first_turn = {**turn, "parts": [*others, part]}
                    message = {
                        **self.message,
                        "serverContent": {**content, "modelTurn": first_turn},
                    }
                out.append(Piece(message, audio.duration_ms(chunk, rate), len(chunk)))
        return out


def recorded_message(message: Mapping[str, Any]) -> RecordedMessage:
    """Prepare a recorded server message (either casing, either base64 alphabet) for replay.

    Turn state (`interrupted`, `turnComplete`, `generationComplete`, `turnCompleteReason`,
    `waitingForInput`, `interactionStatus`) is removed and session messages (`setupComplete`,
    `goAway`, `sessionResumptionUpdate`, voice activity) are dropped: the emulator sends its own.
    Raises `ValueError` whose message starts with the path of the bad field, e.g.
    ``.serverContent.modelTurn.parts[0].inlineData.data: …``.
    """
    wire = wire_form(message)
    unknown = sorted(set(wire) - _REPLAYED_KEYS - _SESSION_KEYS)
    if unknown:
        raise ValueError(f": unknown server message key(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    pcm: list[tuple[str, bytes]] = []
    text_chars = 0
    interrupted = False
    if "serverContent" in wire:
        body = _recorded_object(wire["serverContent"], ".serverContent")
        interrupted = bool(body.get("interrupted"))
        content = {k: v for k, v in body.items() if k not in _TURN_STATE}
        if "modelTurn" in content:
            content["modelTurn"], pcm, text_chars = _recorded_turn(content["modelTurn"])
        if content:
            out["serverContent"] = content
    calls: tuple[tuple[str | None, str], ...] = ()
    if "toolCall" in wire:
        tool_call = _recorded_object(wire["toolCall"], ".toolCall")
        calls = _recorded_calls(tool_call.get("functionCalls", []))
        if calls:
            out["toolCall"] = tool_call
    cancelled: tuple[str, ...] = ()
    if "toolCallCancellation" in wire:
        ids = _recorded_object(wire["toolCallCancellation"], ".toolCallCancellation").get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(".toolCallCancellation.ids: expected a list of strings")
        cancelled = tuple(ids)
        out["toolCallCancellation"] = {"ids": ids}
    if "usageMetadata" in wire:
        out["usageMetadata"] = _recorded_object(wire["usageMetadata"], ".usageMetadata")
    try:
        encode(out)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f": cannot be sent as JSON: {exc}") from None
    audio_ms = sum(audio.duration_ms(data, _pcm_rate(mime)) for mime, data in pcm)
    return RecordedMessage(out, interrupted, tuple(pcm), audio_ms, calls, cancelled, text_chars)


def _recorded_turn(value: object) -> tuple[dict[str, Any], list[tuple[str, bytes]], int]:
    where = ".serverContent.modelTurn"
    turn = _recorded_object(value, where)
    parts = turn.get("parts", [])
    if not isinstance(parts, list):
        raise ValueError(f"{where}.parts: expected a list")
    out, pcm, text_chars = [], [], 0
    for i, raw in enumerate(parts):
        part = _recorded_object(raw, f"{where}.parts[{i}]")
        if "inlineData" in part:
            blob = _recorded_object(part["inlineData"], f"{where}.parts[{i}].inlineData")
            try:
                data = decode_base64(blob.get("data", ""))
            except ProtocolError as exc:
                raise ValueError(f"{where}.parts[{i}].inlineData.data: {exc.reason}") from None
            part = {**part, "inlineData": {**blob, "data": _b64(data)}}
            mime = _pcm_mime(part)
            if mime is not None:
                if not 1_000 <= _pcm_rate(mime) <= 192_000:
                    raise ValueError(f"{where}.parts[{i}].inlineData.mimeType: unsupported rate")
                pcm.append((mime, data))
        if isinstance(part.get("text"), str):
            text_chars += len(part["text"])
        out.append(part)
    return {**turn, "parts": out}, pcm, text_chars


def _recorded_calls(value: object) -> tuple[tuple[str | None, str], ...]:
    where = ".toolCall.functionCalls"
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list")
    calls: list[tuple[str | None, str]] = []
    for i, raw in enumerate(value):
        call = _recorded_object(raw, f"{where}[{i}]")
        name, call_id = call.get("name"), call.get("id")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}[{i}].name: a function call needs a name")
        if call_id is not None and not isinstance(call_id, str):
            raise ValueError(f"{where}[{i}].id: expected a string")
        calls.append((call_id, name))
    return tuple(calls)


def _recorded_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    return value


def _pcm_mime(part: Mapping[str, Any]) -> str | None:
    """The MIME type of an inline PCM audio part, or None for any other part."""
    blob = part.get("inlineData")
    mime = blob.get("mimeType") if isinstance(blob, Mapping) else None
    if isinstance(mime, str) and mime.lower().startswith(("audio/pcm", "audio/l16")):
        return mime
    return None


def _pcm_rate(mime: str) -> int:
    match = _RATE.search(mime)
    return int(match.group(1)) if match else OUTPUT_RATE


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
