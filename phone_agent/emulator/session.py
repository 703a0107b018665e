"""What the emulator saw and did on one connection, for tests to inspect."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phone_agent.emulator.protocol import SetupInfo
from phone_agent.emulator.script import Trigger


@dataclass(frozen=True)
class ClientRecord:
    """One normalised client event. Audio is summarised in `data` (`bytes`, `rate`, `ms`)."""

    kind: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SentRecord:
    """One message the emulator sent. Audio payloads are summarised in `data` (`bytes`, `ms`)."""

    kind: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)
    audio_ms: float = 0.0
    """The caller audio time of the message. With `clock="audio"`, a reply's messages carry the
    audio time they were due at (and `interrupted` the time the caller's speech started), which
    does not depend on how fast the audio arrived; otherwise, the caller audio received when the
    message was sent."""


@dataclass(frozen=True)
class SpeechRecord:
    """A start or end of the caller's speech, from the energy VAD or the client's activity."""

    kind: str  # "start" | "end"
    source: str  # "vad" | "client"
    audio_ms: float
    at: float


class Outcome(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    ABORTED = "aborted"
    """The connection ended (or the script closed it) before the reply finished."""


@dataclass
class ReplyRecord:
    """One reply the emulated model started. `script_index` is None for the default reply."""

    script_index: int | None
    trigger: Trigger
    started_at: float
    outcome: Outcome = Outcome.RUNNING
    ended_at: float | None = None
    audio_ms_sent: float = 0.0
    tool_call_ids: list[str] = field(default_factory=list)
    started_audio_ms: float = 0.0
    """The caller audio time the reply started at (see `SentRecord.audio_ms`): with
    `clock="audio"`, its trigger's audio time, or the end of the previous reply if later."""
    ended_audio_ms: float | None = None
    """The caller audio time it ended at: its last message, or where the caller cut in."""


@dataclass
class EmulatorSession:
    """The record of one connection. Mutated only by the emulator, in the event loop's thread."""

    id: int
    path: str
    api_key: str | None
    started_at: float
    setup: SetupInfo | None = None
    client_messages: list[ClientRecord] = field(default_factory=list)
    audio_in_ms: float = 0.0
    """Caller audio received so far: the connection's clock with `clock="audio"`."""
    audio_in_pcm: bytearray = field(default_factory=bytearray)
    audio_in_rate: int | None = None
    """Rate of the last audio chunk; `audio_in_pcm` is every chunk concatenated as received."""
    speech: list[SpeechRecord] = field(default_factory=list)
    sent: list[SentRecord] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    unmatched_triggers: list[Trigger] = field(default_factory=list)
    """Triggers that arrived when the next scripted reply wanted a different one."""
    ended_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None  # "client" | "emulator"
    error: str | None = None
    """Why the emulator closed the connection, when the client sent something malformed."""
    auth_token: str | None = None
    """The ephemeral auth token that admitted the session (see `emulator.auth_tokens`); `setup`
    is then the effective one, with the token's locked fields."""

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def sent_kinds(self) -> list[str]:
        return [r.kind for r in self.sent]

    def client(self, kind: str) -> list[ClientRecord]:
        """The client events of one kind, e.g. `"tool_response"` or `"text"`."""
        return [r for r in self.client_messages if r.kind == kind]

    def sent_of(self, kind: str) -> list[SentRecord]:
        """The sent messages of one kind, e.g. `"audio"` or `"toolCall"`."""
        return [r for r in self.sent if r.kind == kind]

    def replies_with(self, outcome: Outcome) -> list[ReplyRecord]:
        return [r for r in self.replies if r.outcome is outcome]


Notify = Callable[[], None]

Observe = Callable[[int, str, float, object], None]
"""A hook for benchmarks: called with the session id, what happened, `time.monotonic()` and a
detail, as caller audio comes in (`"audio_in"`, ms of audio), text comes in (`"text_in"`, the
text), and each message goes out (its kind: `"audio"`, `"interrupted"`, `"turnComplete"`, …;
detail None), just before it is written to the socket. It must be quick: it runs in the event
loop."""
