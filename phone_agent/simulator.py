"""A simulated Twilio caller: Twilio's side of a bidirectional ``<Connect><Stream>`` media stream.

`TwilioCallerSimulator` connects to our server as a WebSocket client, sends ``connected`` and
``start``, then one 20 ms mu-law frame per 20 ms of *call time*, driven by a caller script.
Audio the server sends back goes into a `PlaybackBuffer` that plays at call-time speed; what
it plays is what the caller heard. Marks are echoed when played, or at once on ``clear``,
as Twilio does. Everything is recorded in a `CallRecord`.

Call time runs at ``speed`` times real time (absolute deadlines on the monotonic clock, so
it does not drift). With ``speed=float("inf")`` frames go out as fast as the socket takes
them and call time is simply 20 ms per frame slot.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import warnings
import wave
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal, NamedTuple

import anyio
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

with warnings.catch_warnings():
    # Deprecated on 3.11/3.12, provided by audioop-lts on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "BYTES_PER_MS",
    "FRAME_BYTES",
    "FRAME_MS",
    "MULAW_SILENCE",
    "CallRecord",
    "CallerStep",
    "ClearRecord",
    "Cleared",
    "CloseInfo",
    "Dtmf",
    "EventKind",
    "Gap",
    "HangUp",
    "MarkEcho",
    "PlaybackBuffer",
    "Played",
    "Say",
    "Silence",
    "TimelineEvent",
    "TwilioCallerSimulator",
    "Violation",
    "WaitForAgentAudio",
    "WaitForAgentSilence",
    "WaitTimeout",
]

BYTES_PER_MS = 8  # 8 kHz mu-law: one byte per sample
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
MULAW_SILENCE = 0xFF
_SILENT_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
_DTMF_DIGITS = frozenset("0123456789*#")

# Twilio's debugger codes for bad messages from the app.
ERR_BINARY_FRAME = 31950
ERR_INVALID_MESSAGE = 31951


# --- caller script ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """Speak mu-law 8 kHz audio, one 20 ms frame per slot (the last frame padded with silence)."""

    audio: bytes

    def __repr__(self) -> str:
        return f"Say({len(self.audio)} bytes, {len(self.audio) / BYTES_PER_MS:g} ms)"


@dataclass(frozen=True)
class Silence:
    """Send silence frames for ``ms`` (rounded up to whole 20 ms frames)."""

    ms: int

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError(f"Silence.ms must be >= 0, got {self.ms}")


@dataclass(frozen=True)
class Dtmf:
    """Press a key: Twilio sends a ``dtmf`` message. Takes no call time."""

    digit: str

    def __post_init__(self) -> None:
        if len(self.digit) != 1 or self.digit not in _DTMF_DIGITS:
            raise ValueError(f"Dtmf.digit must be one of 0-9, * or #, got {self.digit!r}")


@dataclass(frozen=True)
class Gap:
    """Send no frames for ``ms`` (rounded up to 20 ms) while the timestamp keeps advancing.

    Twilio skips silent chunks on some calls; the next frame's ``timestamp`` jumps while
    ``chunk`` keeps counting sent frames only.
    """

    ms: int

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError(f"Gap.ms must be >= 0, got {self.ms}")


@dataclass(frozen=True)
class HangUp:
    """Send ``stop`` and close the socket. Without it the caller stays on a silent line."""


@dataclass(frozen=True)
class WaitForAgentAudio:
    """Send silence until the caller has *heard* ``min_ms`` of agent audio since this step began.

    On timeout (call time) the wait is recorded in `CallRecord.wait_timeouts` and the script
    goes on.
    """

    min_ms: int = 200
    timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.min_ms < 0 or self.timeout_ms <= 0:
            raise ValueError(f"invalid {self!r}")


@dataclass(frozen=True)
class WaitForAgentSilence:
    """Send silence until nothing is buffered and no agent audio arrived or played for ``ms``.

    Quiet time before the step counts, so put a `WaitForAgentAudio` first to wait for the
    *end* of an answer. Timeouts behave as in `WaitForAgentAudio`.
    """

    ms: int = 500
    timeout_ms: int = 20_000

    def __post_init__(self) -> None:
        if self.ms < 0 or self.timeout_ms <= 0:
            raise ValueError(f"invalid {self!r}")


@dataclass(frozen=True)
class WaitUntil:
    """Send silence until ``ready()`` is true: the test outside the call says when (e.g. after it
    signalled the server). Checked every 20 ms frame. Timeouts behave as in `WaitForAgentAudio`."""

    ready: Callable[[], bool]
    timeout_ms: int = 20_000


CallerStep = (
    Say | Silence | Dtmf | Gap | HangUp | WaitForAgentAudio | WaitForAgentSilence | WaitUntil
)


# --- playback buffer (no I/O, no clock) ------------------------------------------------------


@dataclass(frozen=True)
class Played:
    """What one `PlaybackBuffer.advance` played, and the marks whose audio has now played."""

    audio: bytes
    marks: tuple[str, ...]


@dataclass(frozen=True)
class Cleared:
    """What one `PlaybackBuffer.clear` dropped, and the pending marks to echo anyway."""

    discarded_bytes: int
    marks: tuple[str, ...]


class PlaybackBuffer:
    """Twilio's outbound playback queue: audio and marks in order, played by the caller's clock.

    Every method returns the mark names to echo now. A mark sits at the current end of the
    audio; it is echoed once that audio has played, at once if nothing is buffered, and on
    `clear` every pending mark is echoed although its audio never played.
    """

    def __init__(self) -> None:
        self._audio = bytearray()
        self._marks: deque[tuple[int, str]] = deque()  # (absolute end position, name)
        self._removed = 0  # bytes that have left the buffer, played or discarded
        self._played = 0
        self._discarded = 0

    def append(self, audio: bytes) -> None:
        """Queue mu-law audio of any size after what is already buffered."""
        self._audio += audio

    def mark(self, name: str) -> tuple[str, ...]:
        """Queue a mark after the buffered audio; returns ``(name,)`` if it is due at once."""
        if not self._audio:
            return (name,)
        self._marks.append((self._removed + len(self._audio), name))
        return ()

    def advance(self, ms: int) -> Played:
        """Play up to ``ms`` of audio (8 bytes per ms); less if the buffer runs dry."""
        if ms < 0:
            raise ValueError(f"cannot advance by {ms} ms")
        n = min(ms * BYTES_PER_MS, len(self._audio))
        audio = bytes(self._audio[:n])
        del self._audio[:n]
        self._removed += n
        self._played += n
        due: list[str] = []
        while self._marks and self._marks[0][0] <= self._removed:
            due.append(self._marks.popleft()[1])
        return Played(audio, tuple(due))

    def clear(self) -> Cleared:
        """Drop everything not yet played; every pending mark is due."""
        n = len(self._audio)
        self._audio.clear()
        self._removed += n
        self._discarded += n
        due = tuple(name for _, name in self._marks)
        self._marks.clear()
        return Cleared(n, due)

    @property
    def buffered_bytes(self) -> int:
        return len(self._audio)

    @property
    def buffered_ms(self) -> float:
        return len(self._audio) / BYTES_PER_MS

    @property
    def pending_marks(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._marks)

    @property
    def played_bytes(self) -> int:
        """Total bytes played since creation."""
        return self._played

    @property
    def discarded_bytes(self) -> int:
        """Total bytes dropped by `clear` since creation."""
        return self._discarded


# --- call record -----------------------------------------------------------------------------

EventKind = Literal[
    "start_sent",
    "frame_sent",
    "dtmf_sent",
    "stop_sent",
    "media_received",
    "mark_received",
    "mark_echoed",
    "clear_received",
    "violation",
    "step",
    "wait_timeout",
    "closed",
]


class TimelineEvent(NamedTuple):
    """One thing that happened, at call time ``t_ms``.

    ``detail``: chunk number (frame_sent), payload bytes (media_received), discarded bytes
    (clear_received), close code (closed), the digit, mark name, step or violation text.
    """

    t_ms: float
    kind: EventKind
    detail: str | int


class MarkEcho(NamedTuple):
    """A mark echoed back to the server. ``cleared``: echoed by a ``clear``, never played."""

    t_ms: float
    name: str
    cleared: bool


class ClearRecord(NamedTuple):
    t_ms: float
    discarded_ms: float


class Violation(NamedTuple):
    """A message Twilio would reject: code 31950 (binary frame) or 31951 (invalid message)."""

    t_ms: float
    code: int
    reason: str
    raw: str


class WaitTimeout(NamedTuple):
    t_ms: float
    step: str


class CloseInfo(NamedTuple):
    """How the WebSocket ended. ``by_caller``: the script hung up (else the server closed)."""

    t_ms: float
    code: int | None
    reason: str
    by_caller: bool


@dataclass(frozen=True)
class CallRecord:
    """Everything observed on one simulated call.

    ``caller_audio`` and ``heard_audio`` are mu-law tracks aligned to the call clock (byte
    ``i`` is at ``i / 8`` ms), silence-filled, equal in length: what the caller said (gaps as
    silence) and what played to the caller. ``received_audio`` is every media payload the
    server sent, played or not. ``play_events`` are ``(t_ms, n_bytes)`` per 20 ms slot that
    played something, ``t_ms`` being where that audio starts in ``heard_audio``.
    """

    call_sid: str
    stream_sid: str
    account_sid: str
    duration_ms: int
    caller_audio: bytes
    heard_audio: bytes
    received_audio: bytes
    play_events: tuple[tuple[float, int], ...]
    timeline: tuple[TimelineEvent, ...]
    marks_received: tuple[str, ...]
    mark_echoes: tuple[MarkEcho, ...]
    clears: tuple[ClearRecord, ...]
    violations: tuple[Violation, ...]
    wait_timeouts: tuple[WaitTimeout, ...]
    close: CloseInfo

    @property
    def heard_ms(self) -> float:
        """Agent audio actually played to the caller (not counting silence fill)."""
        return sum(n for _, n in self.play_events) / BYTES_PER_MS

    def events(self, kind: EventKind) -> list[TimelineEvent]:
        return [e for e in self.timeline if e.kind == kind]

    def heard_pcm16(self) -> npt.NDArray[np.int16]:
        return _ulaw_to_pcm16(self.heard_audio)

    def caller_pcm16(self) -> npt.NDArray[np.int16]:
        return _ulaw_to_pcm16(self.caller_audio)

    def write_wav(self, path: str | PathLike[str]) -> None:
        """Stereo 8 kHz 16-bit WAV: caller on the left, what the caller heard on the right."""
        left, right = self.caller_pcm16(), self.heard_pcm16()
        n = max(len(left), len(right))
        stereo = np.zeros((n, 2), dtype="<i2")
        stereo[: len(left), 0] = left
        stereo[: len(right), 1] = right
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(stereo.tobytes())

    def assert_clean(self) -> None:
        """Raise AssertionError if the server broke the protocol or a wait step timed out."""
        problems = [f"{v.code} at {v.t_ms:.0f} ms: {v.reason}" for v in self.violations]
        problems += [f"timed out at {w.t_ms:.0f} ms: {w.step}" for w in self.wait_timeouts]
        if problems:
            raise AssertionError("call was not clean:\n  " + "\n  ".join(problems))


def _ulaw_to_pcm16(data: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(audioop.ulaw2lin(data, 2), dtype=np.int16)


# --- server message validation ---------------------------------------------------------------


class _Media(NamedTuple):
    audio: bytes


class _Mark(NamedTuple):
    name: str


class _Clear(NamedTuple):
    pass


class _Invalid(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_ALLOWED_KEYS = {
    "media": frozenset({"event", "streamSid", "media"}),
    "mark": frozenset({"event", "streamSid", "mark"}),
    "clear": frozenset({"event", "streamSid"}),
}


def _parse_server_message(data: str | bytes, stream_sid: str) -> _Media | _Mark | _Clear:
    """Check one message from the app as Twilio does; raise `_Invalid` with Twilio's code."""
    if isinstance(data, bytes):
        raise _Invalid(ERR_BINARY_FRAME, "binary frame (Twilio accepts JSON text frames only)")
    try:
        msg: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _Invalid(ERR_INVALID_MESSAGE, "not valid JSON") from None
    if not isinstance(msg, dict):
        raise _Invalid(ERR_INVALID_MESSAGE, "not a JSON object")
    event = msg.get("event")
    if not isinstance(event, str) or event not in _ALLOWED_KEYS:
        raise _Invalid(ERR_INVALID_MESSAGE, f"unknown event {event!r}")
    if msg.get("streamSid") != stream_sid:
        raise _Invalid(ERR_INVALID_MESSAGE, f"{event}: wrong streamSid {msg.get('streamSid')!r}")
    extra = set(msg) - _ALLOWED_KEYS[event]
    if extra:
        raise _Invalid(ERR_INVALID_MESSAGE, f"{event}: unexpected fields {sorted(extra)}")
    if event == "clear":
        return _Clear()
    body = msg.get(event)
    if event == "media":
        if not isinstance(body, dict) or set(body) != {"payload"}:
            raise _Invalid(ERR_INVALID_MESSAGE, "media: body must be exactly {payload}")
        payload = body["payload"]
        if not isinstance(payload, str):
            raise _Invalid(ERR_INVALID_MESSAGE, "media: payload is not a string")
        try:
            return _Media(base64.b64decode(payload, validate=True))
        except binascii.Error:
            raise _Invalid(ERR_INVALID_MESSAGE, "media: payload is not valid base64") from None
    if not isinstance(body, dict) or set(body) != {"name"} or not isinstance(body["name"], str):
        raise _Invalid(ERR_INVALID_MESSAGE, "mark: body must be exactly {name: string}")
    return _Mark(body["name"])


