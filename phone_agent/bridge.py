"""One phone call: the Twilio media socket bridged to a Gemini Live session.

Structured concurrency: after `start`, one task group owns the uplink pump (caller → model) and
the downlink pump (model → caller). Whichever side ends first (Twilio `stop` or socket close; model
close or error) cancels the other; leaving the group closes the model session, then the socket.
Nothing outlives the call.

Bad input from the network is a `TwilioProtocolError`: one log line, the socket closed with 1008,
no stack trace to the peer, no other call disturbed.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from phone_agent import gemini
from phone_agent.admission import TOKEN_PARAMETER, AdmissionError, StreamTokens
from phone_agent.audio import DownlinkConverter, UplinkConverter, mulaw_to_pcm16
from phone_agent.call_control import CallControl, CallControlError
from phone_agent.call_report import CallReport
from phone_agent.capabilities import CONSERVATIVE, ModelCapabilities
from phone_agent.conversation import (
    DtmfBuffer,
    SilenceAction,
    SilenceWatch,
    TurnTranscript,
    dtmf_message,
    interrupted_note,
    resumed_note,
)
from phone_agent.logs import mask_number
from phone_agent.memory import CallerMemory, memory_prompt
from phone_agent.metrics import Metrics
from phone_agent.model_link import (
    HandedOver,
    LinkEvent,
    ModelConnect,
    ModelLink,
    ModelUnavailable,
    Resumed,
)
from phone_agent.observer import CallObserver
from phone_agent.playback import Command, PlaybackTracker, SendClear, SendMark
from phone_agent.prewarm import PrewarmPool
from phone_agent.recorder import CallRecorder, RecordingPolicy
from phone_agent.tools.call_tools import END_CALL_KEY
from phone_agent.tools.registry import CallContext, ToolRegistry, ToolResult
from phone_agent.twilio_protocol import (
    MULAW_BYTES_PER_MS,
    SILENCE_BYTE,
    Connected,
    Dtmf,
    MarkEcho,
    Media,
    Start,
    Stop,
    StreamState,
    TwilioProtocolError,
    TwilioStream,
)

log = logging.getLogger(__name__)


class EndReason(enum.Enum):
    ADMISSION_REFUSED = "admission_refused"
    CALLER_STOP = "caller_stop"
    AGENT_HANG_UP = "agent_hang_up"
    TRANSFERRED = "transferred"
    SILENCE = "silence"
    MAX_DURATION = "max_duration"
    BUDGET = "budget"
    SHUTDOWN = "shutdown"
    PLAYBACK_STALLED = "playback_stalled"
    CALLER_DISCONNECT = "caller_disconnect"
    START_TIMEOUT = "start_timeout"
    PROTOCOL_ERROR = "protocol_error"
    MODEL_CLOSED = "model_closed"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL_ERROR = "internal_error"


_CLOSE_CODES = {
    EndReason.ADMISSION_REFUSED: 1008,
    EndReason.PROTOCOL_ERROR: 1008,
    EndReason.START_TIMEOUT: 1008,
    EndReason.INTERNAL_ERROR: 1011,
}


BUDGET_GOODBYE = (
    "[This call has reached its spending limit. Apologise, offer to continue on a new call, and "
    "say a short goodbye; the call ends.]"
)
SHUTDOWN_GOODBYE = (
    "[This line is closing for maintenance. Apologise, ask the caller to call back in a few "
    "minutes, and say a short goodbye; the call ends.]"
)
SILENCE_REPROMPT = "[The caller has been silent for a while. Check that they are still there.]"
SILENCE_GOODBYE = "[The line has been silent too long. Say a short, polite goodbye; the call ends.]"
MAX_DURATION_GOODBYE = (
    "[The call has reached its time limit. Apologise, say a short goodbye; the call ends.]"
)


CALLER_GONE_GRACE_S = 2.0


class _CallerGone(Exception):
    pass


class _PlaybackStalled(Exception):
    """The phone has not confirmed `max_unheard_s` of the agent's audio: it is not playing it."""


