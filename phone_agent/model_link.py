"""The call's line to the model, across model sessions: seamless handover and recovery.

Gemini closes every connection after about ten minutes (announced by `goAway`) and drops some with
1011 or 1006. The caller must not notice. `ModelLink` keeps one *current* session and:

- on `goAway`, opens a replacement with the latest resumption handle while the old one still
  serves, and switches at a quiet moment: the model not speaking, no tool call outstanding, and
  the caller silent for `quiet_ms`. If the old session closes first, it switches at once.
- on an unexpected close, reconnects with the latest handle, with backoff (`retry_delays_s`);
  when every attempt fails it raises `ModelUnavailable` so the bridge can apologise and hand the
  call back to Twilio (never dead air).
- while no session is current, buffers caller audio (up to `buffer_ms`) and sends it to the next.
- keeps the caller's current utterance (audio since they started talking, until the model
  answers), and gives it to the new session at a switch, so an utterance split by a switch is
  still heard whole and answered once.

Each session runs in its own task, inside the call's task group and its own cancel scope, so a
retired session is closed by cancelling that scope, and nothing outlives the call. The bridge
reads one stream of events (`events()`), in which a switch after a drop shows up as `Resumed`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.genai import types

from phone_agent import gemini
from phone_agent.audio import pcm16_rms

if TYPE_CHECKING:
    from phone_agent.prewarm import WarmSession

log = logging.getLogger(__name__)

# A pseudo server message the link gives the recording tap when a session drops.
CLOSED_MARKER = "phoneAgentConnectionClosed"
# Caller audio quieter than this (RMS, dBFS) counts as silence when choosing a moment to switch.
QUIET_DBFS = -45.0
# A pause this long starts a new utterance; one this long after it, with no answer, forgets it.
UTTERANCE_GAP_MS = 700.0
UTTERANCE_FORGET_MS = 3000.0
UTTERANCE_MAX_MS = 10_000.0
_PCM16K_BYTES_PER_MS = 32


class ModelConnect(Protocol):
    """Opens a model session, resuming `resumption_handle` when given."""

    def __call__(
        self, *, resumption_handle: str | None = None, extra_instruction: str = ""
    ) -> AbstractAsyncContextManager[gemini.ModelSession]: ...


class ModelUnavailable(Exception):
    """The model could not be reached again; the call must be handed back to Twilio."""


@dataclass(frozen=True)
class Resumed:
    """A new session took over after the previous one dropped. `mid_turn`: it dropped while the
    model was speaking, so that turn ended without its `turnComplete`."""

    mid_turn: bool
    attempts: int


@dataclass(frozen=True)
class HandedOver:
    """A planned switch (after `goAway`) completed."""

    waited_ms: float


@dataclass(frozen=True)
class _Dropped:
    error: gemini.ModelSessionClosed


LinkEvent = gemini.ModelEvent | Resumed | HandedOver


@dataclass
class _Session:
    number: int
    session: gemini.ModelSession
    scope: anyio.CancelScope
    handle: str | None = None
    """The resumption handle it was opened with: it holds the conversation up to that point."""


class ModelLink:
    """See the module docstring. Create it inside the call's task group; `await open()` first."""

    def __init__(
        self,
        connect: ModelConnect,
        group: anyio.abc.TaskGroup,
        *,
        clock: Callable[[], float],
        retry_delays_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
        buffer_ms: float = 5000.0,
        quiet_ms: float = 200.0,
        on_message: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._group = group
        self._clock = clock
        self.retry_delays_s = retry_delays_s
        self.buffer_ms = buffer_ms
        self.quiet_ms = quiet_ms
        self._on_message = on_message
        send, receive = anyio.create_memory_object_stream[tuple[int, object]](256)
        self._send: MemoryObjectSendStream[tuple[int, object]] = send
        self._receive: MemoryObjectReceiveStream[tuple[int, object]] = receive
        self._sessions: dict[int, _Session] = {}
        self._current: _Session | None = None
        self._replacement: _Session | None = None
        self._preparing = False
        self._handover_since: float | None = None
        self._numbers = 0
        self.handle: str | None = None
        self.sessions_opened = 0
        self.reconnects = 0
        self.handovers = 0
        self._buffer: deque[bytes] = deque()
        self._buffered_ms = 0.0
        self.dropped_audio_ms = 0.0
        self._turn_active = False
        self._tools_pending: set[str] = set()
        self._caller_quiet_ms = math.inf
        self._utterance: deque[bytes] = deque()
        self._utterance_ms = 0.0

    def close(self) -> None:
        """Release the event stream (after the call's task group has finished)."""
        self._send.close()
        self._receive.close()

    # -- opening sessions -----------------------------------------------------------------------

    async def open(self, warm: WarmSession | None = None) -> None:
        """Open the first session, or adopt `warm`, one pre-opened while the phone rang.
        Raises `gemini.ModelSessionClosed` if it cannot be opened."""
        if warm is not None:
            self._numbers += 1
            self._current = await self._group.start(self._adopted_task, self._numbers, warm)
            self.sessions_opened += 1
            return
        self._current = await self._start_session()

    async def _adopted_task(
        self, number: int, warm: WarmSession, *, task_status: anyio.abc.TaskStatus[_Session]
    ) -> None:
        with anyio.CancelScope() as scope:
            entry = _Session(number, warm.session, scope)
            self._sessions[number] = entry
            warm.session.on_message = self._on_message
            task_status.started(entry)
            try:
                async with warm.events:
                    async for event in warm.events:
                        await self._send.send((number, event))
                closed = gemini.ModelSessionClosed(None, "pre-warmed session ended")
                await self._send.send((number, _Dropped(closed)))
            finally:
                warm.release()
                self._sessions.pop(number, None)

    async def _start_session(self) -> _Session:
        self._numbers += 1
        number = self._numbers
        session: _Session = await self._group.start(self._session_task, number, self.handle)
        self.sessions_opened += 1
        return session

    async def _session_task(
        self,
        number: int,
        handle: str | None,
        *,
        task_status: anyio.abc.TaskStatus[_Session],
    ) -> None:
        with anyio.CancelScope() as scope:
            started = False
            try:
                async with self._connect(resumption_handle=handle) as session:
                    session.on_message = self._on_message
                    entry = _Session(number, session, scope, handle)
                    self._sessions[number] = entry
                    task_status.started(entry)
                    started = True
                    async for event in session.events():
                        await self._send.send((number, event))
                    raise gemini.ModelSessionClosed(None, "event stream ended")
            except gemini.ModelSessionClosed as exc:
                if not started:
                    raise
                if self._on_message is not None:
                    # For call recordings: where the connection failed, so replays can fail it too.
                    self._on_message({CLOSED_MARKER: {"code": exc.code}})
                await self._send.send((number, _Dropped(exc)))
            finally:
                self._sessions.pop(number, None)

    def _retire(self, entry: _Session) -> None:
        entry.scope.cancel()
        self._sessions.pop(entry.number, None)

    # -- sending --------------------------------------------------------------------------------

    async def send_audio(self, pcm16k: bytes) -> None:
        self._note_caller_level(pcm16k)
        current = self._current
        if current is None:
            self._hold(pcm16k)
            return
        try:
            await current.session.send_audio(pcm16k)
        except gemini.ModelSessionClosed:
            self._hold(pcm16k)  # the drop arrives as an event; the audio waits for the next

    async def send_text(self, text: str) -> None:
        if self._current is not None:
            await self._current.session.send_text(text)

    async def send_context(self, text: str) -> None:
        """Add `text` to the model's context without asking it to reply."""
        if self._current is not None:
            await self._current.session.send_context(text)

    async def send_tool_responses(self, responses: list[types.FunctionResponse]) -> None:
        for response in responses:
            self._tools_pending.discard(response.id or "")
        if self._current is not None:
            await self._current.session.send_tool_responses(responses)

    def _hold(self, pcm16k: bytes) -> None:
        self._buffer.append(pcm16k)
        self._buffered_ms += len(pcm16k) / _PCM16K_BYTES_PER_MS
        while self._buffered_ms > self.buffer_ms and self._buffer:
            dropped = self._buffer.popleft()
            ms = len(dropped) / _PCM16K_BYTES_PER_MS
            self._buffered_ms -= ms
            self.dropped_audio_ms += ms

    async def _flush_held(self) -> None:
        """Give a new current session the caller's unanswered utterance, else the held audio."""
        current = self._current
        if current is None:
            return
        replay = list(self._utterance) if self._utterance else list(self._buffer)
        self._buffer.clear()
        self._buffered_ms = 0.0
        for chunk in replay:
            await current.session.send_audio(chunk)

    @property
    def caller_speaking(self) -> bool:
        """The caller's audio was loud within the last `quiet_ms`."""
        return self._caller_quiet_ms < self.quiet_ms

    def _note_caller_level(self, pcm16k: bytes) -> None:
        whole = pcm16k[: len(pcm16k) // 2 * 2]
        if not whole:
            return
        rms = pcm16_rms(whole)  # C speed: this runs on every caller frame
        dbfs = 20 * math.log10(max(rms, 1e-9) / 32768.0)
        ms = len(whole) / 2 / 16.0
        loud = dbfs >= QUIET_DBFS
        if loud and self._caller_quiet_ms >= UTTERANCE_GAP_MS:
            self._forget_utterance()  # a new utterance begins
        self._caller_quiet_ms = 0.0 if loud else self._caller_quiet_ms + ms
        if self._caller_quiet_ms >= UTTERANCE_FORGET_MS:
            self._forget_utterance()
        elif loud or self._utterance:
            self._utterance.append(pcm16k)
            self._utterance_ms += ms
            while self._utterance_ms > UTTERANCE_MAX_MS and self._utterance:
                self._utterance_ms -= len(self._utterance.popleft()) / _PCM16K_BYTES_PER_MS

    def _forget_utterance(self) -> None:
        self._utterance.clear()
        self._utterance_ms = 0.0

    # -- events ---------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Events of the current session, with handovers and recoveries folded in."""
        async for number, item in self._receive:
            current = self._current
            if isinstance(item, _Dropped):
                if current is not None and number == current.number:
                    async for event in self._recover(item.error):
                        yield event
                elif self._replacement is not None and number == self._replacement.number:
                    self._replacement = None
                continue
            if isinstance(item, gemini.ResumptionUpdate):
                if item.resumable and item.handle and (current is None or number == current.number):
                    self.handle = item.handle
                    self._refresh_replacement()
                continue
            if current is None or number != current.number:
                continue  # a retired session's last words, or a replacement's setup chatter
            event = cast(gemini.ModelEvent, item)
            self._track(event)
            if isinstance(event, gemini.GoAway):
                self._begin_handover()
            yield event
            if self._replacement is not None and self._quiet():
                yield self._switch_planned()

    def _track(self, event: object) -> None:
        if isinstance(event, gemini.ModelAudio | gemini.OutputTranscript):
            self._turn_active = True
            self._forget_utterance()  # answered
        elif isinstance(event, gemini.TurnComplete):
            self._turn_active = False
        elif isinstance(event, gemini.ToolCallRequest):
            self._tools_pending.update(call.id for call in event.calls)
        elif isinstance(event, gemini.ToolCallCancelled):
            self._tools_pending.difference_update(event.ids)

    def _quiet(self) -> bool:
        return (
            not self._turn_active
            and not self._tools_pending
            and self._caller_quiet_ms >= self.quiet_ms
        )

    def check_handover(self) -> HandedOver | None:
        """Called as caller audio flows: switch if a replacement waits and all is quiet."""
        if self._replacement is not None and self._quiet():
            return self._switch_planned()
        return None

    def _begin_handover(self) -> None:
        if self._preparing or self._replacement is not None:
            return
        self._preparing = True
        self._handover_since = self._clock()
        self._group.start_soon(self._prepare_replacement)

    async def _prepare_replacement(self) -> None:
        try:
            entry = await self._start_session()
        except gemini.ModelSessionClosed as exc:
            log.warning("replacement session failed: %s", exc, extra={"event": "model.handover"})
            return
        finally:
            self._preparing = False
        if entry.handle != self.handle:
            self._retire(entry)  # stale before it was ready: the conversation moved on
            self._begin_handover()
            return
        self._replacement = entry
        log.info("replacement session ready", extra={"event": "model.handover", "stage": "ready"})

    def _refresh_replacement(self) -> None:
        """The conversation moved on since the replacement was opened: it would resume an older
        state, so open a new one with the new handle."""
        stale = self._replacement
        if stale is not None and stale.handle != self.handle:
            self._replacement = None
            self._retire(stale)
            self._begin_handover()

    def _switch_planned(self) -> HandedOver:
        replacement = self._replacement
        assert replacement is not None
        old = self._current
        self._current, self._replacement = replacement, None
        if old is not None:
            self._retire(old)
        self.handovers += 1
        since = self._handover_since or self._clock()
        self._group.start_soon(self._flush_held)
        waited = (self._clock() - since) * 1000.0
        log.info(
            "switched to the replacement session",
            extra={"event": "model.handover", "stage": "switched", "waited_ms": round(waited)},
        )
        return HandedOver(waited_ms=waited)

    async def _recover(self, error: gemini.ModelSessionClosed) -> AsyncIterator[LinkEvent]:
        """The current session closed: take the replacement if one is ready, else reconnect."""
        mid_turn = self._turn_active
        self._turn_active = False
        self._tools_pending.clear()
        self._current = None
        if self._replacement is not None:
            self._current, self._replacement = self._replacement, None
            self.handovers += 1
            await self._flush_held()
            yield HandedOver(waited_ms=0.0)
            if mid_turn:
                yield Resumed(mid_turn=True, attempts=0)
            return
        log.warning(
            "model session dropped (code %s); resuming",
            error.code,
            extra={"event": "model.dropped", "code": error.code},
        )
        for attempt, delay in enumerate(self.retry_delays_s, start=1):
            try:
                self._current = await self._start_session()
            except gemini.ModelSessionClosed as exc:
                log.warning(
                    "reconnect attempt %d failed: %s",
                    attempt,
                    exc,
                    extra={"event": "model.reconnect", "attempt": attempt},
                )
                await anyio.sleep(delay)
                continue
            self.reconnects += 1
            await self._flush_held()
            log.info(
                "model session resumed",
                extra={
                    "event": "model.reconnect",
                    "attempt": attempt,
                    "resumed": bool(self.handle),
                },
            )
            yield Resumed(mid_turn=mid_turn, attempts=attempt)
            return
        raise ModelUnavailable(f"model unreachable after {len(self.retry_delays_s)} attempts")