# --- script cursor (no I/O) ------------------------------------------------------------------


class _Observation(NamedTuple):
    played_bytes: int
    buffered_bytes: int
    last_agent_activity_ms: float


class _Plan(NamedTuple):
    """What the caller does at one slot boundary ``t``: zero-time steps now, then the frame
    for the slot ``[t, t + 20)`` (None: a gap, nothing sent)."""

    digits: tuple[str, ...]
    hang_up: bool
    frame: bytes | None
    started: tuple[str, ...]
    timeouts: tuple[str, ...]


class _ScriptCursor:
    def __init__(self, script: Sequence[CallerStep]) -> None:
        self._steps = list(script)
        self._i = -1
        self._offset = 0  # Say: bytes sent; Silence/Gap: slots used
        self._wait_start_ms = 0.0
        self._wait_base = 0

    def plan(self, t_ms: float, obs: _Observation) -> _Plan:
        digits: list[str] = []
        started: list[str] = []
        timeouts: list[str] = []

        def done(frame: bytes | None, hang_up: bool = False) -> _Plan:
            return _Plan(tuple(digits), hang_up, frame, tuple(started), tuple(timeouts))

        if self._i < 0:
            self._enter(0, t_ms, obs, started)
        while self._i < len(self._steps):
            step = self._steps[self._i]
            if isinstance(step, Dtmf):
                digits.append(step.digit)
            elif isinstance(step, HangUp):
                return done(None, hang_up=True)
            elif isinstance(step, Say):
                if self._offset < len(step.audio):
                    chunk = step.audio[self._offset : self._offset + FRAME_BYTES]
                    self._offset += FRAME_BYTES
                    return done(chunk.ljust(FRAME_BYTES, bytes([MULAW_SILENCE])))
            elif isinstance(step, Silence | Gap):
                if self._offset < math.ceil(step.ms / FRAME_MS):
                    self._offset += 1
                    return done(_SILENT_FRAME if isinstance(step, Silence) else None)
            else:
                if isinstance(step, WaitForAgentAudio):
                    ready = obs.played_bytes - self._wait_base >= step.min_ms * BYTES_PER_MS
                elif isinstance(step, WaitUntil):
                    ready = step.ready()
                else:
                    ready = obs.buffered_bytes == 0 and t_ms - obs.last_agent_activity_ms >= step.ms
                if not ready:
                    if t_ms - self._wait_start_ms < step.timeout_ms:
                        return done(_SILENT_FRAME)
                    timeouts.append(repr(step))
            self._enter(self._i + 1, t_ms, obs, started)
        return done(_SILENT_FRAME)  # script over without HangUp: an open, silent line

    def _enter(self, i: int, t_ms: float, obs: _Observation, started: list[str]) -> None:
        self._i, self._offset = i, 0
        self._wait_start_ms, self._wait_base = t_ms, obs.played_bytes
        if i < len(self._steps):
            started.append(repr(self._steps[i]))