@dataclass(frozen=True)
class CallOptions:
    """Per-call behaviour, from `Settings` (see the README's configuration table)."""

    start_timeout_s: float = 5.0
    max_message_bytes: int = 64 * 1024
    mark_interval_ms: float = 100.0
    greeting: str = ""
    silence_reprompt_s: float = 0.0
    silence_hang_up_s: float = 0.0
    max_call_s: float = 0.0
    dtmf_pause_s: float = 1.5
    goodbye_timeout_s: float = 15.0
    max_unheard_s: float = 90.0
    """A phone that has not confirmed this much audio is not playing it (stopped reading): the
    call ends instead of buffering without bound."""
    retry_delays_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
    memory_recall_timeout_s: float = 0.3


@dataclass(frozen=True)
class ToolSet:
    """The tools a call may use: the registry, the names enabled, the model's capabilities."""

    registry: ToolRegistry = field(default_factory=ToolRegistry)
    enabled: frozenset[str] = frozenset()
    capabilities: ModelCapabilities = CONSERVATIVE


@dataclass
class CallSummary:
    """What happened on one call; logged at its end and returned to tests."""

    call_sid: str = ""
    stream_sid: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    end_reason: EndReason | None = None
    detail: str = ""
    frames_in: int = 0
    gap_fill_ms: int = 0
    dtmf: list[str] = field(default_factory=list)
    tools_called: list[str] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    honest_notes: list[str] = field(default_factory=list)
    model_texts: list[str] = field(default_factory=list)
    """Every text the bridge gave the model: greeting, keypad digits, notes (what it was told)."""
    prewarmed: bool = False
    reconnects: int = 0
    handovers: int = 0
    recording: str | None = None
    clears: int = 0
    dropped_audio_chunks: int = 0
    caller_transcript: list[str] = field(default_factory=list)
    agent_transcript: list[str] = field(default_factory=list)
    """Every word the model produced, heard or not."""
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """The conversation as the caller lived it: ("caller", text) and ("agent", text), where an
    agent turn cut by a barge-in holds only the words the caller heard (marked "…")."""
    usage: list[gemini.Usage] = field(default_factory=list)
    tracker: PlaybackTracker | None = None

    def as_log(self) -> dict[str, Any]:
        turns = self.tracker.turns if self.tracker is not None else []
        return {
            "event": "call.end",
            "call_sid": self.call_sid,
            "reason": self.end_reason.value if self.end_reason else None,
            "detail": self.detail,
            "duration_s": round(self.ended_at - self.started_at, 3) if self.started_at else 0.0,
            "frames_in": self.frames_in,
            "dtmf": "".join(self.dtmf),
            "clears": self.clears,
            "turns": [
                {
                    "generation": t.generation,
                    "sent_ms": round(t.sent_ms),
                    "heard_ms": round(t.heard_ms),
                    "interrupted": t.interrupted,
                    "first_heard_after_sent_ms": (
                        round((t.first_heard_at - t.first_sent_at) * 1000)
                        if t.first_heard_at is not None
                        else None
                    ),
                }
                for t in turns
            ],
        }


