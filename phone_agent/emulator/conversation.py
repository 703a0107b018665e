"""One emulated Live session: read the client, detect speech, play the script, handle barge-in.

Per connection, a reader and a generator run in one task group; the reply being played is a third
task in the same group, so the reader can cancel it the moment the caller barges in. The reader
handles client events synchronously, so the emulator's decisions follow the order of the frames.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from phone_agent.emulator import audio, protocol
from phone_agent.emulator.protocol import (
    ActivityEnd,
    ActivityStart,
    AudioIn,
    AudioStreamEnd,
    ClientContent,
    ClientEvent,
    FunctionResponse,
    MediaIn,
    ProtocolError,
    Setup,
    SetupInfo,
    TextIn,
    ToolResponse,
    Unknown,
)
from phone_agent.emulator.script import (
    CallTools,
    Close,
    EmulatorScript,
    GoAway,
    Pause,
    Reply,
    Say,
    Trigger,
)
from phone_agent.emulator.session import (
    ClientRecord,
    EmulatorSession,
    Notify,
    Outcome,
    ReplyRecord,
    SentRecord,
    SpeechRecord,
)
from phone_agent.emulator.usage import TurnUsage
from phone_agent.emulator.vad import EnergyVad, SpeechEnded, SpeechStarted

log = logging.getLogger(__name__)

DEFAULT_SILENCE_MS = 500


@dataclass(frozen=True)
class Options:
    """Emulator-wide settings every conversation shares."""

    speed: float = 2.0
    chunk_ms: int = 40
    vad_threshold_dbfs: float = -40.0
    record_messages: bool = True
    """Keep every message and the caller's PCM in the session record (off for long-running use)."""
    setup_timeout_s: float = 10.0


class _Stop(Exception):
    """The connection is over; raised to end the task group."""


@dataclass(frozen=True)
class _Fired:
    """A trigger, with what the caller had done by then: decisions follow the order of input."""

    trigger: Trigger
    speech_starts: int
    """Utterances started so far: any later one interrupts the reply to this trigger."""
    usage: TurnUsage
    """Input since the previous trigger: the prompt of the reply to this one."""


@dataclass
class _Run:
    """A reply being played."""

    reply: Reply
    record: ReplyRecord
    usage: TurnUsage
    speech_starts: int
    """Utterances started when the trigger fired: any later one interrupts this reply."""
    task: asyncio.Task[None] | None = None
    committed: bool = False
    """Set once generation is complete: from then on the caller's speech no longer interrupts it."""
    interrupted: bool = False
    cancelled_ids: list[str] = field(default_factory=list)


