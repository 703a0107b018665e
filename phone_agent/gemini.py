"""Gemini Live, through the google-genai SDK: session setup, and server messages as typed events.

Everything Gemini-specific lives here. The bridge sees `ModelSession` (send audio and text, iterate
events) and `ModelEvent`s; it never touches SDK types.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pydantic
import websockets
from google import genai
from google.genai import _live_converters as live_converters
from google.genai import errors as genai_errors
from google.genai import types

from phone_agent.capabilities import capabilities_for
from phone_agent.config import Settings

log = logging.getLogger(__name__)

INPUT_MIME = "audio/pcm;rate=16000"
OUTPUT_RATE = 24000
# How long closing a session waits for the server's close frame before dropping the connection.
CLOSE_TIMEOUT_S = 2.0
_RATE = re.compile(r"rate\s*=\s*(\d+)")


class ModelSessionClosed(Exception):
    """The model's connection ended (cleanly or not)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"model session closed (code {code}): {reason}"[:300])
        self.code = code
        self.reason = reason


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelAudio:
    pcm24k: bytes


@dataclass(frozen=True)
class OutputTranscript:
    text: str


@dataclass(frozen=True)
class InputTranscript:
    text: str
    finished: bool = False


@dataclass(frozen=True)
class Interrupted:
    pass


@dataclass(frozen=True)
class GenerationComplete:
    pass


@dataclass(frozen=True)
class TurnComplete:
    pass


@dataclass(frozen=True)
class FunctionCall:
    id: str
    name: str
    args: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ToolCallRequest:
    calls: tuple[FunctionCall, ...]


@dataclass(frozen=True)
class ToolCallCancelled:
    ids: tuple[str, ...]


@dataclass(frozen=True)
class GoAway:
    time_left_s: float | None


@dataclass(frozen=True)
class ResumptionUpdate:
    handle: str | None
    resumable: bool


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    response_tokens: int
    total_tokens: int
    prompt_by_modality: dict[str, int] = field(hash=False)
    response_by_modality: dict[str, int] = field(hash=False)


ModelEvent = (
    ModelAudio
    | OutputTranscript
    | InputTranscript
    | Interrupted
    | GenerationComplete
    | TurnComplete
    | ToolCallRequest
    | ToolCallCancelled
    | GoAway
    | ResumptionUpdate
    | Usage
)


