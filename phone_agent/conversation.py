"""Turn-level conversation logic, sans-I/O: silence, keypad digits, and what the caller heard.

Nothing here does I/O or reads a clock; the bridge feeds `now` (seconds) and acts on the results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SilenceAction(enum.Enum):
    REPROMPT = "reprompt"
    HANG_UP = "hang_up"


class SilenceWatch:
    """Re-prompt after `reprompt_s` of silence on both sides, end the call after `hang_up_s`.

    Silence counts from the later of: the caller's last speech, the end of the agent's last audio
    as heard. The re-prompt is offered once until the caller speaks again (the agent's own
    re-prompt does not earn another one), so a silent line gets one re-prompt, then a goodbye.
    """

    def __init__(self, *, reprompt_s: float, hang_up_s: float, now: float) -> None:
        self.reprompt_s = reprompt_s
        self.hang_up_s = hang_up_s
        self._since = now
        self._reprompted = False
        self._hung_up = False

    def activity(self, now: float) -> None:
        """The caller spoke (or pressed a key)."""
        self._since = max(self._since, now)
        self._reprompted = False

    def check(self, now: float, *, agent_busy: bool) -> SilenceAction | None:
        if agent_busy:
            self._since = max(self._since, now)
            return None
        quiet = now - self._since
        if not self._hung_up and self.hang_up_s > 0 and quiet >= self.hang_up_s:
            self._hung_up = True
            return SilenceAction.HANG_UP
        if not self._reprompted and self.reprompt_s > 0 and quiet >= self.reprompt_s:
            self._reprompted = True
            return SilenceAction.REPROMPT
        return None


@dataclass
class DtmfBuffer:
    """Collects keypad digits into one message: sent `pause_s` after the last digit, or at `#`."""

    pause_s: float = 1.5
    digits: list[str] = field(default_factory=list)
    last_at: float = 0.0

    def press(self, digit: str, now: float) -> str | None:
        if digit == "#":
            return self.take() or "#"
        self.digits.append(digit)
        self.last_at = now
        return None

    def due(self, now: float) -> str | None:
        if self.digits and now - self.last_at >= self.pause_s:
            return self.take()
        return None

    def take(self) -> str:
        text = "".join(self.digits)
        self.digits.clear()
        return text


def dtmf_message(digits: str) -> str:
    return f"[The caller typed {' '.join(digits)} on the phone keypad.]"


@dataclass
class TurnTranscript:
    """The agent's words in one turn, each stamped with how much audio had been sent before it."""

    pieces: list[tuple[float, str]] = field(default_factory=list)

    def add(self, sent_ms: float, text: str) -> None:
        self.pieces.append((sent_ms, text))

    def text(self) -> str:
        return " ".join("".join(t for _, t in self.pieces).split())

    def heard(self, heard_ms: float) -> str:
        """The words whose audio had started playing by `heard_ms` (a transcript piece arrives
        with the audio chunk it describes)."""
        return " ".join("".join(t for at, t in self.pieces if at < heard_ms).split())


def interrupted_note(heard: str) -> str:
    """Told to the model after a barge-in: what the caller actually heard of its last answer."""
    if not heard:
        return "[The caller interrupted before hearing any of your last answer.]"
    return (
        f"[The caller interrupted you. They heard only: «{heard}». They did not hear the rest of "
        "that answer; do not assume they did.]"
    )


def resumed_note(heard: str) -> str:
    """Told to a new session after the line to the model dropped mid-answer."""
    heard_part = f" The caller heard: «{heard}»." if heard else ""
    return (
        "[Our connection dropped while you were answering." + heard_part + " Continue from where "
        "they stopped hearing you, briefly, without starting over or greeting again.]"
    )
