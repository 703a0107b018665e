"""One emulated Live session: read the client, detect speech, play the script, handle barge-in.

Per connection, a reader and a generator run in one task group; the reply being played is a third
task in the same group. The reader handles client events synchronously, so the emulator's decisions
follow the order of the frames. When the caller barges in, the reader stops the reply's `Pacer`,
which ends the reply at its next message (see `pacing` for where, on each clock); the generator
then sends the interruption.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from phone_agent.emulator import audio, protocol
from phone_agent.emulator.pacing import (
    Changes,
    ClockName,
    Interrupted,
    Pacer,
    make_clock,
    wait_until,
)
from phone_agent.emulator.protocol import (
    ActivityEnd,
    ActivityStart,
    AudioIn,
    AudioStreamEnd,
    ClientContent,
    ClientEvent,
    FunctionResponse,
    MediaIn,
    Piece,
    ProtocolError,
    RecordedMessage,
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
    Raw,
    Recorded,
    RecordedItem,
    Reply,
    Say,
    Trigger,
)
from phone_agent.emulator.session import (
    ClientRecord,
    EmulatorSession,
    Notify,
    Observe,
    Outcome,
    ReplyRecord,
    SentRecord,
    SpeechRecord,
)
from phone_agent.emulator.usage import TurnUsage
from phone_agent.vad import EnergyVad, SpeechEnded, SpeechStarted

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
    clock: ClockName = "wall"
    """What paces replies and goAway: wall time, or the caller audio received (see `pacing`)."""
    setup_delay_s: float = 0.0
    """How long `setupComplete` takes, as the real service's connection set-up does (benchmarks)."""
    observe: Observe | None = None
    """Told, with timestamps, of every audio chunk and text in and message out (benchmarks)."""


class _Stop(Exception):
    """The connection is over; raised to end the task group."""