def _duration_s(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    text = str(value).strip()
    try:
        return float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        return None


def _by_modality(details: list[types.ModalityTokenCount] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in details or []:
        name = item.modality.value if item.modality is not None else "UNSPECIFIED"
        out[name] = out.get(name, 0) + (item.token_count or 0)
    return out


def _pcm24k(blob: types.Blob, dropped: list[tuple[str, str]]) -> bytes | None:
    """The PCM of an audio part, if it is what the Live API promises (16-bit PCM at 24 kHz);
    else None, with why in `dropped`. An odd trailing byte is cut: each part holds whole samples,
    and carrying the byte over would shift every later sample of the turn into noise."""
    return _playable(blob.mime_type, blob.data, dropped)


def _playable(
    mime_type: str | None, data: bytes | None, dropped: list[tuple[str, str]]
) -> bytes | None:
    mime = (mime_type or "").lower()
    if not mime.startswith("audio/"):
        return None  # not audio at all (an image, a file): nothing to play
    rate = _RATE.search(mime)
    if not mime.startswith(("audio/pcm", "audio/l16")) or (rate and int(rate[1]) != OUTPUT_RATE):
        dropped.append(("model audio in an unexpected format dropped", repr(mime_type)))
        return None
    data = data or b""
    if len(data) % 2:
        dropped.append(("model audio of an odd length cut to whole samples", f"{len(data)} bytes"))
        data = data[:-1]
    return data


def translate(
    message: types.LiveServerMessage, dropped: list[tuple[str, str]] | None = None
) -> list[ModelEvent]:
    """One SDK message as events, in the order the bridge must act on them.

    Audio the bridge cannot play as it is (see `_pcm24k`) is dropped or trimmed; `dropped`, when
    given, collects what and why, as (problem, detail) pairs.
    """
    dropped = dropped if dropped is not None else []
    events: list[ModelEvent] = []
    if message.tool_call_cancellation is not None:
        events.append(ToolCallCancelled(tuple(message.tool_call_cancellation.ids or ())))
    content = message.server_content
    if content is not None:
        if content.input_transcription is not None and content.input_transcription.text:
            events.append(
                InputTranscript(
                    content.input_transcription.text, bool(content.input_transcription.finished)
                )
            )
        if content.interrupted:
            events.append(Interrupted())
        if content.model_turn is not None:
            for part in content.model_turn.parts or []:
                blob = part.inline_data
                pcm = _pcm24k(blob, dropped) if blob is not None else None
                if pcm:
                    events.append(ModelAudio(pcm))
        if content.output_transcription is not None and content.output_transcription.text:
            events.append(OutputTranscript(content.output_transcription.text))
        if content.generation_complete:
            events.append(GenerationComplete())
    if message.tool_call is not None:
        calls = tuple(
            FunctionCall(id=c.id or "", name=c.name or "", args=dict(c.args or {}))
            for c in message.tool_call.function_calls or []
        )
        events.append(ToolCallRequest(calls))
    if message.session_resumption_update is not None:
        update = message.session_resumption_update
        events.append(ResumptionUpdate(update.new_handle, bool(update.resumable)))
    if message.go_away is not None:
        events.append(GoAway(_duration_s(message.go_away.time_left)))
    if message.usage_metadata is not None:
        usage = message.usage_metadata
        events.append(
            Usage(
                prompt_tokens=usage.prompt_token_count or 0,
                response_tokens=usage.response_token_count or 0,
                total_tokens=usage.total_token_count or 0,
                prompt_by_modality=_by_modality(usage.prompt_tokens_details),
                response_by_modality=_by_modality(usage.response_tokens_details),
            )
        )
    if content is not None and content.turn_complete:
        events.append(TurnComplete())
    return events


def audio_only(message: Mapping[str, Any]) -> list[tuple[str | None, str]] | None:
    """The (mime type, base64 data) of each part of a wire message that holds nothing but model
    audio, the bulk of a call's messages; None for any other message.

    Such messages skip the SDK's pydantic parsing (about 10× the cost of the JSON itself, and the
    largest share of a call's CPU after the audio work): the events are the same.
    """
    if len(message) != 1:
        return None
    content = message.get("serverContent")
    if not isinstance(content, dict) or len(content) != 1:
        return None
    turn = content.get("modelTurn")
    if not isinstance(turn, dict) or not turn.keys() <= {"parts", "role"}:
        return None
    parts = turn.get("parts")
    if not isinstance(parts, list) or not parts:
        return None
    blobs: list[tuple[str | None, str]] = []
    for part in parts:
        if not isinstance(part, dict) or len(part) != 1:
            return None
        blob = part.get("inlineData")
        if not isinstance(blob, dict) or not blob.keys() <= {"mimeType", "data"}:
            return None
        data, mime = blob.get("data", ""), blob.get("mimeType")
        if not isinstance(data, str) or not (mime is None or isinstance(mime, str)):
            return None
        blobs.append((mime, data))
    return blobs


def transcript_only(message: Mapping[str, Any]) -> OutputTranscript | InputTranscript | None:
    """The event of a wire message that holds nothing but a transcription piece (the next most
    frequent kind, one per few audio chunks); None for any other message."""
    if len(message) != 1:
        return None
    content = message.get("serverContent")
    if not isinstance(content, dict) or len(content) != 1:
        return None
    for key in ("outputTranscription", "inputTranscription"):
        piece = content.get(key)
        if piece is None:
            continue
        if not isinstance(piece, dict) or not piece.keys() <= {"text", "finished"}:
            return None
        text, finished = piece.get("text", ""), piece.get("finished", False)
        if not isinstance(text, str) or not isinstance(finished, bool):
            return None
        if key == "outputTranscription":
            return OutputTranscript(text)
        return InputTranscript(text, finished)
    return None


def realtime_audio_frame(pcm16k: bytes) -> str:
    """The `realtimeInput` frame for 16 kHz caller audio, as the SDK writes it."""
    data = base64.urlsafe_b64encode(pcm16k).decode("ascii")  # as the SDK encodes bytes
    return orjson.dumps(
        {"realtime_input": {"audio": {"data": data, "mime_type": INPUT_MIME}}}
    ).decode()


def _sdk_message(wire: dict[str, Any]) -> types.LiveServerMessage:
    """A wire message parsed as the SDK's `AsyncSession._receive` parses it (Gemini API)."""
    converted = live_converters._LiveServerMessage_from_mldev(wire)
    if not converted and wire:
        raise TypeError("no field the SDK knows")
    return types.LiveServerMessage._from_response(response=converted, kwargs={})


# -- sessions ---------------------------------------------------------------------------------


class ModelSession(Protocol):
    """What the bridge needs from a live model session."""

    async def send_audio(self, pcm16k: bytes) -> None: ...

    async def send_text(self, text: str) -> None: ...

    async def send_tool_responses(self, responses: list[types.FunctionResponse]) -> None: ...

    async def send_context(self, text: str) -> None: ...

    def events(self) -> AsyncIterator[ModelEvent]: ...

    # Called with every server message, verbatim, before it is translated (call recording).
    on_message: Callable[[Mapping[str, Any]], None] | None


class GeminiSession:
    """A connected Gemini Live session.

    A server message the SDK cannot parse (not JSON, bad base64, no key it knows) is skipped, and
    so is audio the bridge cannot play (see `translate`): the connection itself is fine, and a
    newer server must not end calls. Each kind of problem is logged once per session at WARNING,
    then at DEBUG; `skipped` counts them. Only `MAX_UNPARSABLE_IN_A_ROW` unparsable messages in a
    row are borne: then the session counts as closed, so that the call reconnects (or apologises)
    instead of waiting on a server that only sends garbage.
    """

    MAX_UNPARSABLE_IN_A_ROW = 50

    def __init__(self, session: genai.live.AsyncSession) -> None:
        self._session = session
        self.on_message: Callable[[Mapping[str, Any]], None] | None = None
        self.skipped = 0
        self._unparsable_in_a_row = 0
        self._reported: set[str] = set()

    async def send_audio(self, pcm16k: bytes) -> None:
        # 50 times a second per call: the frame the SDK's send_realtime_input(audio=...) would
        # write, without its pydantic round trip (70 µs → 3 µs; `tests/test_gemini.py` holds the
        # two equal). The SDK's own path serves if its socket attribute ever moves.
        ws = getattr(self._session, "_ws", None)
        try:
            if ws is None:
                await self._session.send_realtime_input(
                    audio=types.Blob(data=pcm16k, mime_type=INPUT_MIME)
                )
            else:
                await ws.send(realtime_audio_frame(pcm16k))
        except websockets.ConnectionClosed as exc:
            raise ModelSessionClosed(exc.rcvd.code if exc.rcvd else 1006, "send failed") from None

    async def send_text(self, text: str) -> None:
        try:
            await self._session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=text)]),
                turn_complete=True,
            )
        except websockets.ConnectionClosed as exc:
            raise ModelSessionClosed(exc.rcvd.code if exc.rcvd else 1006, "send failed") from None

    async def send_context(self, text: str) -> None:
        """Add a user-side note to the conversation without asking the model to answer it."""
        try:
            await self._session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=text)]),
                turn_complete=False,
            )
        except websockets.ConnectionClosed as exc:
            raise ModelSessionClosed(exc.rcvd.code if exc.rcvd else 1006, "send failed") from None

    async def send_tool_responses(self, responses: list[types.FunctionResponse]) -> None:
        try:
            await self._session.send_tool_response(function_responses=responses)
        except websockets.ConnectionClosed as exc:
            raise ModelSessionClosed(exc.rcvd.code if exc.rcvd else 1006, "send failed") from None

    async def events(self) -> AsyncIterator[ModelEvent]:
        """Every event until the connection ends, which raises `ModelSessionClosed`."""
        while True:
            raw = await self._receive_frame()
            try:
                wire = orjson.loads(raw) if raw else {}
                if not isinstance(wire, dict):
                    raise ValueError("not a JSON object")
            except (orjson.JSONDecodeError, ValueError) as exc:
                self._unparsable(ValueError(str(exc)))
                continue
            dropped: list[tuple[str, str]] = []
            transcript = transcript_only(wire)
            blobs = audio_only(wire) if transcript is None else None
            if transcript is not None:
                self._unparsable_in_a_row = 0
                if self.on_message is not None:
                    self.on_message(wire)
                events: list[ModelEvent] = [transcript] if transcript.text else []
            elif blobs is not None:
                audio = self._audio_events(blobs, dropped)
                if audio is None:
                    self._unparsable(None, "serverContent.modelTurn.parts: data is not base64")
                    continue
                events = audio
                self._unparsable_in_a_row = 0
                if self.on_message is not None:
                    self.on_message(wire)
            else:
                try:
                    message = _sdk_message(wire)
                except (ValueError, TypeError, AttributeError, LookupError) as exc:
                    # The SDK failed to parse it. Only the SDK's step is guarded here: an error in
                    # our own handling below still raises.
                    self._unparsable(exc)
                    continue
                self._unparsable_in_a_row = 0
                if self.on_message is not None:
                    self.on_message(
                        message.model_dump(mode="json", exclude_none=True, by_alias=True)
                    )
                events = translate(message, dropped)
            for problem, detail in dropped:
                self._skip(problem, detail)
            for event in events:
                yield event

    async def _receive_frame(self) -> bytes | str:
        ws = getattr(self._session, "_ws", None)
        if ws is None:  # pragma: no cover - the SDK moved its socket: nothing to read from
            raise ModelSessionClosed(None, "the SDK's session has no socket")
        try:
            frame: bytes | str = await ws.recv(decode=False)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise ModelSessionClosed(code, "connection closed") from None
        return frame

    @staticmethod
    def _audio_events(
        blobs: list[tuple[str | None, str]], dropped: list[tuple[str, str]]
    ) -> list[ModelEvent] | None:
        events: list[ModelEvent] = []
        for mime, encoded in blobs:
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                try:  # the URL-safe alphabet, as the SDK itself accepts
                    data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                except (binascii.Error, ValueError):
                    return None
            pcm = _playable(mime, data, dropped)
            if pcm:
                events.append(ModelAudio(pcm))
        return events

    def _unparsable(self, exc: Exception | None, why: str = "") -> None:
        self._unparsable_in_a_row += 1
        if exc is None:
            detail = why
        elif isinstance(exc, pydantic.ValidationError):
            error = exc.errors()[0]
            detail = ".".join(map(str, error["loc"])) + ": " + error["msg"]
        elif isinstance(exc, ValueError):
            detail = "not JSON"
        else:
            detail = f"no field the SDK knows ({type(exc).__name__})"  # e.g. a newer API's message
        self._skip("unparsable server message skipped", detail)
        if self._unparsable_in_a_row >= self.MAX_UNPARSABLE_IN_A_ROW:
            count = self._unparsable_in_a_row
            raise ModelSessionClosed(None, f"{count} unparsable messages in a row") from None

    def _skip(self, problem: str, detail: str) -> None:
        self.skipped += 1
        first = problem not in self._reported
        self._reported.add(problem)
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "bad model output: %s (%s)",
            problem,
            detail[:200],
            extra={"event": "model.bad_output", "problem": problem, "skipped": self.skipped},
        )


