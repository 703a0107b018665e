"""When a reply's messages go out: on the wall clock, or on the clock of the caller's audio.

A reply places each message at a *position*, in milliseconds from the reply's start: the audio
before a chunk, a recorded message's offset, the end of a pause. `speed` compresses positions:
position `x` is due at `origin + x / speed` on the connection's clock.

- ``"wall"``: the event loop's time. A reply's origin is when it starts.
- ``"audio"``: the caller audio received on the connection (`EmulatorSession.audio_in_ms`). A
  reply's origin is the audio time of its trigger (for the end of speech, when the VAD detected
  it; for text or a tool response, the audio received when it arrived), or the end of the previous
  reply if that is later. Twilio streams audio without pause, silence included, so both ends share
  this clock, and a reply goes out at the same points of the call however fast the audio arrives.
  A connection that stops sending audio stalls the reply until audio flows again.

A point that is late (after waiting for a tool response) is due at once, and the points after it
keep their spacing. The caller's speech stops a reply: on the wall clock at once; on the audio
clock at the audio time the speech started, so what was due before that still goes out, and where
a reply is cut does not depend on how the reader and the reply happen to interleave.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Literal, Protocol

ClockName = Literal["wall", "audio"]
CLOCKS: tuple[ClockName, ...] = ("wall", "audio")


class Changes:
    """Wakes every waiter on each change; waiters re-check their condition (no polling)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, deadline: float | None = None) -> bool:
        """Wait for the next change (True) or until the loop's time reaches `deadline` (False)."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class Clock(Protocol):
    """A connection's clock, in milliseconds."""

    stops_at_once: bool
    """Whether the caller's speech stops a reply at once, rather than where it started."""

    def now(self) -> float: ...

    def deadline(self, at: float) -> float | None:
        """The loop time at which `at` comes, or None if only a change (more audio) brings it."""
        ...

    def event_time(self, audio_ms: float) -> float:
        """The time of a client event that happened after `audio_ms` of caller audio."""
        ...

    def reply_origin(self, trigger_at: float, previous_end: float) -> float:
        """Where a reply starts, given its trigger's time and where the previous reply ended."""
        ...


class WallClock:
    """The event loop's time."""

    stops_at_once = True

    def now(self) -> float:
        return asyncio.get_running_loop().time() * 1000.0

    def deadline(self, at: float) -> float | None:
        return at / 1000.0

    def event_time(self, audio_ms: float) -> float:
        return self.now()

    def reply_origin(self, trigger_at: float, previous_end: float) -> float:
        return self.now()


class AudioClock:
    """The caller audio received on a connection, read through `audio_ms()`."""

    stops_at_once = False

    def __init__(self, audio_ms: Callable[[], float]) -> None:
        self._audio_ms = audio_ms

    def now(self) -> float:
        return self._audio_ms()

    def deadline(self, at: float) -> float | None:
        return None

    def event_time(self, audio_ms: float) -> float:
        return audio_ms

    def reply_origin(self, trigger_at: float, previous_end: float) -> float:
        return max(trigger_at, previous_end)


def make_clock(name: ClockName, audio_ms: Callable[[], float]) -> Clock:
    return AudioClock(audio_ms) if name == "audio" else WallClock()


async def wait_until(clock: Clock, changes: Changes, at: float) -> None:
    """Wait until `clock` reaches `at`; `changes` must be notified when the clock may have moved."""
    while clock.now() < at:
        if not await changes.wait(clock.deadline(at)):
            return


class Interrupted(Exception):
    """The caller cut in before the reply reached the point it was waiting for."""


class Pacer:
    """Paces one reply on a clock and stops it where the caller cut in.

    `changes` must be notified whenever the clock may have moved (audio clock: each audio chunk) and
    whenever something `hold` waits for happens; `stop` notifies it itself.
    """

    def __init__(self, clock: Clock, changes: Changes, origin: float, speed: float) -> None:
        self._clock = clock
        self._changes = changes
        self._base = origin
        self._speed = speed
        self.origin = origin
        self.reached = origin
        """The clock time of the latest point the reply has passed."""
        self.stopped_at: float | None = None
        """When the caller's speech started, on the clock, once it has."""

    def stop(self, at: float) -> None:
        """The caller started speaking at `at`: the reply stops (see the module docstring)."""
        if self.stopped_at is None or at < self.stopped_at:
            self.stopped_at = at
        self._changes.notify()

    async def until(self, position: float) -> float:
        """Wait until `position` is due; return the clock time it was due at.

        Raises `Interrupted` if the caller has cut in before it.
        """
        due = self._base + position / self._speed
        if due < self.reached:  # late: due now, and what follows moves with it
            self._base += self.reached - due
            due = self.reached
        await asyncio.sleep(0)  # always yield, so the reader can act between two messages
        timed_out = False
        while True:
            self._check(due)
            if timed_out or self._clock.now() >= due:
                break
            timed_out = not await self._changes.wait(self._clock.deadline(due))
        self.reached = due
        return due

    async def hold(self, answered: Callable[[], float | None]) -> None:
        """Wait for something outside the reply (tool responses); later points are due no earlier.

        `answered()` is the clock time it happened, or None while it has not. Raises `Interrupted`
        if the caller cut in before it happened.
        """
        while (at := answered()) is None:
            self._check(math.inf)
            await self._changes.wait()
        if self.stopped_at is not None and at >= self.stopped_at:
            raise Interrupted
        self.reached = max(self.reached, at)

    def check(self) -> float:
        """Raise `Interrupted` if the caller cut in before the latest point passed; return it."""
        self._check(self.reached)
        return self.reached

    def _check(self, due: float) -> None:
        if self.stopped_at is not None and (self._clock.stops_at_once or due >= self.stopped_at):
            raise Interrupted
