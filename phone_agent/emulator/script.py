"""What the emulated model says and does: plain dataclasses, also loadable from a dict or JSON file.

A script is a list of replies consumed in order, one per *trigger* (the end of the caller's speech,
a text turn, or a tool response). A reply is a sequence of steps: say something, call tools (and
wait for their responses), pause, replay recorded server messages, or close the connection the way
a failing server would. When the script runs out, `default_reply` answers every trigger, so the
emulator always says something.

Dict form (every key optional unless noted)::

    {"replies": [
        {"trigger": "speech_end",                # or "text", "tool_response", "any"
         "input_transcript": "where is my order",
         "tool_calls": [{"name": "lookup_order", "args": {"order_number": "1042"}}],
         "wait_for_tools": true,                 # flat form: tools first, then the speech
         "text": "It shipped yesterday.",
         "audio": {"tone": {"frequency_hz": 440, "duration_ms": 800, "amplitude": 0.3}},
         "usage": {"prompt_tokens": 40, "response_tokens": 20}},
        {"steps": [                              # steps form: any order
            {"say": {"text": "Let me check.", "audio": {"silence_ms": 300}}},
            {"call_tools": {"calls": [{"name": "lookup_order", "id": "call-7"}], "wait": true}},
            {"pause_ms": 200},
            {"say": "It shipped."},
            {"recorded": [{"t_ms": 0, "message": {"serverContent": {...}}}, ...]},
            {"raw": {"serverContent": {"futureField": 1}}},  # sent as is, unchecked
            {"close": {"code": 1011, "reason": "Internal error encountered."}}]},
        {"trigger": "speech_end",                # recorded form: one `Recorded` step
         "recorded": [{"t_ms": 0, "message": {"serverContent": {"outputTranscription": ...}}},
                      {"t_ms": 180, "message": {"toolCall": {"functionCalls": [...]}}}],
         "wait_for_tools": true}],
     "default_reply": {"trigger": "any", "text": "I'm the emulator."},
     "go_away": {"after_s": 540, "time_left_s": 60, "close_code": 1000},
     "resumption_updates": true,
     "setup_complete": true}                     # false: a server that never finishes set-up

Audio is one of ``{"tone": {...}}``, ``{"silence_ms": N}``, ``{"pcm_base64": "..."}``,
``{"pcm_file": "path.raw"}`` (int16 LE mono 24 kHz) or ``{"wav_file": "path.wav"}`` (16-bit mono
24 kHz).

A recorded step is ``{"recorded": [{"t_ms": N, "message": {...}}, ...]}`` or
``{"recorded": {"messages": [...], "wait_for_tools": false}}``: Gemini server messages as recorded,
each with its offset in ms from the start of the step (see `Recorded`).

A raw step is ``{"raw": {...}}`` (an object, sent as JSON) or ``{"raw": "text"}`` (sent as a text
frame, JSON or not): a message exactly as a misbehaving server would send it (see `Raw`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from phone_agent.emulator import audio as pcm
from phone_agent.emulator.audio import OUTPUT_RATE
from phone_agent.emulator.protocol import RecordedMessage, encode, recorded_message


class ScriptError(ValueError):
    """A script dict or file that does not describe a valid script; the message names the field."""


class Trigger(enum.StrEnum):
    """What makes the emulated model start a reply."""

    SPEECH_END = "speech_end"
    """The caller stopped speaking (energy VAD or `activityEnd`)."""
    TEXT = "text"
    """A `client_content` with `turnComplete`, or a `realtime_input.text`."""
    TOOL_RESPONSE = "tool_response"
    """A `tool_response` that no reply was waiting for (e.g. after a non-waiting tool call)."""
    ANY = "any"
    """Any of the above."""


@dataclass(frozen=True)
class Tone:
    """A sine tone; `amplitude` is its peak as a fraction of full scale."""

    frequency_hz: float = 440.0
    duration_ms: int = 500
    amplitude: float = 0.3


@dataclass(frozen=True)
class Silence:
    """Digital silence."""

    duration_ms: int


@dataclass(frozen=True)
class Pcm:
    """Raw int16 little-endian mono PCM at 24 kHz."""

    data: bytes


AudioSpec = Tone | Silence | Pcm

_MS_PER_CHAR = 60
_MIN_SPOKEN_MS = 300


@dataclass(frozen=True)
class Say:
    """Speak `audio`, with `text` as its output transcription.

    Without `audio`, a 440 Hz tone as long as the text would take to say (60 ms a character, at
    least 300 ms) stands in for speech; with neither, nothing is sent.

    With `from_tool_output`, `text` is a `str.format` template filled from the `output` of the
    reply's last tool response (e.g. "Order {order_number} is {status}."), as a model reading a
    tool result aloud would; a missing field renders as "unknown".
    """

    text: str = ""
    audio: AudioSpec | None = None
    from_tool_output: bool = False

    def render(self) -> bytes:
        """The PCM this step sends."""
        if self.audio is None:
            if not self.text:
                return b""
            return pcm.tone(440.0, max(_MIN_SPOKEN_MS, _MS_PER_CHAR * len(self.text)), 0.3)
        return render_audio(self.audio)


@dataclass(frozen=True)
class FunctionCall:
    """One function call; without an `id` the emulator numbers it `fc-1`, `fc-2`, … per session."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class CallTools:
    """Emit one `toolCall` message; with `wait`, pause the reply until every call has a response."""

    calls: Sequence[FunctionCall]
    wait: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", tuple(self.calls))