def connect_config(
    settings: Settings, declarations: list[types.FunctionDeclaration] | None = None
) -> types.LiveConnectConfig:
    """The session setup: audio out, voice, prompt, both transcriptions, resumption on, and the
    enabled tools' declarations."""
    tools: list[types.ToolUnion] | None = (
        [types.Tool(function_declarations=declarations)] if declarations else None
    )
    compression = None
    if capabilities_for(settings.model).context_window_compression:
        # Long calls: past ~25k tokens the oldest turns slide out instead of the session ending.
        compression = types.ContextWindowCompressionConfig(
            trigger_tokens=25_600,
            sliding_window=types.SlidingWindow(target_tokens=12_800),
        )
    return types.LiveConnectConfig(
        tools=tools,
        context_window_compression=compression,
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=settings.voice)
            ),
            language_code=settings.language_code,
        ),
        system_instruction=types.Content(
            role="user", parts=[types.Part(text=settings.system_instruction())]
        ),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(),
    )


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS context for the model connection; honours SSL_CERT_FILE (e.g. a local emulator's CA)."""
    cafile = ca_file or os.environ.get("SSL_CERT_FILE") or None
    context = ssl.create_default_context()
    if cafile:
        context.load_verify_locations(cafile=cafile)
    return context


class GeminiConnector:
    """Opens Gemini Live sessions; one per process, shared by all calls.

    A session must be set up within `setup_timeout_s` (connection, TLS, WebSocket handshake and
    the server's `setupComplete`), else `connect` raises `ModelSessionClosed`: the SDK itself
    waits for `setupComplete` for ever.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        api_key: str,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        declarations: list[types.FunctionDeclaration] | None = None,
        setup_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self.setup_timeout_s = (
            setup_timeout_s if setup_timeout_s is not None else settings.model_setup_timeout_s
        )
        http_options: dict[str, Any] = {"api_version": "v1beta"}
        if base_url:
            http_options["base_url"] = base_url
        http_options["async_client_args"] = {
            "ssl": ssl_context or client_ssl_context(),
            "close_timeout": CLOSE_TIMEOUT_S,  # passed on to websockets' connect
        }
        self._client = genai.Client(api_key=api_key, http_options=types.HttpOptions(**http_options))
        self._config = connect_config(settings, declarations)

    @asynccontextmanager
    async def connect(
        self, *, resumption_handle: str | None = None, extra_instruction: str = ""
    ) -> AsyncIterator[GeminiSession]:
        """A session; with `resumption_handle`, one that resumes an earlier session's state;
        `extra_instruction` is appended to the system instruction (e.g. caller memory)."""
        config = self._config
        if extra_instruction:
            text = self.settings.system_instruction() + extra_instruction
            instruction = types.Content(role="user", parts=[types.Part(text=text)])
            config = config.model_copy(update={"system_instruction": instruction})
        if resumption_handle is not None:
            config = config.model_copy(
                update={
                    "session_resumption": types.SessionResumptionConfig(handle=resumption_handle)
                }
            )
        try:
            async with AsyncExitStack() as stack:
                try:
                    # One plain asyncio cancellation, not an anyio scope: that would cancel the
                    # SDK's own clean-up too, and leave the socket of a server that does not
                    # answer the close open; this way the SDK closes it (within CLOSE_TIMEOUT_S).
                    async with asyncio.timeout(self.setup_timeout_s):
                        session = await stack.enter_async_context(
                            self._client.aio.live.connect(model=self.model, config=config)
                        )
                except TimeoutError:
                    timeout = self.setup_timeout_s
                    log.warning(
                        "model session not set up within %g s",
                        timeout,
                        extra={"event": "model.setup_timeout", "timeout_s": timeout},
                    )
                    raise ModelSessionClosed(
                        None, f"no setupComplete within {timeout:g} s"
                    ) from None
                yield GeminiSession(session)
        except genai_errors.APIError as exc:
            raise ModelSessionClosed(exc.code, str(exc.message or exc.status or "")) from None
        except (OSError, websockets.InvalidHandshake) as exc:
            raise ModelSessionClosed(None, f"cannot connect: {type(exc).__name__}") from None
