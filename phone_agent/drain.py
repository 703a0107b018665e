"""Graceful drain: a deploy never cuts a call in half.

On SIGTERM (or the first Ctrl-C) the server keeps listening but stops taking calls:

1. `/readyz` answers 503 at once, so the load balancer stops sending new calls here;
2. a new voice webhook gets the busy message, or is put through to the overflow number;
3. calls in progress go on until they end, and so do streams whose webhook was answered before
   the signal (their stream token is still valid), for up to `PHONE_AGENT_DRAIN_TIMEOUT_S`;
4. at that deadline every remaining call hears a short goodbye and ends;
5. the process exits when the last call is gone.

A second SIGTERM or Ctrl-C skips the wait. Kubernetes must give the pod
`terminationGracePeriodSeconds` longer than the drain timeout plus the goodbye (infra/k8s).

uvicorn alone would close every WebSocket (1012) at the first signal; `DrainingServer` takes the
signal first and lets uvicorn shut down only once the calls are over.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

import uvicorn

log = logging.getLogger(__name__)

GOODBYE_MARGIN_S = 20.0
"""After the deadline, how long the goodbyes may take before the server stops regardless."""
STREAM_ARRIVAL_S = 10.0
"""How long after its webhook a call's stream is awaited: Twilio connects it within seconds, and
it may connect to another replica, which this one cannot see."""


class Endable(Protocol):
    def end_for_shutdown(self) -> None: ...


@dataclass
class DrainState:
    """What the app needs to know while draining (one per app)."""

    draining: bool = False
    deadline: float | None = None
    pending_streams: dict[str, float] = field(default_factory=dict)
    """Webhooks answered (CallSid → when to stop waiting, monotonic) whose stream has not come."""

    def begin(self, timeout_s: float, now: float) -> None:
        if not self.draining:
            self.draining = True
            self.deadline = now + timeout_s

    def stream_promised(self, call_sid: str, now: float) -> None:
        self.pending_streams[call_sid] = now + STREAM_ARRIVAL_S

    def stream_arrived(self, call_sid: str) -> None:
        self.pending_streams.pop(call_sid, None)

    def awaiting_streams(self, now: float) -> bool:
        """A webhook answered before the drain may still bring its stream."""
        for sid, expires in list(self.pending_streams.items()):
            if expires <= now:
                del self.pending_streams[sid]
        return bool(self.pending_streams)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM and the first SIGINT draining calls (module docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: DrainState,
        *,
        timeout_s: float,
        active_calls: Callable[[], int],
        calls: Callable[[], Iterable[Endable]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout_s = timeout_s
        self._active_calls = active_calls
        self._calls = calls
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self._loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.drain.begin(self.timeout_s, self._clock())
        log.warning(
            "draining: no new calls; %d in progress may continue for up to %g s",
            self._active_calls(),
            self.timeout_s,
            extra={"event": "server.drain", "active_calls": self._active_calls()},
        )
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = self.drain.deadline or self._clock()
        # Polled on uvicorn's own 0.1 s tick: pending streams expire by time, not by an event.
        while self._clock() < deadline and self._busy():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if self._busy():
            calls = list(self._calls())
            log.warning(
                "drain deadline reached: ending %d call(s) with a goodbye",
                len(calls),
                extra={"event": "server.drain", "stage": "deadline", "active_calls": len(calls)},
            )
            for call in calls:
                call.end_for_shutdown()
            stop_at = self._clock() + GOODBYE_MARGIN_S
            while self._active_calls() and self._clock() < stop_at:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        log.info("drained: shutting down", extra={"event": "server.drain", "stage": "done"})
        self.should_exit = True

    def _busy(self) -> bool:
        return self._active_calls() > 0 or self.drain.awaiting_streams(self._clock())