class Conversation:
    """The emulated model on one WebSocket connection."""

    def __init__(
        self,
        ws: ServerConnection,
        record: EmulatorSession,
        script: EmulatorScript,
        options: Options,
        handles: dict[str, int],
        notify: Notify,
    ) -> None:
        self._ws = ws
        self.record = record
        self._script = script
        self._options = options
        self._handles = handles
        self._notify = notify
        self._setup: SetupInfo | None = None
        self._vad: EnergyVad | None = None
        self._speaking = False
        self._speech_starts = 0
        self._triggers: asyncio.Queue[_Fired] = asyncio.Queue()
        self._run: _Run | None = None
        self._waiting: dict[str, tuple[str, asyncio.Future[FunctionResponse]]] = {}
        self._cancelled_ids: set[str] = set()
        self._usage = TurnUsage()
        self._cursor = 0
        self._calls = 0
        self._turns = 0
        self._close_sent: tuple[int, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        try:
            await self._handshake()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read())
                tg.create_task(self._generate(tg))
                if self._script.go_away is not None:
                    tg.create_task(self._go_away(self._script.go_away))
        except* (_Stop, ConnectionClosed):
            pass

    async def close(self, code: int, reason: str) -> None:
        """Close the connection from the emulator's side (code 1006 aborts the TCP connection)."""
        if self._close_sent is None and self._ws.state is State.OPEN:
            self._close_sent = (code, reason)
        if code == 1006:
            self._ws.transport.abort()
        else:
            await self._ws.close(code, reason)

    def finish(self) -> None:
        """Record how the connection ended; call once the connection is closed."""
        now = time.monotonic()
        run = self._run
        if run is not None and run.record.outcome is Outcome.RUNNING:
            run.record.outcome = Outcome.ABORTED
            run.record.ended_at = now
        rec = self.record
        rec.ended_at = now
        if self._close_sent is not None:
            rec.closed_by = "emulator"
            rec.close_code, rec.close_reason = self._close_sent
        else:
            rec.closed_by = "client"
            rec.close_code, rec.close_reason = self._ws.close_code, self._ws.close_reason
        self._notify()

    async def _handshake(self) -> None:
        try:
            async with asyncio.timeout(self._options.setup_timeout_s):
                frame = await self._ws.recv()
            events = protocol.parse_client_message(frame)
            setup = events[0] if len(events) == 1 else None
            if not isinstance(setup, Setup):
                raise ProtocolError(protocol.CLOSE_POLICY, "the first message must be a setup")
        except TimeoutError:
            await self._reject(ProtocolError(protocol.CLOSE_POLICY, "no setup message received"))
        except ProtocolError as exc:
            await self._reject(exc)
        info = setup.info
        self._setup = info
        self.record.setup = info
        self._record_client("setup", dict(info.raw))
        if info.automatic_activity_detection:
            self._vad = EnergyVad(
                threshold_dbfs=self._options.vad_threshold_dbfs,
                silence_ms=info.silence_duration_ms or DEFAULT_SILENCE_MS,
            )
        if info.resumption_handle is not None:
            if info.resumption_handle in self._handles:
                self._cursor = self._handles[info.resumption_handle]
            else:
                log.info("session %d: unknown resumption handle, starting afresh", self.record.id)
        await self._send("setupComplete", protocol.setup_complete())

    async def _reject(self, exc: ProtocolError) -> NoReturn:
        log.warning("session %d: closing with %d: %s", self.record.id, exc.code, exc.reason)
        self.record.error = exc.reason
        self._record_client("malformed", {"error": exc.reason})
        await self.close(exc.code, exc.reason)
        raise _Stop from None

    # -- reading -----------------------------------------------------------------------------------

    async def _read(self) -> None:
        async for frame in self._ws:
            try:
                for event in protocol.parse_client_message(frame):
                    self._on_event(event)
            except ProtocolError as exc:
                await self._reject(exc)
            self._notify()
        raise _Stop

    def _on_event(self, event: ClientEvent) -> None:
        match event:
            case AudioIn(pcm, rate):
                ms = audio.duration_ms(pcm, rate)
                rec = self.record
                rec.audio_in_ms += ms
                rec.audio_in_rate = rate
                if self._options.record_messages:
                    rec.audio_in_pcm += pcm
                self._usage.audio_in_ms += ms
                self._record_client("audio", {"bytes": len(pcm), "rate": rate, "ms": ms})
                if self._vad is not None:
                    for vad_event in self._vad.feed(pcm, rate):
                        if isinstance(vad_event, SpeechStarted):
                            self._speech_started("vad", vad_event.at_ms)
                        else:
                            self._speech_ended("vad", vad_event.at_ms)
            case MediaIn(mime_type, size):
                self._record_client("media", {"mime_type": mime_type, "bytes": size})
            case ActivityStart():
                self._record_client("activity_start")
                self._speech_started("client", self.record.audio_in_ms)
            case ActivityEnd():
                self._record_client("activity_end")
                self._speech_ended("client", self.record.audio_in_ms)
            case AudioStreamEnd():
                self._record_client("audio_stream_end")
                for vad_event in self._vad.flush() if self._vad is not None else []:
                    if isinstance(vad_event, SpeechEnded):
                        self._speech_ended("vad", vad_event.at_ms)
            case TextIn(text):
                self._record_client("text", {"text": text})
                self._usage.text_in_chars += len(text)
                self._fire(Trigger.TEXT)
            case ClientContent():
                self._record_client(
                    "client_content",
                    {"turns": list(event.turns), "turn_complete": event.turn_complete},
                )
                self._usage.text_in_chars += len(event.text)
                if event.turn_complete:
                    self._fire(Trigger.TEXT)
            case ToolResponse(responses):
                self._on_tool_response(responses)
            case Setup():
                raise ProtocolError(protocol.CLOSE_POLICY, "setup may only be sent once")
            case Unknown(key):
                log.info("session %d: ignoring unknown client key %r", self.record.id, key)
                self._record_client("unknown", {"key": key})

    def _speech_started(self, source: str, audio_ms: float) -> None:
        if self._speaking:
            return
        self._speaking = True
        self._speech_starts += 1
        self.record.speech.append(SpeechRecord("start", source, audio_ms, time.monotonic()))
        self._barge_in()

    def _barge_in(self) -> None:
        """If the caller spoke since a reply's trigger and it is still generating, stop it now."""
        run = self._run
        if (
            run is not None
            and self._speech_starts > run.speech_starts
            and run.task is not None
            and not run.task.done()
            and not run.committed
            and not run.interrupted
            and self._require_setup().interrupts
        ):
            # The generator sends the cancellation messages once the task has stopped.
            run.interrupted = True
            run.cancelled_ids = list(self._waiting)
            self._cancelled_ids.update(self._waiting)
            run.task.cancel()

    def _fire(self, trigger: Trigger) -> None:
        self._triggers.put_nowait(_Fired(trigger, self._speech_starts, self._usage))
        self._usage = TurnUsage()

    def _speech_ended(self, source: str, audio_ms: float) -> None:
        if not self._speaking:
            return
        self._speaking = False
        self.record.speech.append(SpeechRecord("end", source, audio_ms, time.monotonic()))
        self._fire(Trigger.SPEECH_END)

    def _on_tool_response(self, responses: tuple[FunctionResponse, ...]) -> None:
        self._record_client(
            "tool_response",
            {
                "function_responses": [
                    {"id": r.id, "name": r.name, "response": r.response, "scheduling": r.scheduling}
                    for r in responses
                ]
            },
        )
        matched = stray = False
        for response in responses:
            self._usage.text_in_chars += len(orjson.dumps(response.response))
            call_id = response.id or next(
                (i for i, (name, _) in self._waiting.items() if name == response.name), None
            )
            if call_id is not None and call_id in self._waiting:
                _, future = self._waiting.pop(call_id)
                if not future.done():
                    future.set_result(response)
                matched = True
            elif call_id not in self._cancelled_ids:
                stray = True
        if stray and not matched:
            self._fire(Trigger.TOOL_RESPONSE)

    # -- generating --------------------------------------------------------------------------------

    async def _generate(self, tg: asyncio.TaskGroup) -> None:
        while True:
            fired = await self._triggers.get()
            trigger = fired.trigger
            picked = self._pick(trigger)
            if picked is None:
                log.info("session %d: no scripted reply for trigger %s", self.record.id, trigger)
                self.record.unmatched_triggers.append(trigger)
                self._usage.absorb(fired.usage)
                self._notify()
                continue
            index, reply = picked
            record = ReplyRecord(index, trigger, time.monotonic())
            self.record.replies.append(record)
            run = _Run(reply, record, fired.usage, fired.speech_starts)
            self._run = run
            run.task = tg.create_task(self._play(run))
            self._notify()
            # The caller may have started speaking again after the trigger, before the reply began:
            # decided in audio order, so a client sending faster than real time sees the same.
            self._barge_in()
            await asyncio.wait([run.task])
            if not run.task.cancelled():
                if run.task.exception() is not None:
                    return  # the task group reports it and cancels everything
            elif run.interrupted:
                await self._send_interruption(run)
            else:
                return
            self._run = None
            await self._after_turn()

    def _pick(self, trigger: Trigger) -> tuple[int | None, Reply] | None:
        replies = self._script.replies
        if self._cursor < len(replies):
            reply = replies[self._cursor]
            if reply.trigger not in (Trigger.ANY, trigger):
                return None
            self._cursor += 1
            return self._cursor - 1, reply
        default = self._script.default_reply
        return (None, default) if default.trigger in (Trigger.ANY, trigger) else None

    async def _play(self, run: _Run) -> None:
        setup = self._require_setup()
        reply = run.reply
        if reply.input_transcript and setup.input_transcription:
            message = protocol.input_transcription(reply.input_transcript)
            await self._send("inputTranscription", message)
        for step in reply.steps:
            match step:
                case Say():
                    await self._say(step, run)
                case CallTools():
                    await self._call_tools(step, run)
                case Pause(duration_ms):
                    await self._sleep(duration_ms / 1000 / self._options.speed)
                case Close(code, reason):
                    await self.close(code, reason)
                    raise _Stop
        run.committed = True
        await self._send("generationComplete", protocol.generation_complete())
        usage = run.usage.usage_metadata(reply.usage)
        await self._send("turnComplete", protocol.turn_complete(usage))
        run.record.outcome = Outcome.COMPLETED
        run.record.ended_at = time.monotonic()
        self._notify()

    async def _say(self, step: Say, run: _Run) -> None:
        setup = self._require_setup()
        loop = asyncio.get_running_loop()
        pcm = step.render()
        chunks = audio.chunks(pcm, self._options.chunk_ms)
        pieces = audio.split_text(step.text, max(1, len(chunks)))
        start, elapsed_ms = loop.time(), 0.0
        for i, piece in enumerate(pieces):
            await self._sleep(start + elapsed_ms / 1000 / self._options.speed - loop.time())
            chunk = chunks[i] if i < len(chunks) else b""
            ms = audio.duration_ms(chunk, audio.OUTPUT_RATE)
            elapsed_ms += ms
            if setup.text_only:
                if piece:
                    run.usage.text_out_chars += len(piece)
                    await self._send("text", protocol.model_text(piece))
                continue
            if chunk:
                await self._send(
                    "audio", protocol.model_audio(chunk), {"bytes": len(chunk), "ms": ms}
                )
                run.record.audio_ms_sent += ms
                run.usage.audio_out_ms += ms
            if piece and setup.output_transcription:
                await self._send("outputTranscription", protocol.output_transcription(piece))

    async def _call_tools(self, step: CallTools, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        calls = []
        for call in step.calls:
            if call.id is None:
                self._calls += 1
            call_id = call.id or f"fc-{self._calls}"
            calls.append((call_id, call.name, call.args))
            run.record.tool_call_ids.append(call_id)
        futures = []
        if step.wait:
            for call_id, name, _ in calls:
                future: asyncio.Future[FunctionResponse] = loop.create_future()
                self._waiting[call_id] = (name, future)
                futures.append(future)
        try:
            await self._send("toolCall", protocol.tool_call(calls))
            for future in futures:
                await future
        finally:
            for call_id, _, _ in calls:
                self._waiting.pop(call_id, None)

    async def _send_interruption(self, run: _Run) -> None:
        if run.cancelled_ids:
            await self._send(
                "toolCallCancellation", protocol.tool_call_cancellation(run.cancelled_ids)
            )
        await self._send("interrupted", protocol.interrupted())
        run.record.outcome = Outcome.INTERRUPTED
        run.record.ended_at = time.monotonic()
        await self._send("turnComplete", protocol.turn_complete(run.usage.usage_metadata()))

    async def _after_turn(self) -> None:
        self._turns += 1
        setup = self._require_setup()
        if setup.resumption and self._script.resumption_updates:
            handle = f"emu-{self.record.id}-{self._turns}-{secrets.token_hex(4)}"
            self._handles[handle] = self._cursor
            await self._send("sessionResumptionUpdate", protocol.resumption_update(handle))

    async def _go_away(self, go_away: GoAway) -> None:
        await asyncio.sleep(go_away.after_s)
        await self._send("goAway", protocol.go_away(go_away.time_left_s))
        if go_away.close_code is None:
            return
        await asyncio.sleep(go_away.time_left_s)
        await self.close(go_away.close_code, "GoAway: connection lifetime reached")
        raise _Stop

    # -- helpers -----------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        # Always yield, even at infinite speed, so the reader can barge in between chunks.
        await asyncio.sleep(max(0.0, seconds))

    async def _send(
        self, kind: str, message: dict[str, Any], data: dict[str, Any] | None = None
    ) -> None:
        # Binary frames, as the real service sends; the SDK parses text and binary alike.
        await self._ws.send(protocol.encode(message))
        if self._options.record_messages:
            summary = data if data is not None else message
            self.record.sent.append(SentRecord(kind, time.monotonic(), summary))
        self._notify()

    def _record_client(self, kind: str, data: dict[str, Any] | None = None) -> None:
        if self._options.record_messages or kind == "malformed":
            self.record.client_messages.append(ClientRecord(kind, time.monotonic(), data or {}))

    def _require_setup(self) -> SetupInfo:
        assert self._setup is not None, "setup is handled before anything else"
        return self._setup