class CallBridge:
    """Runs one media-stream WebSocket from `accept` to close."""

    def __init__(
        self,
        websocket: WebSocket,
        connect_model: ModelConnect,
        *,
        options: CallOptions | None = None,
        recording: RecordingPolicy | None = None,
        tools: ToolSet | None = None,
        call_control: CallControl | None = None,
        memory: CallerMemory | None = None,
        prewarm: PrewarmPool | None = None,
        admission: StreamTokens | None = None,
        observer: CallObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.websocket = websocket
        self.connect_model = connect_model
        self.options = options = options or CallOptions()
        self.start_timeout_s = options.start_timeout_s
        self.clock = clock
        self.call_control = call_control
        self.memory = memory
        self.prewarm = prewarm
        self.admission = admission
        self.stream = TwilioStream(max_message_bytes=options.max_message_bytes)
        self.tracker = PlaybackTracker(mark_interval_ms=options.mark_interval_ms)
        self.uplink = UplinkConverter()
        self.downlink = DownlinkConverter()
        self.summary = CallSummary(tracker=self.tracker)
        self.observer = observer or CallObserver(Metrics(), model="")
        self.report: CallReport | None = None
        self.recording = recording
        self.recorder: CallRecorder | None = None
        self.tools = tools or ToolSet()
        self.context = CallContext(call_sid="")
        self._tool_scopes: dict[str, anyio.CancelScope] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self.link: ModelLink | None = None
        self._turn_text = TurnTranscript()
        self._last_turn_text = TurnTranscript()
        self._dtmf = DtmfBuffer(pause_s=options.dtmf_pause_s)
        self._silence = SilenceWatch(
            reprompt_s=options.silence_reprompt_s,
            hang_up_s=options.silence_hang_up_s,
            now=clock(),
        )
        self._playback_changed = anyio.Event()
        self._ending = False

    async def run(self) -> CallSummary:
        summary = self.summary
        await self.websocket.accept()
        if self.recording is not None:
            self.recorder = CallRecorder(opened_at=self.clock())
        try:
            start = await self._await_start()
            summary.call_sid, summary.stream_sid = start.call_sid, start.stream_sid
            if self.admission is not None:
                # Before any model session is opened or paid for.
                token = start.custom_parameters.get(TOKEN_PARAMETER)
                await self.admission.admit(token, start.call_sid)
            summary.started_at = self.clock()
            self.context = CallContext(
                call_sid=start.call_sid, caller_number=start.custom_parameters.get("from")
            )
            self.observer.started(start.call_sid, self.context.caller_number, summary.started_at)
            if self.recording is not None and not self.recording.applies_to(
                start.custom_parameters
            ):
                self.recorder = None
            log.info(
                "call started",
                extra={
                    "event": "call.start",
                    "call_sid": start.call_sid,
                    "from": mask_number(start.custom_parameters.get("from")),
                },
            )
            async with anyio.create_task_group() as group:
                self._group = group
                tap = None
                if self.recorder is not None:
                    recorder = self.recorder
                    tap = lambda m: recorder.model_message(m, self.clock())  # noqa: E731
                connect = self.connect_model
                notes = await self._recall()
                if notes:
                    connect = partial(self.connect_model, extra_instruction=notes)
                link = ModelLink(
                    connect,
                    group,
                    clock=self.clock,
                    retry_delays_s=self.options.retry_delays_s,
                    on_message=tap,
                )
                self.link = link
                # The session opened while the phone rang, unless caller memory must shape it.
                warm = None
                if self.prewarm is not None and not notes:
                    warm = await self.prewarm.take(start.call_sid)
                summary.prewarmed = warm is not None
                try:
                    await link.open(warm)
                except gemini.ModelSessionClosed as exc:
                    # Closing the stream hands the call back to Twilio, which asks
                    # /twilio/stream-ended what to do: an apology, never dead air.
                    self._end(EndReason.MODEL_UNAVAILABLE, str(exc))
                    group.cancel_scope.cancel()
                    return summary
                if warm is not None and warm.greeted:
                    summary.model_texts.append(self.options.greeting)
                    if self.recorder is not None:
                        self.recorder.sent_to_model("text", self.clock())
                elif self.options.greeting:
                    await self._send_text(self.options.greeting)
                group.start_soon(self._guard, self._uplink_pump(link), group.cancel_scope)
                group.start_soon(
                    partial(self._guard, reads_caller=False),
                    self._downlink_pump(link),
                    group.cancel_scope,
                )
                group.start_soon(self._guard_timer, self._timers(link))
        except AdmissionError as exc:
            self._end(EndReason.ADMISSION_REFUSED, f"{exc.reason}: {exc}")
        except TwilioProtocolError as exc:
            self._end(EndReason.PROTOCOL_ERROR, str(exc))
        except TimeoutError:
            self._end(EndReason.START_TIMEOUT, f"no 'start' within {self.start_timeout_s:g} s")
        except _CallerGone:
            self._end(EndReason.CALLER_DISCONNECT, "socket closed")
        except gemini.ModelSessionClosed as exc:
            self._end(EndReason.MODEL_UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception(
                "call failed", extra={"event": "call.error", "call_sid": summary.call_sid}
            )
            self._end(EndReason.INTERNAL_ERROR, type(exc).__name__)
        finally:
            if self.link is not None:
                self.link.close()
                summary.handovers = self.link.handovers
                summary.reconnects = self.link.reconnects
            summary.ended_at = self.clock()
            await self._close()
            await self._save_recording()
            self.report = self.observer.finished(summary)
            self._log_end()
        return summary

    async def _recall(self) -> str:
        """Notes from the caller's earlier calls, for the system instruction; never a delay."""
        if self.memory is None or not self.context.caller_number:
            return ""
        with anyio.move_on_after(self.options.memory_recall_timeout_s):
            try:
                notes = await self.memory.recall(self.context.caller_number)
            except Exception:
                log.warning("caller memory unavailable", exc_info=True, extra={"event": "memory"})
                return ""
            return memory_prompt(notes)
        log.warning(
            "caller memory too slow: the call starts without the caller's notes",
            extra={"event": "memory", "timeout_s": self.options.memory_recall_timeout_s},
        )
        return ""

    async def _save_recording(self) -> None:
        if self.recorder is None or self.recording is None or not self.summary.call_sid:
            return
        fixture = self.recorder.fixture(
            self.summary.call_sid, self.summary, {"model": self.recording.model}
        )
        try:
            path = await self.recording.save(fixture, self.context.caller_number)
        except OSError as exc:
            log.error("call recording not saved: %s", exc, extra={"event": "call.recording"})
            return
        self.summary.recording = str(path)

    # -- pumps ------------------------------------------------------------------------------

    async def _guard(
        self, pump: Any, scope: anyio.CancelScope, *, reads_caller: bool = True
    ) -> None:
        """Run one pump; its end, for any expected reason, ends the call."""
        try:
            await pump
        except TwilioProtocolError as exc:
            self._end(EndReason.PROTOCOL_ERROR, str(exc))
        except _CallerGone:
            if not reads_caller:
                # A send failed because the caller hung up: what they sent last (a `stop`) may
                # still be queued. The uplink reads it and ends the call with the right reason.
                await anyio.sleep(CALLER_GONE_GRACE_S)
            self._end(EndReason.CALLER_DISCONNECT, "socket closed")
        except _PlaybackStalled:
            self._end(EndReason.PLAYBACK_STALLED, "the phone stopped confirming playback")
        except gemini.ModelSessionClosed as exc:
            self._end(EndReason.MODEL_CLOSED, str(exc))
        except ModelUnavailable as exc:
            self._end(EndReason.MODEL_UNAVAILABLE, str(exc))
        finally:
            scope.cancel()

    async def _guard_timer(self, timers: Any) -> None:
        """Run a helper task whose normal end does not end the call."""
        with contextlib.suppress(_CallerGone, gemini.ModelSessionClosed):
            await timers

    async def _uplink_pump(self, link: ModelLink) -> None:
        while True:
            event = self.stream.receive(await self._receive())
            if isinstance(event, Media):
                self.summary.frames_in += 1
                if event.gap_ms:
                    self.summary.gap_fill_ms += event.gap_ms
                    filler = mulaw_to_pcm16(SILENCE_BYTE * (event.gap_ms * MULAW_BYTES_PER_MS))
                    self.observer.caller_audio(filler)
                    await link.send_audio(self.uplink.convert_pcm(filler))
                pcm = mulaw_to_pcm16(event.payload)  # decoded once: levels, VAD, upsampling
                self.observer.caller_audio(pcm)
                await link.send_audio(self.uplink.convert_pcm(pcm))
                if link.caller_speaking:
                    self._silence.activity(self.clock())
                link.check_handover()
            elif isinstance(event, MarkEcho):
                outcome = self.tracker.on_mark(event.name, self.clock())
                self._playback_moved()
                if outcome is not None and outcome.first_audio_heard:
                    self.observer.first_heard(outcome.turn)
            elif isinstance(event, Dtmf):
                self.summary.dtmf.append(event.digit)
                self._silence.activity(self.clock())
                digits = self._dtmf.press(event.digit, self.clock())
                if digits:
                    await self._send_text(dtmf_message(digits))
            elif isinstance(event, Stop):
                # A `stop` also comes when the call is redirected (a transfer): end the stream,
                # never the phone call itself.
                self._end(EndReason.CALLER_STOP, "stop")
                return

    async def _downlink_pump(self, link: ModelLink) -> None:
        events: AsyncIterator[LinkEvent] = link.events()
        async for event in events:
            if isinstance(event, gemini.ModelAudio):
                if not self.tracker.accepts_audio():
                    self.summary.dropped_audio_chunks += 1
                    continue
                self.observer.agent_audio(event.pcm24k)
                await self._play(self.downlink.convert(event.pcm24k))
            elif isinstance(event, gemini.Interrupted):
                self.observer.interrupted(self.clock())
                self.downlink.reset()
                cut = self.tracker.current
                await self._execute(self.tracker.on_interrupted(self.clock()))
                if cut is not None:
                    # Gemini keeps the whole answer in its history; tell it what was heard.
                    heard = self._turn_text.heard(cut.heard_ms)
                    self.summary.transcript.append(("agent", heard + " …" if heard else "…"))
                    note = interrupted_note(heard)
                    self.summary.model_texts.append(note)
                    await link.send_context(note)
                    self.summary.honest_notes.append(heard)
                self._turn_text = TurnTranscript()
            elif isinstance(event, gemini.TurnComplete):
                await self._end_turn()
            elif isinstance(event, Resumed):
                if event.mid_turn:
                    heard = self._turn_text.heard(self._heard_of_current())
                    self.summary.transcript.append(("agent", heard + " …" if heard else "…"))
                    self._turn_text = TurnTranscript()
                    await self._end_turn()
                    await self._send_text(resumed_note(heard))
            elif isinstance(event, HandedOver):
                pass  # counted by the link
            elif isinstance(event, gemini.ToolCallRequest):
                assert self._group is not None
                for call in event.calls:
                    self.summary.tools_called.append(call.name)
                    self.observer.tool_asked(call.id, self.clock())
                    self._group.start_soon(self._tool_task, link, call)
            elif isinstance(event, gemini.ToolCallCancelled):
                for call_id in event.ids:
                    scope = self._tool_scopes.pop(call_id, None)
                    if scope is not None:
                        scope.cancel()
            elif isinstance(event, gemini.OutputTranscript):
                self.summary.agent_transcript.append(event.text)
                current = self.tracker.current
                if self.tracker.accepts_audio():  # not the words of a cut-off answer
                    self._turn_text.add(current.sent_ms if current else 0.0, event.text)
            elif isinstance(event, gemini.InputTranscript):
                await self._caller_spoke_over_playback(link)
                self.summary.caller_transcript.append(event.text)
                self.summary.transcript.append(("caller", event.text))
            elif isinstance(event, gemini.Usage):
                self.summary.usage.append(event)
                if self.observer.usage(event):
                    self._start_ending(EndReason.BUDGET, BUDGET_GOODBYE)
        self._end(EndReason.MODEL_CLOSED, "event stream ended")

    async def _caller_spoke_over_playback(self, link: ModelLink) -> None:
        """Barge-in over an answer Gemini had finished generating but the phone still plays."""
        now = self.clock()
        commands, cut = self.tracker.on_talked_over(now)
        if cut is None:
            return
        self.observer.interrupted(now)
        self.downlink.reset()
        await self._execute(commands)
        heard = self._last_turn_text.heard(cut.heard_ms)
        self.summary.honest_notes.append(heard)
        if self.summary.transcript and self.summary.transcript[-1][0] == "agent":
            self.summary.transcript[-1] = ("agent", heard + " …" if heard else "…")
        note = interrupted_note(heard)
        self.summary.model_texts.append(note)
        await link.send_context(note)

    async def _end_turn(self) -> None:
        self._last_turn_text = self._turn_text
        if self._turn_text.pieces:
            self.summary.transcript.append(("agent", self._turn_text.text()))
        if self.tracker.accepts_audio():
            await self._play(self.downlink.flush())
        else:
            self.downlink.reset()
        await self._execute(self.tracker.on_turn_complete(self.clock()))
        self._turn_text = TurnTranscript()
        self._playback_moved()

    def _heard_of_current(self) -> float:
        current = self.tracker.current
        return current.heard_ms if current is not None else 0.0

    def _playback_moved(self) -> None:
        self._playback_changed.set()
        self._playback_changed = anyio.Event()

    async def _send_text(self, text: str) -> None:
        """Text the model answers (greeting, keypad digits, notes): a trigger for a new turn."""
        if self.link is None:
            return
        if self.recorder is not None:
            self.recorder.sent_to_model("text", self.clock())
        self.summary.model_texts.append(text)
        await self.link.send_text(text)

    # -- timers and ending the call ---------------------------------------------------------

    async def _timers(self, link: ModelLink) -> None:
        """Keypad digits, silence, and the maximum call length, checked four times a second."""
        started = self.clock()
        while not self._ending:
            await anyio.sleep(0.25)
            now = self.clock()
            digits = self._dtmf.due(now)
            if digits:
                await self._send_text(dtmf_message(digits))
            if link.caller_speaking:
                self._silence.activity(now)
            action = self._silence.check(now, agent_busy=self.tracker.playing)
            if action is SilenceAction.REPROMPT:
                await self._send_text(SILENCE_REPROMPT)
            elif action is SilenceAction.HANG_UP:
                self._start_ending(EndReason.SILENCE, SILENCE_GOODBYE)
            if self.options.max_call_s and now - started >= self.options.max_call_s:
                self._start_ending(EndReason.MAX_DURATION, MAX_DURATION_GOODBYE)

    def end_for_shutdown(self) -> None:
        """The server is going away (`drain.py`): say goodbye, then end the call."""
        if self._group is None:  # still being admitted: there is nothing to say goodbye to yet
            return
        self._start_ending(EndReason.SHUTDOWN, SHUTDOWN_GOODBYE)

    def _start_ending(
        self, reason: EndReason, goodbye: str | None, transfer_to: str | None = None
    ) -> None:
        if self._ending or self._group is None:
            return
        self._ending = True
        self._group.start_soon(self._finish_call, reason, goodbye, transfer_to)

    async def _finish_call(
        self, reason: EndReason, goodbye: str | None, transfer_to: str | None
    ) -> None:
        """Let the goodbye be heard in full (final mark echoed), then hang up or transfer."""
        mark = len(self.tracker.turns)
        if goodbye:
            await self._send_text(goodbye)
        with anyio.move_on_after(self.options.goodbye_timeout_s):
            while not self._goodbye_heard(mark):
                await self._playback_changed.wait()
        self._end(reason, "goodbye heard" if self._goodbye_heard(mark) else "goodbye timed out")
        call_sid = self.summary.call_sid
        if self.call_control is not None:
            try:
                if transfer_to:
                    await self.call_control.transfer(call_sid, transfer_to)
                else:
                    await self.call_control.hang_up(call_sid)
            except CallControlError as exc:
                log.error("call control failed: %s", exc, extra={"event": "call_control.error"})
        # Without REST access, closing the stream lets Twilio run the TwiML after <Connect>.
        assert self._group is not None
        self._group.cancel_scope.cancel()

    def _goodbye_heard(self, turns_before: int) -> bool:
        later = self.tracker.turns[turns_before:]
        return bool(later) and all(t.ended and t.unheard_ms < 1.0 for t in later)

    async def _tool_task(self, link: ModelLink, call: gemini.FunctionCall) -> None:
        """Run one tool call as a child of the call's task group; answer the model when done.

        A `toolCallCancellation` cancels its scope: the tool is cancelled and no response is sent.
        """
        with anyio.CancelScope() as scope:
            self._tool_scopes[call.id] = scope
            try:
                result = await self.tools.registry.invoke(
                    call.id, call.name, call.args, self.context, enabled=self.tools.enabled
                )
                self.summary.tool_results.append(result)
                self.observer.tool_finished(result)
                if self.recorder is not None:
                    self.recorder.sent_to_model("tool_response", self.clock())
                response = result.function_response(self.tools.capabilities)
                await link.send_tool_responses([response])
                self._after_tool(result)
            except gemini.ModelSessionClosed as exc:
                self._end(EndReason.MODEL_CLOSED, str(exc))
                assert self._group is not None
                self._group.cancel_scope.cancel()
            finally:
                self._tool_scopes.pop(call.id, None)

    def _after_tool(self, result: ToolResult) -> None:
        """Call-control tools ask for the call to end once the model's goodbye has been heard."""
        if result.status != "ok":
            return
        request = self.context.state.pop(END_CALL_KEY, None)
        if request is None:
            return
        if request.get("transfer_to"):
            self._start_ending(EndReason.TRANSFERRED, None, str(request["transfer_to"]))
        else:
            self._start_ending(EndReason.AGENT_HANG_UP, None)

    async def _play(self, mulaw: bytes) -> None:
        if not mulaw:
            return
        self._check_streaming()
        await self._send(self.stream.media(mulaw))
        commands = self.tracker.on_audio_sent(len(mulaw) / MULAW_BYTES_PER_MS, self.clock())
        self.observer.audio_sent(self.tracker.current)
        await self._execute(commands)
        if self.tracker.unheard_ms() > self.options.max_unheard_s * 1000.0:
            # At every send, not on a timer: a model faster than real time must not get more
            # than the limit (and this one chunk) written out to a phone that stopped playing.
            raise _PlaybackStalled

    def _check_streaming(self) -> None:
        if self.stream.state is not StreamState.STREAMING:
            raise _CallerGone  # the caller sent `stop` (hung up): nothing more goes out

    async def _execute(self, commands: list[Command]) -> None:
        if commands:
            self._check_streaming()
        for command in commands:
            if isinstance(command, SendMark):
                await self._send(self.stream.mark(command.name))
            elif isinstance(command, SendClear):
                self.summary.clears += 1
                await self._send(self.stream.clear())
                cut = self.tracker.turns[-1] if self.tracker.turns else None
                self.observer.clear_sent(cut, self.clock())

    # -- socket -----------------------------------------------------------------------------

    async def _await_start(self) -> Start:
        with anyio.fail_after(self.start_timeout_s):
            while True:
                event = self.stream.receive(await self._receive())
                if isinstance(event, Start):
                    return event
                if not isinstance(event, Connected):  # pragma: no cover - the parser forbids it
                    raise TwilioProtocolError(f"unexpected {type(event).__name__} before start")

    async def _receive(self) -> str | bytes:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            raise _CallerGone from None
        if message["type"] == "websocket.disconnect":
            raise _CallerGone
        text = message.get("text")
        if text is not None:
            if self.recorder is not None:
                self._record_caller(text)
            return str(text)
        return bytes(message.get("bytes") or b"")

    def _record_caller(self, text: str) -> None:
        assert self.recorder is not None
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return  # the protocol parser rejects it and ends the call
        if isinstance(message, dict):
            self.recorder.caller_message(message, self.clock())

    async def _send(self, text: str) -> None:
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise _CallerGone from None

    async def _close(self) -> None:
        if self.websocket.client_state is not WebSocketState.CONNECTED:
            return
        if self.websocket.application_state is not WebSocketState.CONNECTED:
            return
        reason = self.summary.end_reason
        code = _CLOSE_CODES.get(reason, 1000) if reason is not None else 1000
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.websocket.close(code=code)

    def _end(self, reason: EndReason, detail: str) -> None:
        """Record why the call ended; the first reason wins."""
        if self.summary.end_reason is None:
            self.summary.end_reason = reason
            self.summary.detail = detail

    def _log_end(self) -> None:
        reason = self.summary.end_reason
        if reason in (
            EndReason.PROTOCOL_ERROR,
            EndReason.START_TIMEOUT,
            EndReason.ADMISSION_REFUSED,
        ):
            log.warning(
                "media stream rejected: %s",
                self.summary.detail,
                extra={
                    "event": "call.rejected",
                    "call_sid": self.summary.call_sid,
                    "reason": reason.value if reason else None,
                },
            )
            return
        level = logging.WARNING if reason is EndReason.MODEL_UNAVAILABLE else logging.INFO
        fields = self.summary.as_log()
        report = self.report
        if report is not None:
            fields["model"] = report.model
            fields["barge_ins"] = report.barge_ins
            fields["reconnects"] = report.reconnects
            fields["handovers"] = report.handovers
            fields["levels"] = report.levels
            if report.cost is not None:
                fields["cost"] = report.cost.as_dict()
        log.log(level, "call ended", extra=fields)