# --- the simulator ---------------------------------------------------------------------------


class _Out(NamedTuple):
    """One outbound message before numbering, with its timeline entry."""

    event: str
    body: dict[str, Any]
    t_ms: float
    kind: EventKind
    detail: str | int
    cleared: bool = False  # mark echoes only


class TwilioCallerSimulator:
    """Plays Twilio's side of one ``<Connect><Stream>`` call against ``url``; single use.

    ``speed`` scales call time against real time (2.0: twice as fast; ``inf``: no waiting,
    not allowed with wait steps). ``headers`` are extra handshake headers (e.g.
    ``X-Twilio-Signature``). ``send_connected=False`` skips the ``connected`` message.
    `run` raises websockets' ``InvalidStatus``/``InvalidHandshake`` if the server refuses
    the handshake.
    """

    def __init__(
        self,
        url: str,
        script: Sequence[CallerStep],
        *,
        custom_parameters: Mapping[str, str] | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str = "AC" + "0" * 32,
        headers: Mapping[str, str] | None = None,
        speed: float = 1.0,
        send_connected: bool = True,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if math.isinf(speed) and any(
            isinstance(s, WaitForAgentAudio | WaitForAgentSilence | WaitUntil) for s in script
        ):
            raise ValueError("wait steps need a finite speed: the agent needs time to answer")
        self.url = url
        self.script = tuple(script)
        self.custom_parameters = dict(custom_parameters or {})
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = stream_sid or "MZ" + secrets.token_hex(16)
        self.account_sid = account_sid
        self.headers = dict(headers or {})
        self.speed = speed
        self.send_connected = send_connected
        self._used = False

        self._buffer = PlaybackBuffer()
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._seq = 0
        self._t0 = 0.0
        self._slot_ms = 0  # call time of the latest slot boundary
        self._hung_up = False
        self._link_down = False
        self._last_agent_activity_ms = 0.0
        self._caller = bytearray()
        self._heard = bytearray()
        self._received = bytearray()
        self._play_events: list[tuple[float, int]] = []
        self._timeline: list[TimelineEvent] = []
        self._marks_received: list[str] = []
        self._mark_echoes: list[MarkEcho] = []
        self._clears: list[ClearRecord] = []
        self._violations: list[Violation] = []
        self._wait_timeouts: list[WaitTimeout] = []
        self._close: CloseInfo | None = None

    async def run(self) -> CallRecord:
        """Place the call and return its record once the caller hung up or the server closed."""
        if self._used:
            raise RuntimeError("a TwilioCallerSimulator places one call; make a new one")
        self._used = True
        async with connect(
            self.url,
            additional_headers=self.headers or None,
            compression=None,  # Twilio does not negotiate permessage-deflate
        ) as ws:
            if self.send_connected:
                connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
                await self._write(ws, _dumps(connected))
            start = {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": self.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            await self._send(ws, [_Out("start", start, 0.0, "start_sent", self.call_sid)])
            self._t0 = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive, ws, tg.cancel_scope)
                tg.start_soon(self._line, ws)
        return self._record()

    # -- tasks --

    async def _line(self, ws: ClientConnection) -> None:
        """The phone line: at every 20 ms boundary play a slot, send a frame, run the script."""
        cursor = _ScriptCursor(self.script)
        plan = self._plan(cursor)
        chunk = 0
        while True:
            outs = [
                _Out("dtmf", {"track": "inbound_track", "digit": d}, self._slot_ms, "dtmf_sent", d)
                for d in plan.digits
            ]
            if plan.hang_up:
                stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
                outs.append(_Out("stop", stop, self._slot_ms, "stop_sent", ""))
                await self._send(ws, outs)
                await ws.close()  # the receiver records the close and ends the call
                return
            await self._send(ws, outs)

            t = self._slot_ms + FRAME_MS
            if math.isinf(self.speed):
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep_until(self._t0 + t / 1000 / self.speed)
            self._slot_ms = t

            # The slot [t - 20, t) has now elapsed on both sides of the line.
            played = self._buffer.advance(FRAME_MS)
            self._heard += played.audio.ljust(FRAME_BYTES, bytes([MULAW_SILENCE]))
            if played.audio:
                self._play_events.append((t - FRAME_MS, len(played.audio)))
                self._last_agent_activity_ms = max(self._last_agent_activity_ms, t)
            outs = self._echoes(played.marks, t, cleared=False)
            self._caller += plan.frame if plan.frame is not None else _SILENT_FRAME
            if plan.frame is not None:
                chunk += 1
                media = {
                    "track": "inbound",
                    "chunk": str(chunk),
                    "timestamp": str(t),
                    "payload": base64.b64encode(plan.frame).decode("ascii"),
                }
                outs.append(_Out("media", media, t, "frame_sent", chunk))
            await self._send(ws, outs)
            plan = self._plan(cursor)

    async def _receive(self, ws: ClientConnection, scope: anyio.CancelScope) -> None:
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed:
                code, reason = ws.close_code, ws.close_reason or ""
                self._close = CloseInfo(self._now_ms(), code, reason, self._hung_up)
                self._event(self._close.t_ms, "closed", code if code is not None else -1)
                scope.cancel()
                return
            await self._handle(ws, data)

    async def _handle(self, ws: ClientConnection, data: str | bytes) -> None:
        now = self._now_ms()
        try:
            msg = _parse_server_message(data, self.stream_sid)
        except _Invalid as exc:
            raw = data if isinstance(data, str) else repr(data)
            self._violations.append(Violation(now, exc.code, exc.reason, raw[:200]))
            self._event(now, "violation", f"{exc.code}: {exc.reason}")
            return
        if isinstance(msg, _Media):
            self._received += msg.audio
            self._buffer.append(msg.audio)
            if msg.audio:
                self._last_agent_activity_ms = max(self._last_agent_activity_ms, now)
            self._event(now, "media_received", len(msg.audio))
        elif isinstance(msg, _Mark):
            self._marks_received.append(msg.name)
            self._event(now, "mark_received", msg.name)
            await self._send(ws, self._echoes(self._buffer.mark(msg.name), now, cleared=False))
        else:
            cleared = self._buffer.clear()
            self._clears.append(ClearRecord(now, cleared.discarded_bytes / BYTES_PER_MS))
            self._event(now, "clear_received", cleared.discarded_bytes)
            # Twilio echoes every pending mark on clear, with no hint that it never played.
            await self._send(ws, self._echoes(cleared.marks, now, cleared=True))

    # -- helpers --

    def _plan(self, cursor: _ScriptCursor) -> _Plan:
        obs = _Observation(
            self._buffer.played_bytes, self._buffer.buffered_bytes, self._last_agent_activity_ms
        )
        plan = cursor.plan(self._slot_ms, obs)
        for step in plan.started:
            self._event(self._slot_ms, "step", step)
        for step in plan.timeouts:
            self._wait_timeouts.append(WaitTimeout(self._slot_ms, step))
            self._event(self._slot_ms, "wait_timeout", step)
        return plan

    def _echoes(self, names: tuple[str, ...], t_ms: float, *, cleared: bool) -> list[_Out]:
        return [_Out("mark", {"name": n}, t_ms, "mark_echoed", n, cleared) for n in names]

    async def _send(self, ws: ClientConnection, outs: list[_Out]) -> None:
        """Number and send messages in the order they were decided.

        Callers decide (e.g. pop marks from the buffer) and call this without awaiting in
        between; the lock is FIFO and, uncontended, taken without yielding, so sequence
        numbers follow decisions even when the line and the receiver send at once.
        """
        if not outs or self._hung_up or self._link_down:
            return
        async with self._send_lock:
            for out in outs:
                if self._hung_up or self._link_down:
                    return  # Twilio sends nothing after stop
                self._seq += 1
                msg = {
                    "event": out.event,
                    "sequenceNumber": str(self._seq),
                    "streamSid": self.stream_sid,
                    out.event: out.body,
                }
                if not await self._write(ws, _dumps(msg)):
                    return
                self._event(out.t_ms, out.kind, out.detail)
                if out.event == "stop":
                    self._hung_up = True
                elif out.event == "mark":
                    self._mark_echoes.append(MarkEcho(out.t_ms, out.body["name"], out.cleared))

    async def _write(self, ws: ClientConnection, text: str) -> bool:
        try:
            await ws.send(text)
        except ConnectionClosed:
            self._link_down = True  # the receiver records the close
            return False
        return True

    def _now_ms(self) -> float:
        if math.isinf(self.speed):
            return float(self._slot_ms)
        return (anyio.current_time() - self._t0) * 1000 * self.speed

    def _event(self, t_ms: float, kind: EventKind, detail: str | int) -> None:
        self._timeline.append(TimelineEvent(t_ms, kind, detail))

    def _record(self) -> CallRecord:
        assert self._close is not None, "the call ends only when the socket has closed"
        return CallRecord(
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            account_sid=self.account_sid,
            duration_ms=self._slot_ms,
            caller_audio=bytes(self._caller),
            heard_audio=bytes(self._heard),
            received_audio=bytes(self._received),
            play_events=tuple(self._play_events),
            timeline=tuple(sorted(self._timeline, key=lambda e: e.t_ms)),
            marks_received=tuple(self._marks_received),
            mark_echoes=tuple(self._mark_echoes),
            clears=tuple(self._clears),
            violations=tuple(self._violations),
            wait_timeouts=tuple(self._wait_timeouts),
            close=self._close,
        )


def _dumps(msg: dict[str, Any]) -> str:
    return orjson.dumps(msg).decode()