@dataclass(frozen=True)
class Pause:
    """Send nothing for a while (scaled by the emulator's `speed`, like the audio).

    Steps follow one another in reply time: a pause after `Say` starts when its audio ends.
    """

    duration_ms: int


@dataclass(frozen=True)
class Close:
    """Close the connection mid-reply, as a failing server would. 1006 aborts the TCP connection."""

    code: int = 1011
    reason: str = "Internal error encountered."


@dataclass(frozen=True)
class RecordedItem:
    """One message of a `Recorded` step, as the emulator replays it."""

    t_ms: float
    message: RecordedMessage
    waits: tuple[bool, ...] = ()
    """For each of its function calls: whether the reply waits for the response before going on."""


@dataclass(frozen=True)
class Recorded:
    """Replay recorded Gemini server messages, each `t_ms` after the step starts (over `speed`).

    `messages` are ``(t_ms, message)`` pairs in time order, as the service or the SDK produced them
    (either casing; base64 standard or URL-safe; SDK dumps with nulls and bytes). They go out in
    order, in the emulator's normal form, each once its offset is due on the emulator's clock.

    - Turn state is stripped (`interrupted`, `turnComplete`, `generationComplete`,
      `turnCompleteReason`, `waitingForInput`, `interactionStatus`), and a message left empty is
      skipped: the emulator still ends the reply itself, and sends `interrupted` when the caller
      cuts in. `setupComplete`, `goAway`, `sessionResumptionUpdate` and voice-activity messages
      are ignored. Any other unknown top-level key is an error.
    - Recorded audio is reply audio: it counts in `audio_ms_sent` and usage, and caller speech
      interrupts it as it does `Say`, checked before every message. A message with more than
      `chunk_ms` of audio goes out as `chunk_ms` chunks (its other content with the first), paced
      like `Say` (real time over `speed`) but squeezed into the time before the next message.
    - A `toolCall` keeps its ids (missing ones are numbered ``fc-N``, as for `FunctionCall`) and
      they are recorded on the `ReplyRecord`. With `wait_for_tools`, the reply then waits for the
      responses before going on; the next message goes out no earlier than the last response, and
      the rest keep their spacing. A call with no model output after it in the step (parts, an
      output transcription or a tool call), or whose id a later recorded `toolCallCancellation`
      names, is not waited for: its response then triggers a `tool_response` reply, as in a
      recording whose next turn it starts.
    - A `toolCallCancellation` is sent as recorded; later responses to the calls it names are
      ignored, as for calls the emulator cancels itself.
    - `usageMetadata` is sent as recorded; the reply's `turnComplete` then carries no computed
      usage, unless the reply sets `usage`.
    - What was recorded is sent whatever the setup asked for (transcriptions, response modality).
    - The step lasts until its last message's offset (usually the recorded `turnComplete`), or
      its last audio chunk if that is later; the caller's speech interrupts it until then. If the
      recording has `interrupted` (the caller cut the turn short, so it has no end to replay), the
      model is taken to be still generating after the last message: the reply stays open, and
      interruptible, until the caller speaks or the connection closes.

    Raises `ScriptError` for a malformed message.
    """

    messages: Sequence[tuple[float, Mapping[str, Any]]]
    wait_for_tools: bool = True
    items: tuple[RecordedItem, ...] = field(init=False, repr=False, compare=False)
    """The messages prepared for replay; recorded turn state and session messages left out."""
    end_ms: float = field(init=False, repr=False, compare=False)
    """The last message's offset, those left out included."""
    cut_short: bool = field(init=False, repr=False, compare=False)
    """Whether the recording has `interrupted`."""

    def __post_init__(self) -> None:
        pairs = _pairs(self.messages)
        prepared = _prepare(pairs)
        object.__setattr__(self, "messages", pairs)
        object.__setattr__(self, "items", _recorded_items(prepared, self.wait_for_tools))
        object.__setattr__(self, "end_ms", pairs[-1][0] if pairs else 0.0)
        object.__setattr__(self, "cut_short", any(m.interrupted for _, m in prepared))


