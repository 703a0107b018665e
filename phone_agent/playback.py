"""What the caller heard, and barge-in: the playback tracker, sans-I/O.

Twilio plays the agent's audio from a buffer and echoes each `mark` once the audio queued before it
has *played*. It also echoes every pending mark when we send `clear`, and the echo does not say
which of the two happened. So:

- Every model turn is a *generation*. Marks are named `g{generation}:m{seq}:{cumulative_ms}`: a mark
  goes out after the first chunk of a generation (to time "first audio heard" precisely), then
  whenever `mark_interval_ms` more audio has been sent, and once more at the end of the turn.
- On `interrupted` the bridge sends `clear` at once. Every generation with audio still unconfirmed
  is then *cleared*: echoes of its marks that arrive after the clear are ignored, because Twilio
  produces them for cleared audio too. The heard position of a cleared generation is therefore the
  last mark echoed before the clear: a lower bound, short by at most one mark interval plus one
  network round trip.
- Audio of the interrupted generation that the model still sends after `interrupted` (until its
  `turnComplete`) is dropped: `accepts_audio()` is False in that window.
- Gemini generates faster than real time, so an answer may be fully generated while the phone
  still plays it; the caller talking over it then produces no `interrupted`. The bridge reports
  the caller's speech (Gemini's input transcription) with `on_talked_over`, which clears the rest.

The tracker does no I/O and reads no clock: callers pass `now` (seconds, monotonic) and act on the
returned commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Mark names carry whole milliseconds, so heard and sent may differ by less than this.
_ROUNDING_MS = 1.0
_MARK_NAME = re.compile(r"g(\d{1,9}):m(\d{1,9}):(\d{1,12})")


@dataclass(frozen=True)
class SendMark:
    name: str


@dataclass(frozen=True)
class SendClear:
    pass


Command = SendMark | SendClear


@dataclass
class TurnPlayback:
    """Playback of one model turn (generation) as far as the caller's phone reported it."""

    generation: int
    first_sent_at: float
    sent_ms: float = 0.0
    heard_ms: float = 0.0
    first_heard_at: float | None = None
    last_heard_at: float | None = None
    interrupted: bool = False
    cleared: bool = False
    ended: bool = False
    marks_sent: int = 0

    @property
    def unheard_ms(self) -> float:
        return max(0.0, self.sent_ms - self.heard_ms)

    @property
    def fully_heard(self) -> bool:
        return self.ended and not self.cleared and self.unheard_ms < _ROUNDING_MS


@dataclass(frozen=True)
class MarkOutcome:
    """A mark echo that moved a turn's heard position (stale echoes produce none)."""

    turn: TurnPlayback
    first_audio_heard: bool


class PlaybackTracker:
    """Tracks agent audio sent, marks, clears and what the caller heard, per generation."""

    def __init__(self, *, mark_interval_ms: float = 100.0) -> None:
        self.mark_interval_ms = mark_interval_ms
        self.turns: list[TurnPlayback] = []
        self._by_generation: dict[int, TurnPlayback] = {}
        self._current: TurnPlayback | None = None
        self._generation = 0
        self._marked_ms = 0.0
        self._discarding = False
        self._issued: dict[str, float] = {}
        """Marks sent and not yet echoed: only these can confirm playback."""

    @property
    def current(self) -> TurnPlayback | None:
        """The generation whose audio is being sent now, if any."""
        return self._current

    def accepts_audio(self) -> bool:
        """False between `interrupted` and the model's `turnComplete`: late audio is dropped."""
        return not self._discarding

    def on_audio_sent(self, ms: float, now: float) -> list[Command]:
        """`ms` of agent audio went to Twilio. Returns the marks to send after it."""
        if self._discarding:
            raise RuntimeError("audio of an interrupted generation must be dropped, not sent")
        if ms <= 0:
            return []
        turn = self._current
        first = turn is None
        if turn is None:
            self._generation += 1
            turn = TurnPlayback(generation=self._generation, first_sent_at=now)
            self.turns.append(turn)
            self._by_generation[turn.generation] = turn
            self._current = turn
            self._marked_ms = 0.0
        turn.sent_ms += ms
        if first or turn.sent_ms - self._marked_ms >= self.mark_interval_ms:
            return [self._mark(turn)]
        return []

    def on_turn_complete(self, now: float) -> list[Command]:
        """The model finished its turn (normally, or after an interruption)."""
        if self._discarding:
            self._discarding = False
            return []
        turn = self._current
        self._current = None
        if turn is None:
            return []
        turn.ended = True
        if turn.sent_ms > self._marked_ms:
            return [self._mark(turn)]
        return []

    def on_interrupted(self, now: float) -> list[Command]:
        """The caller barged in: clear Twilio's buffer if anything may still be playing."""
        turn = self._current
        self._current = None
        self._discarding = True
        if turn is not None:
            turn.interrupted = True
            turn.ended = True
        pending = [t for t in self.turns if not t.cleared and t.unheard_ms >= _ROUNDING_MS]
        if turn is None and not pending:
            return []
        for t in pending:
            t.cleared = True
        return [SendClear()]

    def on_talked_over(self, now: float) -> tuple[list[Command], TurnPlayback | None]:
        """The caller spoke while a *finished* answer was still playing (Gemini had generated it
        all, so it sends no `interrupted`): clear what is left of it. Returns the commands and the
        cut turn. Audio of the model's next turn is accepted as usual."""
        if self._current is not None:
            return [], None
        pending = [t for t in self.turns if not t.cleared and t.unheard_ms >= _ROUNDING_MS]
        if not pending:
            return [], None
        for t in pending:
            t.cleared = True
            t.interrupted = True
        return [SendClear()], pending[-1]

    def on_mark(self, name: str, now: float) -> MarkOutcome | None:
        """A mark echo from Twilio. Returns what it confirmed, or None for stale or foreign ones."""
        cumulative = self._issued.pop(name, None)
        match = _MARK_NAME.fullmatch(name)
        if cumulative is None or match is None:
            return None  # never sent, or echoed twice
        turn = self._by_generation.get(int(match.group(1)))
        if turn is None or turn.cleared:
            return None
        cumulative_ms = cumulative
        if cumulative_ms <= turn.heard_ms and turn.first_heard_at is not None:
            return None
        first = turn.first_heard_at is None
        if first:
            # The echo comes when the first chunk has finished playing: playback began earlier.
            turn.first_heard_at = max(turn.first_sent_at, now - cumulative_ms / 1000.0)
        turn.heard_ms = max(turn.heard_ms, cumulative_ms)
        turn.last_heard_at = now
        return MarkOutcome(turn=turn, first_audio_heard=first)

    @property
    def playing(self) -> bool:
        """Agent audio is being sent, or sent and not yet confirmed heard."""
        return self._current is not None or any(
            not t.cleared and t.unheard_ms >= _ROUNDING_MS for t in self.turns
        )

    def unheard_ms(self) -> float:
        """Audio sent but not yet confirmed played (upper bound of what Twilio holds)."""
        return sum(t.unheard_ms for t in self.turns if not t.cleared)

    def _mark(self, turn: TurnPlayback) -> SendMark:
        turn.marks_sent += 1
        self._marked_ms = turn.sent_ms
        name = f"g{turn.generation}:m{turn.marks_sent}:{round(turn.sent_ms)}"
        self._issued[name] = float(round(turn.sent_ms))
        return SendMark(name)