@dataclass(frozen=True)
class _Fired:
    """A trigger, with what the caller had done by then: decisions follow the order of input."""

    trigger: Trigger
    at: float
    """When it fired, on the connection's clock."""
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
    pacer: Pacer
    task: asyncio.Task[None] | None = None
    committed: bool = False
    """Set once generation is complete: from then on the caller's speech no longer interrupts it."""
    interrupted: bool = False
    cancelled_ids: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """Calls the reply waits on, by id: their names (to match responses that lack an id)."""
    answered: dict[str, float] = field(default_factory=dict)
    """When each call it waits on was answered, on the connection's clock."""
    recorded_usage: bool = False
    """A recorded `usageMetadata` was sent: the turn's end reports no computed usage."""
    tool_output: Mapping[str, Any] = field(default_factory=dict)
    """The last tool response's `output` (or the whole response), for `Say(from_tool_output)`."""


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
        self._issued_handles: list[str] = []
        self._notify = notify
        self._setup: SetupInfo | None = None
        self._vad: EnergyVad | None = None
        self._speaking = False
        self._speech_starts = 0
        self._starts: list[float] = []
        """When each utterance started, on the connection's clock."""
        self._audio_clock = options.clock == "audio"
        self._clock = make_clock(options.clock, lambda: self.record.audio_in_ms)
        self._wake = Changes()
        """Notified when a reply may go on: caller audio (audio clock), tool responses, barge-in."""
        self._idle_at = 0.0
        """Where the last reply ended, on the connection's clock."""
        self._triggers: asyncio.Queue[_Fired] = asyncio.Queue()
        self._run: _Run | None = None
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
        if not self._script.setup_complete:
            log.info("session %d: withholding setupComplete, as scripted", self.record.id)
            self._notify()
            async for _ in self._ws:
                pass  # a server hung at set-up: read (so the client can close) and ignore
            raise _Stop
        if self._options.setup_delay_s > 0:
            await asyncio.sleep(self._options.setup_delay_s)
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
                self._observed("audio_in", ms)
                if self._options.record_messages:
                    rec.audio_in_pcm += pcm
                self._usage.audio_in_ms += ms
                if self._audio_clock:
                    self._wake.notify()
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
                self._observed("text_in", text)
                self._record_client("text", {"text": text})
                self._usage.text_in_chars += len(text)
                self._fire(Trigger.TEXT, self.record.audio_in_ms)
            case ClientContent():
                self._observed("text_in", event.text)
                self._record_client(
                    "client_content",
                    {"turns": list(event.turns), "turn_complete": event.turn_complete},
                )
                self._usage.text_in_chars += len(event.text)
                if event.turn_complete:
                    self._fire(Trigger.TEXT, self.record.audio_in_ms)
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
        self._starts.append(self._clock.event_time(audio_ms))
        self.record.speech.append(SpeechRecord("start", source, audio_ms, time.monotonic()))
        self._barge_in()

    def _barge_in(self) -> None:
        """If the caller spoke since a reply's trigger and it is still generating, stop it.

        The reply stops at its next message (see `pacing`); the generator then sends the
        interruption.
        """
        run = self._run
        if (
            run is not None
            and self._speech_starts > run.speech_starts
            and not run.committed
            and self._require_setup().interrupts
        ):
            run.pacer.stop(self._starts[run.speech_starts])

    def _fire(self, trigger: Trigger, audio_ms: float) -> None:
        at = self._clock.event_time(audio_ms)
        self._triggers.put_nowait(_Fired(trigger, at, self._speech_starts, self._usage))
        self._usage = TurnUsage()

    def _speech_ended(self, source: str, audio_ms: float) -> None:
        if not self._speaking:
            return
        self._speaking = False
        self.record.speech.append(SpeechRecord("end", source, audio_ms, time.monotonic()))
        self._fire(Trigger.SPEECH_END, audio_ms)

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
        run = self._run
        unanswered: dict[str, str] = {}
        if run is not None:
            unanswered = {i: name for i, name in run.waiting.items() if i not in run.answered}
        matched = stray = False
        for response in responses:
            self._usage.text_in_chars += len(orjson.dumps(response.response))
            call_id = response.id or next(
                (i for i, name in unanswered.items() if name == response.name), None
            )
            if call_id in self._cancelled_ids:
                continue
            if run is not None and call_id is not None and call_id in unanswered:
                output = response.response.get("output", response.response)
                run.tool_output = output if isinstance(output, Mapping) else {"output": output}
                del unanswered[call_id]
                run.answered[call_id] = self._clock.event_time(self.record.audio_in_ms)
                matched = True
            else:
                stray = True
        if matched:
            self._wake.notify()
        elif stray:
            self._fire(Trigger.TOOL_RESPONSE, self.record.audio_in_ms)

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
            origin = self._clock.reply_origin(fired.at, self._idle_at)
            pacer = Pacer(self._clock, self._wake, origin, self._options.speed)
            record = ReplyRecord(index, trigger, time.monotonic())
            record.started_audio_ms = self._audio_ms(origin)
            self.record.replies.append(record)
            run = _Run(reply, record, fired.usage, fired.speech_starts, pacer)
            self._run = run
            run.task = tg.create_task(self._play(run))
            self._notify()
            # The caller may have started speaking again after the trigger, before the reply began:
            # decided in audio order, so a client sending faster than real time sees the same.
            self._barge_in()
            await asyncio.wait([run.task])
            if run.task.cancelled() or run.task.exception() is not None:
                return  # the connection is ending; the task group reports any error
            end = pacer.reached
            if run.interrupted:
                assert pacer.stopped_at is not None
                end = pacer.stopped_at
                await self._send_interruption(run, end)
            self._idle_at = max(self._idle_at, end)
            self._run = None
            await self._after_turn(end)

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
        """Play a reply; if the caller cuts in, stop and leave the interruption to the generator.

        Each step starts at the position (ms of reply time) where the previous one ended.
        """
        setup = self._require_setup()
        reply, pacer = run.reply, run.pacer
        try:
            if reply.input_transcript and setup.input_transcription:
                at = await pacer.until(0.0)
                message = protocol.input_transcription(reply.input_transcript)
                await self._send("inputTranscription", message, at=at)
            position = 0.0
            for step in reply.steps:
                match step:
                    case Say():
                        position = await self._say(step, run, position)
                    case CallTools():
                        position = await self._call_tools(step, run, position)
                    case Recorded():
                        position = await self._recorded(step, run, position)
                    case Pause(duration_ms):
                        position += duration_ms
                        await pacer.until(position)
                    case Raw():
                        at = await pacer.until(position)
                        await self._send("raw", step.frame, _raw_summary(step), at=at)
                    case Close(code, reason):
                        await pacer.until(position)
                        # The reply cut by the failure is spent: a client resuming with any handle
                        # this connection issued goes on with the next reply, as a script would.
                        for handle in self._issued_handles:
                            self._handles[handle] = self._cursor
                        await self.close(code, reason)
                        raise _Stop
            at = pacer.check()
        except Interrupted:
            run.interrupted = True
            stopped_at = pacer.stopped_at
            assert stopped_at is not None
            # Calls it was waiting on and that were not answered before the caller cut in.
            run.cancelled_ids = [
                i for i in run.waiting if run.answered.get(i, math.inf) >= stopped_at
            ]
            self._cancelled_ids.update(run.cancelled_ids)
            return
        run.committed = True
        await self._send("generationComplete", protocol.generation_complete(), at=at)
        await self._send("turnComplete", protocol.turn_complete(self._usage_of(run)), at=at)
        run.record.outcome = Outcome.COMPLETED
        run.record.ended_at = time.monotonic()
        run.record.ended_audio_ms = self._audio_ms(at)
        self._notify()

    async def _say(self, step: Say, run: _Run, position: float) -> float:
        setup = self._require_setup()
        if step.from_tool_output:
            step = replace(step, text=_fill(step.text, run.tool_output), from_tool_output=False)
        chunks = audio.chunks(step.render(), self._options.chunk_ms)
        pieces = audio.split_text(step.text, max(1, len(chunks)))
        for i, piece in enumerate(pieces):
            at = await run.pacer.until(position)
            chunk = chunks[i] if i < len(chunks) else b""
            ms = audio.duration_ms(chunk, audio.OUTPUT_RATE)
            position += ms
            if setup.text_only:
                if piece:
                    run.usage.text_out_chars += len(piece)
                    await self._send("text", protocol.model_text(piece), at=at)
                continue
            if chunk:
                summary = {"bytes": len(chunk), "ms": ms}
                await self._send("audio", protocol.model_audio(chunk), summary, at=at)
                run.record.audio_ms_sent += ms
                run.usage.audio_out_ms += ms
            if piece and setup.output_transcription:
                message = protocol.output_transcription(piece)
                await self._send("outputTranscription", message, at=at)
        return position

    async def _call_tools(self, step: CallTools, run: _Run, position: float) -> float:
        at = await run.pacer.until(position)
        ids = self._call_ids([call.id for call in step.calls])
        run.record.tool_call_ids.extend(ids)
        if step.wait:
            run.waiting.update((i, call.name) for i, call in zip(ids, step.calls, strict=True))
        calls = [(i, call.name, call.args) for i, call in zip(ids, step.calls, strict=True)]
        await self._send("toolCall", protocol.tool_call(calls), at=at)
        if step.wait:
            await self._await_answers(run, ids)
        return position

    async def _recorded(self, step: Recorded, run: _Run, position: float) -> float:
        """Replay recorded messages at `position` plus their offsets (see `Recorded`)."""
        items = step.items
        last = position
        for n, item in enumerate(items):
            start = position + item.t_ms
            at = await run.pacer.until(start)
            message, awaited = self._take_calls(item, run)
            run.usage.text_out_chars += message.text_chars
            run.recorded_usage = run.recorded_usage or "usageMetadata" in message.message
            self._cancelled_ids.update(message.cancelled)  # responses to them are ignored
            # Long audio goes in chunks, spread over the time to the next message but no faster
            # than real time, so that the caller can cut in between them.
            gap = (items[n + 1].t_ms if n + 1 < len(items) else math.inf) - item.t_ms
            pace = min(1.0, gap / message.audio_ms) if message.audio_ms else 1.0
            offset = 0.0
            for i, piece in enumerate(message.pieces(self._options.chunk_ms)):
                last = start + offset * pace
                if i:
                    at = await run.pacer.until(last)
                offset += piece.audio_ms
                await self._send_piece(message.kind, piece, run, at)
            if awaited:
                await self._await_answers(run, awaited)
        end = max(position + step.end_ms, last)
        await run.pacer.until(end)
        if step.cut_short:  # still generating when the caller cut in: wait for them to do so
            await run.pacer.hold(lambda: None)
        return end

    def _take_calls(self, item: RecordedItem, run: _Run) -> tuple[RecordedMessage, list[str]]:
        """Number a recorded message's calls, and register and return those the reply awaits."""
        message = item.message
        if not message.calls:
            return message, []
        ids = self._call_ids([call_id for call_id, _ in message.calls])
        run.record.tool_call_ids.extend(ids)
        awaited = []
        for call_id, (_, name), wait in zip(ids, message.calls, item.waits, strict=True):
            if wait:
                awaited.append(call_id)
                run.waiting[call_id] = name
        return message.with_call_ids(ids), awaited

    async def _send_piece(self, kind: str, piece: Piece, run: _Run, at: float) -> None:
        if not piece.audio_bytes:
            await self._send(kind, piece.message, at=at)
            return
        summary = {"bytes": piece.audio_bytes, "ms": piece.audio_ms}
        await self._send("audio", piece.message, summary, at=at)
        run.record.audio_ms_sent += piece.audio_ms
        run.usage.audio_out_ms += piece.audio_ms

    def _call_ids(self, ids: Sequence[str | None]) -> list[str]:
        """The calls' ids, numbering those without one `fc-1`, `fc-2`, … per session."""
        numbered = []
        for call_id in ids:
            if call_id is None:
                self._calls += 1
                call_id = f"fc-{self._calls}"
            numbered.append(call_id)
        return numbered

    async def _await_answers(self, run: _Run, ids: Sequence[str]) -> None:
        """Hold the reply until every call in `ids` (in `run.waiting`) has a response."""

        def answered() -> float | None:
            if not all(i in run.answered for i in ids):
                return None
            return max(run.answered[i] for i in ids)

        await run.pacer.hold(answered)
        for call_id in ids:
            run.waiting.pop(call_id, None)

    def _usage_of(self, run: _Run) -> dict[str, Any] | None:
        """The usage a reply's `turnComplete` reports: none if a recorded one was replayed."""
        if run.recorded_usage and run.reply.usage is None:
            return None
        return run.usage.usage_metadata(run.reply.usage)

    async def _send_interruption(self, run: _Run, at: float) -> None:
        if run.cancelled_ids:
            message = protocol.tool_call_cancellation(run.cancelled_ids)
            await self._send("toolCallCancellation", message, at=at)
        await self._send("interrupted", protocol.interrupted(), at=at)
        run.record.outcome = Outcome.INTERRUPTED
        run.record.ended_at = time.monotonic()
        run.record.ended_audio_ms = self._audio_ms(at)
        usage = None if run.recorded_usage else run.usage.usage_metadata()
        await self._send("turnComplete", protocol.turn_complete(usage), at=at)

    async def _after_turn(self, at: float) -> None:
        self._turns += 1
        setup = self._require_setup()
        if setup.resumption and self._script.resumption_updates:
            handle = f"emu-{self.record.id}-{self._turns}-{secrets.token_hex(4)}"
            self._handles[handle] = self._cursor
            self._issued_handles.append(handle)
            message = protocol.resumption_update(handle)
            await self._send("sessionResumptionUpdate", message, at=at)

    async def _go_away(self, go_away: GoAway) -> None:
        start = self._clock.now()
        due = start + go_away.after_s * 1000.0
        await wait_until(self._clock, self._wake, due)
        await self._send("goAway", protocol.go_away(go_away.time_left_s), at=due)
        if go_away.close_code is None:
            return
        closing_at = start + (go_away.after_s + go_away.time_left_s) * 1000.0
        await wait_until(self._clock, self._wake, closing_at)
        await self.close(go_away.close_code, "GoAway: connection lifetime reached")
        raise _Stop

    # -- helpers -----------------------------------------------------------------------------------

    def _audio_ms(self, at: float) -> float:
        """The caller audio time to stamp what happened at clock time `at` with.

        On the audio clock, `at` itself (when a message was due, not when it went out); on the wall
        clock, the caller audio received so far.
        """
        return at if self._audio_clock else self.record.audio_in_ms

    async def _send(
        self,
        kind: str,
        message: dict[str, Any] | str | bytes,
        data: dict[str, Any] | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Send a message (or a raw frame, with `data` its summary); `at` is when it was due on the
        connection's clock, if it was paced."""
        # Binary frames, as the real service sends; the SDK parses text and binary alike.
        frame = message if isinstance(message, str | bytes) else protocol.encode(message)
        self._observed(kind, None)  # before: a stamp taken after could follow the peer's receipt
        await self._ws.send(frame)
        if self._options.record_messages:
            if data is None:
                data = message if isinstance(message, dict) else {}
            audio_ms = self.record.audio_in_ms if at is None else self._audio_ms(at)
            self.record.sent.append(SentRecord(kind, time.monotonic(), data, audio_ms))
        self._notify()

    def _observed(self, kind: str, detail: object) -> None:
        if self._options.observe is not None:
            self._options.observe(self.record.id, kind, time.monotonic(), detail)

    def _record_client(self, kind: str, data: dict[str, Any] | None = None) -> None:
        if self._options.record_messages or kind == "malformed":
            self.record.client_messages.append(ClientRecord(kind, time.monotonic(), data or {}))

    def _require_setup(self) -> SetupInfo:
        assert self._setup is not None, "setup is handled before anything else"
        return self._setup


def _raw_summary(step: Raw) -> dict[str, Any]:
    """How a raw message is recorded: the message itself, or a text or binary frame's content."""
    if isinstance(step.message, str):
        return {"text": step.message}
    if isinstance(step.message, bytes):
        return {"bytes": step.message}
    return dict(step.message)


class _Unknown(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "unknown"


def _fill(template: str, output: Mapping[str, Any]) -> str:
    """`template` formatted with a tool's output; missing or malformed fields read "unknown"."""
    try:
        return template.format_map(_Unknown(output))
    except (KeyError, IndexError, AttributeError, ValueError, TypeError):
        return template