@dataclass(frozen=True)
class Raw:
    """Send one message exactly as given, unchecked: what a misbehaving (or newer) server sends.

    A mapping goes out as JSON in a binary frame, as every emulator message does; `str` goes out
    as a text frame and `bytes` as a binary frame, whatever they hold (JSON or not). Nothing is
    validated, normalised or counted as reply output (audio time, usage, tool calls): use it for
    unknown keys, garbage audio or frames that are not JSON at all.
    """

    message: Mapping[str, Any] | str | bytes

    def __post_init__(self) -> None:
        if isinstance(self.message, Mapping):
            try:
                encode(self.message)
            except orjson.JSONEncodeError as exc:
                raise ScriptError(f"Raw.message: cannot be sent as JSON: {exc}") from None
        elif not isinstance(self.message, str | bytes):
            raise ScriptError("Raw.message: expected an object, a string or bytes")

    @property
    def frame(self) -> str | bytes:
        """The WebSocket frame to send: text for `str`, binary otherwise."""
        if isinstance(self.message, Mapping):
            return encode(self.message)
        return self.message


Step = Say | CallTools | Pause | Close | Recorded | Raw


@dataclass(frozen=True)
class Usage:
    """Token counts to report for a reply instead of the computed ones."""

    prompt_tokens: int | None = None
    response_tokens: int | None = None


@dataclass(frozen=True)
class Reply:
    """One model turn: its trigger, the caller's transcript, and the steps the model takes."""

    steps: Sequence[Step] = ()
    trigger: Trigger = Trigger.SPEECH_END
    input_transcript: str | None = None
    usage: Usage | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "trigger", Trigger(self.trigger))

    @classmethod
    def of(
        cls,
        text: str = "",
        audio: AudioSpec | None = None,
        *,
        tool_calls: Sequence[FunctionCall] = (),
        wait_for_tools: bool = True,
        trigger: Trigger = Trigger.SPEECH_END,
        input_transcript: str | None = None,
        usage: Usage | None = None,
    ) -> Reply:
        """The common shape: optional tool calls (answered before going on), then speech."""
        steps: list[Step] = []
        if tool_calls:
            steps.append(CallTools(tool_calls, wait=wait_for_tools))
        if text or audio is not None:
            steps.append(Say(text, audio))
        return cls(steps, trigger, input_transcript, usage)


@dataclass(frozen=True)
class GoAway:
    """Send `goAway{timeLeft}` `after_s` seconds into each connection, then close it `time_left_s`
    later with `close_code` (None: leave it open). Seconds of wall time, or of caller audio when
    the emulator runs on the audio clock (`clock="audio"`); not scaled by `speed`."""

    after_s: float
    time_left_s: float = 10.0
    close_code: int | None = 1000


DEFAULT_REPLY = Reply.of("I'm the emulator.", Tone(440.0, 600, 0.3), trigger=Trigger.ANY)


@dataclass(frozen=True)
class EmulatorScript:
    """The emulated model's behaviour for every connection.

    Each connection starts at the first reply; a connection resuming with a handle the emulator
    issued continues where that handle was issued. `resumption_updates`: send
    `sessionResumptionUpdate` after every turn when the setup asked for session resumption.
    `setup_complete=False`: answer no setup, as a server hanging at set-up would; the connection
    stays open (client messages read and ignored) until the client gives up.
    """

    replies: Sequence[Reply] = ()
    default_reply: Reply = DEFAULT_REPLY
    go_away: GoAway | None = None
    resumption_updates: bool = True
    setup_complete: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "replies", tuple(self.replies))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorScript:
        """Build a script from its dict form (see the module docstring); raises `ScriptError`."""
        return _parse_script(_Obj(data, "script"))

    @classmethod
    def load(cls, path: str | Path) -> EmulatorScript:
        """Load a script from a JSON file; relative audio file paths are relative to the file."""
        path = Path(path)
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ScriptError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ScriptError(f"{path}: expected a JSON object")
        return _parse_script(_Obj(data, "script", base_dir=path.parent))


