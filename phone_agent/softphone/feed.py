"""The softphone's side channel: what a softphone call's page shows beside the audio.

Twilio's media stream carries no text, so the page learns the transcript and each turn's latency
from a small read-only feed (`WS /softphone/events`). `SoftphoneFeed` holds one `CallChannel` per
call placed from the page; `SoftphoneObserver`, the call's observer, publishes to it. Calls not
placed from the page have no channel and publish nothing.

Events are JSON objects with a `type`:

- `started` — the media stream was admitted (`call_sid`).
- `transcript` — an entry of the conversation as the caller lived it (`index`, `role`: "caller" or
  "agent", `text`). An entry sent again with the same `index` replaces it: an answer talked over
  keeps only the words the caller heard.
- `turn` — the agent's first audio of a turn was heard (a mark echo): `generation`, and in ms on
  the call clock `caller_stopped_ms`, `first_sent_ms`, `first_heard_ms`, `sent_latency_ms`,
  `heard_latency_ms` (null when the agent spoke first).
- `barge_in` — the caller cut a turn short and `clear` went out: `generation`, `heard_ms`,
  `sent_ms`.
- `ended` — the call is over (`reason`, `duration_s`); the feed closes after it.

A channel keeps its history (bounded), so a page that subscribes late sees every event; it is
dropped `keep_s` after its call ended, or once its stream token could no longer be used if the
call never connected.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from phone_agent.call_report import CallReport, caller_stopped_before
from phone_agent.metrics import Metrics
from phone_agent.observer import CallObserver
from phone_agent.playback import TurnPlayback

if TYPE_CHECKING:
    from phone_agent.app import AppState
    from phone_agent.bridge import CallSummary

log = logging.getLogger(__name__)

Event = dict[str, Any]

HISTORY = 2000
"""Events a channel keeps for late subscribers (a long call's transcript fragments included)."""
SUBSCRIBER_BUFFER = 256
"""Events a subscriber may fall behind by; a slower one is disconnected (the feed is advisory)."""


@dataclass
class CallChannel:
    """One softphone call's events: its history and the pages subscribed to it."""

    call_sid: str
    opened_at: float
    history: deque[Event] = field(default_factory=lambda: deque(maxlen=HISTORY))
    started: bool = False
    ended_at: float | None = None
    _subscribers: list[MemoryObjectSendStream[Event]] = field(default_factory=list)

    def publish(self, event: Event) -> None:
        if self.ended_at is not None:
            return
        self.history.append(event)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(send)
                send.close()

    def end(self, now: float) -> None:
        if self.ended_at is not None:
            return
        self.ended_at = now
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()

    def subscribe(self) -> MemoryObjectReceiveStream[Event]:
        """A stream of every event so far, then each new one; it ends when the call has ended."""
        send, receive = anyio.create_memory_object_stream[Event](
            max_buffer_size=len(self.history) + SUBSCRIBER_BUFFER
        )
        for event in self.history:
            send.send_nowait(event)
        if self.ended_at is None:
            self._subscribers.append(send)
        else:
            send.close()
        return receive


class SoftphoneFeed:
    """The channels of the calls placed from the softphone page, by CallSid."""

    def __init__(
        self,
        *,
        unused_after_s: float = 65.0,
        keep_s: float = 120.0,
        max_channels: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unused_after_s = unused_after_s
        self.keep_s = keep_s
        self.max_channels = max_channels
        self.clock = clock
        self._channels: dict[str, CallChannel] = {}

    def open(self, call_sid: str) -> bool:
        """Make a channel for a call about to be placed; False when too many are in use."""
        self._prune()
        if len(self._channels) >= self.max_channels:
            return False
        self._channels[call_sid] = CallChannel(call_sid, opened_at=self.clock())
        return True

    def end(self, call_sid: str) -> None:
        """The call is over: its subscribers' streams end (its history stays `keep_s`)."""
        channel = self._channels.get(call_sid)
        if channel is not None:
            channel.end(self.clock())

    def channel(self, call_sid: str) -> CallChannel | None:
        self._prune()
        return self._channels.get(call_sid)

    def _prune(self) -> None:
        now = self.clock()
        for sid, channel in list(self._channels.items()):
            if channel.ended_at is not None:
                expired = now - channel.ended_at > self.keep_s
            else:
                expired = not channel.started and now - channel.opened_at > self.unused_after_s
            if expired:
                channel.end(now)
                del self._channels[sid]


# One feed per app. `AppState` is the lead's dataclass (unhashable), so feeds are found by the
# state's identity and forgotten with it.
_feeds: dict[int, SoftphoneFeed] = {}


def softphone_feed(state: AppState, *, create: bool = False) -> SoftphoneFeed | None:
    """The app's softphone feed: made by `softphone_routes` when the softphone is enabled, None
    otherwise."""
    key = id(state)
    feed = _feeds.get(key)
    if feed is None and create:
        feed = _feeds[key] = SoftphoneFeed(unused_after_s=state.settings.stream_token_ttl_s + 5.0)
        weakref.finalize(state, _feeds.pop, key, None)
    return feed


def _ms(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(round(value))


class SoftphoneObserver(CallObserver):
    """A `CallObserver` that also publishes a softphone call's events to its channel.

    For any other call (no channel: placed through Twilio, or the softphone disabled) it is
    exactly a `CallObserver`. The transcript is read from the bridge's `CallSummary`
    (`follow`) each time the bridge reports to the observer — every caller frame, 50 times a
    second — so it reaches the page within a frame of the bridge recording it.
    """

    def __init__(self, feed: SoftphoneFeed | None, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._feed = feed
        self._channel: CallChannel | None = None
        self._summary: CallSummary | None = None
        self._published: list[tuple[str, str]] = []
        self._turns_published: set[int] = set()

    def follow(self, summary: CallSummary) -> None:
        """Read the live transcript from `summary` (the bridge's, before `run`)."""
        self._summary = summary

    def _publish(self, event: Event) -> None:
        if self._channel is not None:
            self._channel.publish(event)

    def _sync_transcript(self) -> None:
        if self._channel is None or self._summary is None:
            return
        entries = self._summary.transcript
        published = self._published
        if len(entries) == len(published) and (not entries or entries[-1] == published[-1]):
            return  # the common case, every caller frame: nothing new
        for index, entry in enumerate(entries):
            if index < len(published) and published[index] == entry:
                continue
            role, text = entry
            self._publish({"type": "transcript", "index": index, "role": role, "text": text})
            if index < len(published):
                published[index] = entry
            else:
                published.append(entry)

    # -- CallObserver ------------------------------------------------------------------------

    def started(self, call_sid: str, caller_number: str | None, now: float) -> None:
        super().started(call_sid, caller_number, now)
        channel = self._feed.channel(call_sid) if self._feed is not None else None
        if channel is None or channel.started:
            return  # not a softphone call (or its token was somehow replayed: publish once)
        channel.started = True
        self._channel = channel
        self._publish({"type": "started", "call_sid": call_sid})

    def caller_audio(self, pcm: bytes) -> None:
        super().caller_audio(pcm)
        self._sync_transcript()

    def audio_sent(self, turn: TurnPlayback | None) -> None:
        super().audio_sent(turn)
        self._sync_transcript()

    def first_heard(self, turn: TurnPlayback) -> None:
        super().first_heard(turn)
        self._sync_transcript()
        if (
            self._channel is None
            or turn.first_heard_at is None
            or turn.generation in self._turns_published
        ):
            return
        self._turns_published.add(turn.generation)
        sent = self._ms(turn.first_sent_at)
        heard = self._ms(turn.first_heard_at)
        stopped = caller_stopped_before(self.speech_ends_ms, sent)
        self._publish(
            {
                "type": "turn",
                "generation": turn.generation,
                "caller_stopped_ms": _ms(stopped),
                "first_sent_ms": _ms(sent),
                "first_heard_ms": _ms(heard),
                "sent_latency_ms": _ms(None if stopped is None else sent - stopped),
                "heard_latency_ms": _ms(None if stopped is None else heard - stopped),
            }
        )

    def clear_sent(self, turn: TurnPlayback | None, now: float) -> None:
        super().clear_sent(turn, now)
        self._sync_transcript()
        self._publish(
            {
                "type": "barge_in",
                "generation": turn.generation if turn is not None else None,
                "heard_ms": _ms(turn.heard_ms) if turn is not None else None,
                "sent_ms": _ms(turn.sent_ms) if turn is not None else None,
            }
        )

    def finished(self, summary: CallSummary) -> CallReport:
        report = super().finished(summary)
        if self._channel is not None:
            self._summary = summary
            self._sync_transcript()
            self._publish(
                {"type": "ended", "reason": report.end_reason, "duration_s": report.duration_s}
            )
            if self._feed is not None:
                self._feed.end(self._channel.call_sid)
        return report
