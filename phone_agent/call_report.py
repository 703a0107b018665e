"""One call as the business sees it: the record `call_store` keeps and `calls show` prints.

Pure data. Times within a call are milliseconds since its stream started (the call clock the
replay timeline uses too); `started_at` is wall-clock UTC.

A turn's latency is read as the caller lives it: *caller stopped speaking* (an energy detector on
the caller's audio, in audio time) → *first agent audio sent* to Twilio → *first agent audio
heard* (confirmed by a mark echo). A turn the model started without the caller speaking (a
greeting, a re-prompt) has no `caller_stopped_ms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from phone_agent.pricing import CallCost


@dataclass(frozen=True)
class ToolUse:
    name: str
    status: str
    latency_ms: float
    at_ms: float
    """When the model asked for it (call clock)."""


@dataclass(frozen=True)
class TurnReport:
    index: int
    generation: int
    caller_stopped_ms: float | None
    first_sent_ms: float
    first_heard_ms: float | None
    sent_ms: float
    heard_ms: float
    interrupted: bool
    interrupt_to_clear_ms: float | None = None
    tools: tuple[ToolUse, ...] = ()

    @property
    def sent_latency_ms(self) -> float | None:
        """Caller stopped → first audio sent."""
        if self.caller_stopped_ms is None:
            return None
        return self.first_sent_ms - self.caller_stopped_ms

    @property
    def heard_latency_ms(self) -> float | None:
        """Caller stopped → first audio heard."""
        if self.caller_stopped_ms is None or self.first_heard_ms is None:
            return None
        return self.first_heard_ms - self.caller_stopped_ms

    def as_log(self) -> dict[str, Any]:
        return {
            "turn": self.index,
            "generation": self.generation,
            "caller_stopped_ms": _r(self.caller_stopped_ms),
            "first_sent_ms": _r(self.first_sent_ms),
            "first_heard_ms": _r(self.first_heard_ms),
            "sent_latency_ms": _r(self.sent_latency_ms),
            "heard_latency_ms": _r(self.heard_latency_ms),
            "sent_ms": _r(self.sent_ms),
            "heard_ms": _r(self.heard_ms),
            "interrupted": self.interrupted,
            "interrupt_to_clear_ms": _r(self.interrupt_to_clear_ms, 2),
            "tools": [
                {"name": t.name, "status": t.status, "latency_ms": _r(t.latency_ms, 1)}
                for t in self.tools
            ],
        }


@dataclass(frozen=True)
class CallReport:
    call_sid: str
    started_at: datetime
    duration_s: float
    model: str
    end_reason: str | None
    detail: str = ""
    caller_masked: str = ""
    caller_ref: str | None = None
    """Keyed hash of the caller's number (`encryption.DataCipher.caller_ref`): lets `forget` find
    the record; None without a data key."""
    prewarmed: bool = False
    reconnects: int = 0
    handovers: int = 0
    barge_ins: int = 0
    cost: CallCost | None = None
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    turns: tuple[TurnReport, ...] = ()
    transcript: tuple[tuple[str, str], ...] = ()
    """What the caller said and heard; kept (sealed) only with a data key."""


def caller_stopped_before(speech_ends_ms: Sequence[float], first_sent_ms: float) -> float | None:
    """The last moment the caller stopped speaking before a turn's first audio was sent."""
    return max((end for end in speech_ends_ms if end <= first_sent_ms), default=None)


def _r(value: float | None, digits: int = 0) -> float | None:
    if value is None:
        return None
    return round(value, digits) if digits else float(round(value))