def render_audio(spec: AudioSpec) -> bytes:
    """The 24 kHz PCM an audio spec stands for."""
    match spec:
        case Tone(frequency_hz, duration_ms, amplitude):
            return pcm.tone(frequency_hz, duration_ms, amplitude)
        case Silence(duration_ms):
            return pcm.silence(duration_ms)
        case Pcm(data):
            return data


# -- recorded messages -----------------------------------------------------------------------------


class _EntryError(ScriptError):
    """A bad entry of a `Recorded` step; the dict parser relabels it with the entry's path."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"Recorded.messages[{index}]{detail}")
        self.index = index
        self.detail = detail


def _pairs(messages: object) -> tuple[tuple[float, Mapping[str, Any]], ...]:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ScriptError("Recorded.messages: expected a sequence of (t_ms, message) pairs")
    pairs: list[tuple[float, Mapping[str, Any]]] = []
    previous = 0.0
    for i, entry in enumerate(messages):
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise _EntryError(i, ": expected a (t_ms, message) pair")
        t_ms, message = entry
        if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
            raise _EntryError(i, ".t_ms: expected a number of milliseconds")
        if t_ms < 0:
            raise _EntryError(i, ".t_ms: a number of ms >= 0 is needed")
        if t_ms < previous:
            raise _EntryError(i, f".t_ms: {t_ms} is before the previous message's {previous}")
        if not isinstance(message, Mapping):
            raise _EntryError(i, ".message: expected an object")
        previous = t_ms
        pairs.append((t_ms, message))
    return tuple(pairs)


def _prepare(
    messages: Sequence[tuple[float, Mapping[str, Any]]],
) -> list[tuple[float, RecordedMessage]]:
    prepared = []
    for i, (t_ms, message) in enumerate(messages):
        try:
            prepared.append((float(t_ms), recorded_message(message)))
        except ValueError as exc:
            raise _EntryError(i, f".message{exc}") from None
    return prepared


def _recorded_items(
    prepared: Sequence[tuple[float, RecordedMessage]], wait_for_tools: bool
) -> tuple[RecordedItem, ...]:
    """The messages left to send; backwards, to know what follows each: output, cancellations."""
    items: list[RecordedItem] = []
    output_follows = False
    cancelled_later: set[str] = set()
    for t_ms, ready in reversed(prepared):
        if not ready.message:
            continue
        waits = tuple(
            wait_for_tools and output_follows and call_id not in cancelled_later
            for call_id, _ in ready.calls
        )
        items.append(RecordedItem(t_ms, ready, waits))
        output_follows = output_follows or ready.generated
        cancelled_later.update(ready.cancelled)
    return tuple(reversed(items))


# -- dict parsing ----------------------------------------------------------------------------------


class _Obj:
    """A mapping being parsed: typed getters that name the field on error, and a check for typos."""

    def __init__(self, data: object, path: str, base_dir: Path | None = None) -> None:
        if not isinstance(data, Mapping):
            raise ScriptError(f"{path}: expected an object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.base_dir = base_dir
        self._seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def child(self, key: str) -> _Obj:
        return _Obj(self.raw(key), f"{self.path}.{key}", self.base_dir)

    def items(self, key: str) -> list[_Obj]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ScriptError(f"{self.path}.{key}: expected a list")
        return [_Obj(v, f"{self.path}.{key}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ScriptError(f"{self.path}.{key}: expected a string")
        return value

    def num(self, key: str, default: float | None = None) -> float | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScriptError(f"{self.path}.{key}: expected a number")
        return float(value)

    def int_(self, key: str, default: int | None = None) -> int | None:
        value = self.num(key)
        if value is None:
            return default
        if value != int(value):
            raise ScriptError(f"{self.path}.{key}: expected a whole number")
        return int(value)

    def bool_(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScriptError(f"{self.path}.{key}: expected true or false")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise ScriptError(f"{self.path}: unknown key(s) {', '.join(map(repr, unknown))}")

    def file(self, key: str) -> Path:
        name = self.str_(key)
        assert name is not None
        path = Path(name)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path


def _parse_script(obj: _Obj) -> EmulatorScript:
    replies = tuple(_parse_reply(r) for r in obj.items("replies"))
    default = (
        _parse_reply(obj.child("default_reply")) if obj.has("default_reply") else DEFAULT_REPLY
    )
    go_away = _parse_go_away(obj.child("go_away")) if obj.has("go_away") else None
    resumption_updates = obj.bool_("resumption_updates", True)
    setup_complete = obj.bool_("setup_complete", True)
    obj.done()
    return EmulatorScript(replies, default, go_away, resumption_updates, setup_complete)


def _parse_reply(obj: _Obj) -> Reply:
    trigger_name = obj.str_("trigger") or Trigger.SPEECH_END.value
    try:
        trigger = Trigger(trigger_name)
    except ValueError:
        choices = ", ".join(t.value for t in Trigger)
        raise ScriptError(f"{obj.path}.trigger: {trigger_name!r} is not one of {choices}") from None
    input_transcript = obj.str_("input_transcript")
    usage = _parse_usage(obj.child("usage")) if obj.has("usage") else None
    if obj.has("recorded"):
        others = [k for k in ("steps", "text", "audio", "tool_calls") if obj.has(k)]
        if others:
            raise ScriptError(f"{obj.path}: use either 'recorded' or {', '.join(others)}, not both")
        recorded = _parse_recorded(obj, "recorded", obj.bool_("wait_for_tools", True))
        obj.done()
        return Reply((recorded,), trigger, input_transcript, usage)
    flat_keys = [k for k in ("text", "audio", "tool_calls", "wait_for_tools") if obj.has(k)]
    if obj.has("steps"):
        if flat_keys:
            raise ScriptError(f"{obj.path}: use either 'steps' or {', '.join(flat_keys)}, not both")
        steps = tuple(_parse_step(s) for s in obj.items("steps"))
        obj.done()
        return Reply(steps, trigger, input_transcript, usage)
    text = obj.str_("text", "") or ""
    audio = _parse_audio(obj.child("audio")) if obj.has("audio") else None
    calls = [_parse_call(c) for c in obj.items("tool_calls")]
    wait = obj.bool_("wait_for_tools", True)
    obj.done()
    return Reply.of(
        text,
        audio,
        tool_calls=calls,
        wait_for_tools=wait,
        trigger=trigger,
        input_transcript=input_transcript,
        usage=usage,
    )


def _parse_step(obj: _Obj) -> Step:
    if len(obj.data) != 1:
        raise ScriptError(
            f"{obj.path}: a step is an object with exactly one of 'say', 'call_tools', "
            "'pause_ms', 'recorded', 'raw', 'close'"
        )
    step: Step
    if obj.has("say"):
        if isinstance(obj.data["say"], str):
            step = Say(obj.str_("say") or "")
        else:
            say = obj.child("say")
            text = say.str_("text", "") or ""
            audio = _parse_audio(say.child("audio")) if say.has("audio") else None
            from_tool_output = say.bool_("from_tool_output", False)
            say.done()
            step = Say(text, audio, from_tool_output)
    elif obj.has("call_tools"):
        tools = obj.child("call_tools")
        calls = tuple(_parse_call(c) for c in tools.items("calls"))
        if not calls:
            raise ScriptError(f"{tools.path}.calls: at least one call is needed")
        step = CallTools(calls, tools.bool_("wait", True))
        tools.done()
    elif obj.has("pause_ms"):
        step = Pause(_non_negative(obj, "pause_ms"))
    elif obj.has("recorded"):
        if isinstance(obj.data["recorded"], list):
            step = _parse_recorded(obj, "recorded", True)
        else:
            recorded = obj.child("recorded")
            step = _parse_recorded(recorded, "messages", recorded.bool_("wait_for_tools", True))
            recorded.done()
    elif obj.has("raw"):
        message = obj.raw("raw")
        if not isinstance(message, Mapping | str):
            raise ScriptError(f"{obj.path}.raw: expected an object or a string")
        step = Raw(message)
    elif obj.has("close"):
        close = obj.child("close")
        step = Close(
            close.int_("code", Close.code) or Close.code, close.str_("reason", Close.reason) or ""
        )
        close.done()
    else:
        raise ScriptError(f"{obj.path}: unknown step {next(iter(obj.data))!r}")
    obj.done()
    return step


def _parse_recorded(obj: _Obj, key: str, wait_for_tools: bool) -> Recorded:
    """`obj[key]`: a list of ``{"t_ms": N, "message": {...}}``."""
    if not isinstance(obj.raw(key), list):
        raise ScriptError(f"{obj.path}.{key}: expected a list of {{'t_ms': ..., 'message': ...}}")
    pairs: list[tuple[float, Any]] = []
    for entry in obj.items(key):
        t_ms = entry.num("t_ms")
        if t_ms is None:
            raise ScriptError(f"{entry.path}.t_ms: the message's offset in ms is needed")
        if t_ms < 0:
            raise ScriptError(f"{entry.path}.t_ms: a number of ms >= 0 is needed")
        pairs.append((t_ms, entry.raw("message")))
        entry.done()
    try:
        return Recorded(pairs, wait_for_tools)
    except _EntryError as exc:
        raise ScriptError(f"{obj.path}.{key}[{exc.index}]{exc.detail}") from None


def _parse_call(obj: _Obj) -> FunctionCall:
    name = obj.str_("name")
    if not name:
        raise ScriptError(f"{obj.path}.name: a function call needs a name")
    args = obj.raw("args") or {}
    if not isinstance(args, dict):
        raise ScriptError(f"{obj.path}.args: expected an object")
    call = FunctionCall(name, args, obj.str_("id"))
    obj.done()
    return call


def _parse_audio(obj: _Obj) -> AudioSpec:
    kinds = ("tone", "silence_ms", "pcm_base64", "pcm_file", "wav_file")
    present = [k for k in kinds if obj.has(k)]
    if len(present) != 1 or len(obj.data) != 1:
        raise ScriptError(f"{obj.path}: audio is an object with exactly one of {', '.join(kinds)}")
    spec: AudioSpec
    match present[0]:
        case "tone":
            t = obj.child("tone")
            spec = Tone(
                t.num("frequency_hz", Tone.frequency_hz) or 0.0,
                _non_negative(t, "duration_ms", Tone.duration_ms),
                t.num("amplitude", Tone.amplitude) or 0.0,
            )
            if not 0.0 <= spec.amplitude <= 1.0:
                raise ScriptError(f"{t.path}.amplitude: expected a fraction of full scale, 0 to 1")
            t.done()
        case "silence_ms":
            spec = Silence(_non_negative(obj, "silence_ms"))
        case "pcm_base64":
            try:
                spec = Pcm(base64.b64decode(obj.str_("pcm_base64") or "", validate=True))
            except binascii.Error as exc:
                raise ScriptError(f"{obj.path}.pcm_base64: not valid base64: {exc}") from None
        case "pcm_file":
            spec = Pcm(_read(obj, "pcm_file", lambda p: p.read_bytes()))
        case _:
            spec = Pcm(_read(obj, "wav_file", _read_wav))
    obj.done()
    return spec


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        if shape != (1, 2, OUTPUT_RATE):
            raise ScriptError(
                f"{path}: need 16-bit mono {OUTPUT_RATE} Hz, got {shape[1] * 8}-bit, "
                f"{shape[0]} channel(s), {shape[2]} Hz"
            )
        return w.readframes(w.getnframes())


def _read(obj: _Obj, key: str, reader: Callable[[Path], bytes]) -> bytes:
    path = obj.file(key)
    try:
        return reader(path)
    except (OSError, wave.Error, EOFError) as exc:
        raise ScriptError(f"{obj.path}.{key}: cannot read {path}: {exc}") from None


def _parse_usage(obj: _Obj) -> Usage:
    usage = Usage(obj.int_("prompt_tokens"), obj.int_("response_tokens"))
    obj.done()
    return usage


def _parse_go_away(obj: _Obj) -> GoAway:
    after = obj.num("after_s")
    if after is None or after < 0:
        raise ScriptError(f"{obj.path}.after_s: a number of seconds >= 0 is needed")
    # An explicit null means: send goAway but leave the connection open.
    close_code = obj.int_("close_code") if obj.has("close_code") else 1000
    go_away = GoAway(after, obj.num("time_left_s", 10.0) or 0.0, close_code)
    obj.done()
    return go_away


def _non_negative(obj: _Obj, key: str, default: int | None = None) -> int:
    value = obj.int_(key, default)
    if value is None or value < 0:
        raise ScriptError(f"{obj.path}.{key}: a whole number >= 0 is needed")
    return value
