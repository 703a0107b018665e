"""Twilio Media Streams protocol, sans-I/O.

`TwilioStream` is fed the text of each WebSocket message Twilio sends and returns typed, validated
events; it serialises what we send back (`media`, `mark`, `clear`). It does no I/O and knows no
clock, so recorded calls run through it in microseconds. Every way a peer can misbehave raises
`TwilioProtocolError`, whose message is safe to log (it never echoes the payload).

State machine: AWAITING_START --start--> STREAMING --stop--> STOPPED.
`connected` is allowed once, before `start`; nothing is allowed after `stop`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

MULAW_BYTES_PER_MS = 8
SILENCE_BYTE = b"\xff"
# A Twilio gap longer than this is not filled with silence: the audio clock resyncs instead.
MAX_GAP_FILL_MS = 2000


class TwilioProtocolError(Exception):
    """The peer sent something Twilio never sends. The call should be closed."""


class StreamState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Media:
    sequence_number: int
    chunk: int
    timestamp_ms: int
    payload: bytes
    # Milliseconds of silence missing before this frame (Twilio skips frames on some calls).
    gap_ms: int = 0


@dataclass(frozen=True)
class Dtmf:
    sequence_number: int
    digit: str


@dataclass(frozen=True)
class MarkEcho:
    sequence_number: int
    name: str


@dataclass(frozen=True)
class Stop:
    sequence_number: int
    call_sid: str


InboundEvent = Connected | Start | Media | Dtmf | MarkEcho | Stop

_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TwilioProtocolError(f"{what} must be an object")
    return value


def _str(message: dict[str, Any], key: str, what: str, *, max_len: int = 256) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise TwilioProtocolError(f"{what}.{key} must be a string")
    if len(value) > max_len:
        raise TwilioProtocolError(f"{what}.{key} is too long")
    return value


def _int_str(message: dict[str, Any], key: str, what: str) -> int:
    # Twilio sends sequenceNumber, chunk and timestamp as decimal strings.
    value = message.get(key)
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TwilioProtocolError(f"{what}.{key} must be a non-negative integer string")


class TwilioStream:
    """One media stream's protocol state: parse inbound messages, serialise outbound ones."""

    def __init__(self, *, max_message_bytes: int = 64 * 1024) -> None:
        self.max_message_bytes = max_message_bytes
        self.state = StreamState.AWAITING_START
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self._seen_connected = False
        self._expected_timestamp_ms: int | None = None

    # -- inbound ---------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> InboundEvent:
        """Parse one WebSocket message. Raises `TwilioProtocolError` on anything invalid."""
        if isinstance(data, bytes):
            raise TwilioProtocolError("binary frame (Twilio sends JSON text frames only)")
        if len(data) > self.max_message_bytes:
            raise TwilioProtocolError(
                f"message of {len(data)} bytes exceeds the {self.max_message_bytes}-byte limit"
            )
        if self.state is StreamState.STOPPED:
            raise TwilioProtocolError("message after stop")
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise TwilioProtocolError("message is not valid JSON") from None
        message = _obj(message, "message")
        event = message.get("event")
        if event == "media":
            return self._media(message)
        if event == "mark":
            return self._mark(message)
        if event == "start":
            return self._start(message)
        if event == "dtmf":
            return self._dtmf(message)
        if event == "stop":
            return self._stop(message)
        if event == "connected":
            return self._connected(message)
        if isinstance(event, str) and len(event) <= 32:
            raise TwilioProtocolError(f"unknown event {event!r}")
        raise TwilioProtocolError("message has no valid 'event'")

    def _connected(self, message: dict[str, Any]) -> Connected:
        if self._seen_connected or self.state is not StreamState.AWAITING_START:
            raise TwilioProtocolError("unexpected 'connected' event")
        self._seen_connected = True
        return Connected(
            protocol=str(message.get("protocol", ""))[:32],
            version=str(message.get("version", ""))[:32],
        )

    def _start(self, message: dict[str, Any]) -> Start:
        if self.state is not StreamState.AWAITING_START:
            raise TwilioProtocolError("second 'start' event")
        seq = _int_str(message, "sequenceNumber", "start")
        body = _obj(message.get("start"), "start.start")
        stream_sid = _str(body, "streamSid", "start")
        call_sid = _str(body, "callSid", "start")
        account_sid = _str(body, "accountSid", "start")
        if not _SID.fullmatch(stream_sid) or not _SID.fullmatch(call_sid):
            raise TwilioProtocolError("start.streamSid and start.callSid must be Twilio SIDs")
        top_sid = message.get("streamSid")
        if top_sid is not None and top_sid != stream_sid:
            raise TwilioProtocolError("start.streamSid disagrees with the message's streamSid")
        fmt = _obj(body.get("mediaFormat"), "start.mediaFormat")
        if (
            fmt.get("encoding") != "audio/x-mulaw"
            or fmt.get("sampleRate") != 8000
            or fmt.get("channels") != 1
        ):
            raise TwilioProtocolError("mediaFormat must be audio/x-mulaw, 8000 Hz, 1 channel")
        raw_tracks = body.get("tracks", ["inbound"])
        if not isinstance(raw_tracks, list) or not all(isinstance(t, str) for t in raw_tracks):
            raise TwilioProtocolError("start.tracks must be a list of strings")
        raw_params = body.get("customParameters", {})
        if raw_params is None:
            raw_params = {}
        params = _obj(raw_params, "start.customParameters")
        if len(params) > 32 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 4096
            for k, v in params.items()
        ):
            raise TwilioProtocolError("start.customParameters must map short strings to strings")
        self.state = StreamState.STREAMING
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        return Start(
            sequence_number=seq,
            stream_sid=stream_sid,
            account_sid=account_sid,
            call_sid=call_sid,
            tracks=tuple(raw_tracks),
            custom_parameters=dict(params),
        )

    def _require_streaming(self, message: dict[str, Any], event: str) -> int:
        if self.state is not StreamState.STREAMING:
            raise TwilioProtocolError(f"'{event}' before 'start'")
        if message.get("streamSid") != self.stream_sid:
            raise TwilioProtocolError(f"'{event}' for another streamSid")
        return _int_str(message, "sequenceNumber", event)

    def _media(self, message: dict[str, Any]) -> Media:
        seq = self._require_streaming(message, "media")
        body = _obj(message.get("media"), "media.media")
        track = body.get("track", "inbound")
        if track not in ("inbound", "outbound"):
            raise TwilioProtocolError("media.track must be 'inbound'")
        chunk = _int_str(body, "chunk", "media")
        timestamp = _int_str(body, "timestamp", "media")
        encoded = body.get("payload")
        if not isinstance(encoded, str):
            raise TwilioProtocolError("media.payload must be a string")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise TwilioProtocolError("media.payload is not valid base64") from None
        gap = 0
        expected = self._expected_timestamp_ms
        if expected is not None and timestamp > expected:
            gap = timestamp - expected
            if gap > MAX_GAP_FILL_MS:
                gap = 0
        self._expected_timestamp_ms = max(
            timestamp + len(payload) // MULAW_BYTES_PER_MS, expected or 0
        )
        return Media(
            sequence_number=seq, chunk=chunk, timestamp_ms=timestamp, payload=payload, gap_ms=gap
        )

    def _dtmf(self, message: dict[str, Any]) -> Dtmf:
        seq = self._require_streaming(message, "dtmf")
        body = _obj(message.get("dtmf"), "dtmf.dtmf")
        digit = _str(body, "digit", "dtmf", max_len=1)
        if digit not in _DTMF_DIGITS:
            raise TwilioProtocolError("dtmf.digit is not a DTMF digit")
        return Dtmf(sequence_number=seq, digit=digit)

    def _mark(self, message: dict[str, Any]) -> MarkEcho:
        seq = self._require_streaming(message, "mark")
        body = _obj(message.get("mark"), "mark.mark")
        return MarkEcho(sequence_number=seq, name=_str(body, "name", "mark"))

    def _stop(self, message: dict[str, Any]) -> Stop:
        seq = self._require_streaming(message, "stop")
        body = message.get("stop")
        call_sid = ""
        if isinstance(body, dict) and isinstance(body.get("callSid"), str):
            call_sid = body["callSid"][:64]
        self.state = StreamState.STOPPED
        return Stop(sequence_number=seq, call_sid=call_sid)

    # -- outbound --------------------------------------------------------------------------

    def _require_sid(self) -> str:
        if self.state is not StreamState.STREAMING or self.stream_sid is None:
            raise RuntimeError(f"cannot send on a stream in state {self.state.value}")
        return self.stream_sid

    def media(self, mulaw: bytes) -> str:
        """A `media` message carrying raw 8 kHz mu-law (no WAV header)."""
        sid = self._require_sid()
        payload = base64.b64encode(mulaw).decode("ascii")
        return f'{{"event":"media","streamSid":"{sid}","media":{{"payload":"{payload}"}}}}'

    def mark(self, name: str) -> str:
        sid = self._require_sid()
        return orjson.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}}).decode()

    def clear(self) -> str:
        sid = self._require_sid()
        return orjson.dumps({"event": "clear", "streamSid": sid}).decode()
