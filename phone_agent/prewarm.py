"""First words fast: open the model session while the phone rings.

Twilio calls the voice webhook before it opens the media stream; opening the model connection only
when the stream arrives adds the whole connection set-up to the caller's first wait. So the
webhook asks the `PrewarmPool` to open a session for that CallSid (and, if the agent greets first,
to send the greeting instruction at once); the media stream then *adopts* it, with the greeting's
audio already buffered. A session nobody adopts within `ttl_s` is closed. If pre-warming failed or
the stream comes for an unknown CallSid, the bridge opens a session itself, as before.

Each pre-warmed session lives in a task of the app's task group (the stream does not exist yet);
the adopting call's `ModelLink` releases it (cancels that task) when the call retires the session.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from phone_agent import gemini
from phone_agent.model_link import ModelConnect

log = logging.getLogger(__name__)


@dataclass
class WarmSession:
    """An open session waiting for (or adopted by) its call; `events` buffers what it said."""

    call_sid: str
    session: gemini.ModelSession
    events: MemoryObjectReceiveStream[gemini.ModelEvent]
    greeted: bool
    opened_at: float
    _holder: anyio.CancelScope

    def release(self) -> None:
        """Close the session (its holder task ends)."""
        self._holder.cancel()


@dataclass
class _Pending:
    ready: anyio.Event = field(default_factory=anyio.Event)
    warm: WarmSession | None = None
    ttl: anyio.CancelScope | None = None
    adopted: bool = False


class PrewarmPool:
    """Sessions opened at the webhook, keyed by CallSid, for the media stream to adopt."""

    def __init__(
        self,
        connect: ModelConnect,
        group: anyio.abc.TaskGroup,
        *,
        greeting: str = "",
        ttl_s: float = 30.0,
        max_pending: int = 200,
        clock: Callable[[], float],
    ) -> None:
        self._connect = connect
        self._group = group
        self.greeting = greeting
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self.opened = 0
        self.adopted = 0
        self.expired = 0

    def start(self, call_sid: str) -> None:
        """Begin opening a session for `call_sid` (no-op if one is already on its way)."""
        if not call_sid or call_sid in self._pending or len(self._pending) >= self.max_pending:
            return
        pending = _Pending()
        self._pending[call_sid] = pending
        self._group.start_soon(self._hold, call_sid, pending)

    async def take(self, call_sid: str, *, wait_s: float = 10.0) -> WarmSession | None:
        """The pre-warmed session for `call_sid`, once open; None if there is none or it failed."""
        pending = self._pending.get(call_sid)
        if pending is None or pending.adopted:
            return None
        with anyio.move_on_after(wait_s):
            await pending.ready.wait()
        warm = pending.warm
        if warm is None:
            return None
        pending.adopted = True
        if pending.ttl is not None:
            pending.ttl.deadline = math.inf
        self.adopted += 1
        return warm

    async def _hold(self, call_sid: str, pending: _Pending) -> None:
        try:
            with anyio.CancelScope() as holder, anyio.move_on_after(self.ttl_s) as ttl:
                pending.ttl = ttl
                try:
                    await self._serve(call_sid, pending, holder)
                except gemini.ModelSessionClosed as exc:
                    log.warning(
                        "pre-warming failed: %s",
                        exc,
                        extra={"event": "prewarm", "call_sid": call_sid},
                    )
                except Exception:
                    # A background task of the whole app: a failure here must not take it down.
                    log.exception(
                        "pre-warming failed", extra={"event": "prewarm", "call_sid": call_sid}
                    )
            if ttl.cancelled_caught and not pending.adopted:
                self.expired += 1
                log.info(
                    "pre-warmed session expired", extra={"event": "prewarm", "call_sid": call_sid}
                )
        finally:
            pending.ready.set()
            self._pending.pop(call_sid, None)
            if pending.warm is not None and not pending.adopted:
                pending.warm.events.close()

    async def _serve(self, call_sid: str, pending: _Pending, holder: anyio.CancelScope) -> None:
        async with self._connect() as session:
            self.opened += 1
            if self.greeting:
                await session.send_text(self.greeting)
            send, receive = anyio.create_memory_object_stream[gemini.ModelEvent](1024)
            # From here the receive end is the adopter's to close, or `_hold`'s if none comes.
            pending.warm = WarmSession(
                call_sid, session, receive, bool(self.greeting), self._clock(), holder
            )
            pending.ready.set()
            async with send:
                async for event in session.events():
                    await send.send(event)
