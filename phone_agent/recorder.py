"""Records a live call as a replayable fixture (`phone_agent.fixture`, format v1).

The bridge feeds it what crossed each socket: every message Twilio sent (`caller_message`), every
Gemini server message (`model_message`), and what the bridge sent the model that starts a model
turn (`sent_to_model`). At the end, `fixture()` groups the model messages into turns and derives
the expected outcome from the call's summary.

Privacy: the caller's number is masked wherever it appears (`start.customParameters.from`), and
nothing is recorded unless the call consents (see `Settings.record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from phone_agent.encryption import ENCRYPTED_SUFFIX, DataCipher
from phone_agent.fixture import CallFixture, Expectations, HeardRange, ModelTurn, TimedMessage
from phone_agent.logs import mask_number
from phone_agent.model_link import CLOSED_MARKER

if TYPE_CHECKING:
    from phone_agent.bridge import CallSummary

# Replays reproduce what was heard of a turn to within this (marks, pacing, barge-in timing).
HEARD_TOLERANCE_MS = 250.0

_SESSION_KEYS = frozenset(
    {"goAway", "go_away", "sessionResumptionUpdate", "session_resumption_update", "setupComplete"}
)
_TURN_KEYS = frozenset(
    {"serverContent", "server_content", "toolCall", "tool_call"}
    | {"toolCallCancellation", "tool_call_cancellation"}
)


def _content(message: Mapping[str, Any]) -> Mapping[str, Any] | None:
    content = message.get("serverContent") or message.get("server_content")
    return content if isinstance(content, Mapping) else None


def _is_turn_complete(message: Mapping[str, Any]) -> bool:
    content = _content(message)
    return content is not None and bool(content.get("turnComplete") or content.get("turn_complete"))


def _has_input_transcription(message: Mapping[str, Any]) -> bool:
    content = _content(message)
    return content is not None and bool(
        content.get("inputTranscription") or content.get("input_transcription")
    )


def _starts_turn(message: Mapping[str, Any]) -> bool:
    """Content or tool calls begin a model turn; bare flags and usage do not."""
    if message.get("toolCall") or message.get("tool_call"):
        return True
    content = _content(message)
    flags = {"turnComplete", "turn_complete", "interrupted", "generationComplete"}
    flags |= {"generation_complete"}
    return content is not None and any(k not in flags for k in content)


def _masked_start(message: dict[str, Any]) -> dict[str, Any]:
    start = message.get("start")
    if not isinstance(start, dict):
        return message
    params = start.get("customParameters")
    if not isinstance(params, dict):
        return message
    masked_params = dict(params)
    if "from" in params:
        masked_params["from"] = mask_number(str(params["from"]))
    if "token" in params:
        masked_params["token"] = "[redacted]"  # single use and expired, but never stored
    return {**message, "start": {**start, "customParameters": masked_params}}


class CallRecorder:
    """Collects one call; `now` values are seconds on the bridge's clock."""

    def __init__(self, opened_at: float) -> None:
        self.opened_at = opened_at
        self._caller: list[TimedMessage] = []
        self._model: list[tuple[float, Mapping[str, Any]]] = []
        self._triggers: list[tuple[float, str]] = []
        self.caller_number = ""

    def _ms(self, now: float) -> float:
        return round((now - self.opened_at) * 1000.0, 3)

    def caller_message(self, message: dict[str, Any], now: float) -> None:
        if message.get("event") == "start":
            params = (message.get("start") or {}).get("customParameters") or {}
            self.caller_number = mask_number(str(params.get("from", "")))
            message = _masked_start(message)
        self._caller.append(TimedMessage(self._ms(now), message))

    def model_message(self, message: Mapping[str, Any], now: float) -> None:
        self._model.append((self._ms(now), message))

    def sent_to_model(self, trigger: str, now: float) -> None:
        """The bridge sent text or a tool response: the next model turn reacts to it."""
        self._triggers.append((self._ms(now), trigger))

    def session_events(self) -> tuple[TimedMessage, ...]:
        return tuple(TimedMessage(t, m) for t, m in self._model if _SESSION_KEYS & m.keys())

    def model_turns(self) -> tuple[ModelTurn, ...]:
        turns: list[ModelTurn] = []
        current: list[tuple[float, Mapping[str, Any]]] = []
        boundary = float("-inf")  # when the previous turn ended

        def close() -> None:
            if not current:
                return
            start = current[0][0]
            trigger = "speech_end"
            # A turn that transcribes the caller answered their speech; otherwise it answered the
            # last text or tool response the bridge sent since the previous turn.
            if not any(_has_input_transcription(m) for _, m in current):
                for t_ms, kind in self._triggers:
                    if boundary <= t_ms <= start:
                        trigger, trigger_at = kind, t_ms
                if trigger != "speech_end":
                    start = trigger_at
            messages = tuple(TimedMessage(round(t - start, 3), m) for t, m in current)
            turns.append(ModelTurn(trigger, messages))

        for t_ms, message in self._model:
            if CLOSED_MARKER in message:
                if current:  # the connection failed mid-turn: the turn ends there
                    current.append((t_ms, message))
                    close()
                    current = []
                    boundary = t_ms
                continue
            if not (_TURN_KEYS & message.keys()) and _SESSION_KEYS & message.keys():
                continue  # goAway, resumption handles: kept in session_events only
            if not (_TURN_KEYS & message.keys()) and not current:
                continue  # session-level message or stray usage between turns
            if not current and not _starts_turn(message):
                continue  # e.g. the turnComplete that follows an interruption
            current.append((t_ms, message))
            if _is_turn_complete(message):
                close()
                current = []
                boundary = t_ms
        close()
        return tuple(turns)

    def fixture(self, name: str, summary: CallSummary, metadata: Mapping[str, Any]) -> CallFixture:
        turns = summary.tracker.turns if summary.tracker is not None else []
        heard = tuple(
            HeardRange(
                min_ms=max(0.0, round(t.heard_ms - HEARD_TOLERANCE_MS)),
                max_ms=round(t.heard_ms + HEARD_TOLERANCE_MS),
                interrupted=t.interrupted,
            )
            for t in turns
        )
        expect = Expectations(
            turns=len(turns),
            clears=summary.clears,
            tools_called=tuple(summary.tools_called),
            dtmf="".join(summary.dtmf),
            gap_fill_ms=summary.gap_fill_ms,
            end_reason=summary.end_reason.value if summary.end_reason else None,
            heard=heard,
        )
        return CallFixture(
            name=name,
            description=f"Recorded call {name}.",
            metadata={"source": "recorded", "caller": self.caller_number, **metadata},
            caller=tuple(self._caller),
            model_turns=self.model_turns(),
            session_events=self.session_events(),
            expect=expect,
        )


class RecordingPolicy:
    """Which calls are recorded, and where. Off unless configured (`PHONE_AGENT_RECORD`).

    Recordings are sealed with the data key (`phone_agent.encryption`) and filed by caller
    reference, `<dir>/<caller ref>/<CallSid>.json.gz.enc`, so `phone-agent forget` finds a
    caller's recordings while no file name or content holds their number.
    """

    CONSENT_PARAMETER = "record_consent"

    def __init__(
        self,
        directory: Path,
        cipher: DataCipher,
        *,
        everyone: bool = False,
        model: str = "",
    ) -> None:
        self.directory = directory
        self.cipher = cipher
        self.everyone = everyone
        self.model = model

    def applies_to(self, custom_parameters: Mapping[str, str]) -> bool:
        """`all` records every call; `consented` only streams whose TwiML said the caller agreed."""
        return self.everyone or custom_parameters.get(self.CONSENT_PARAMETER) == "yes"

    def caller_directory(self, caller_number: str | None) -> Path:
        return self.directory / self.cipher.caller_ref(caller_number)

    async def save(self, fixture: CallFixture, caller_number: str | None) -> Path:
        directory = self.caller_directory(caller_number)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / f"{fixture.name}.json.gz{ENCRYPTED_SUFFIX}"
        await anyio.to_thread.run_sync(partial(fixture.save, path, cipher=self.cipher))
        return path

    def forget(self, caller_number: str | None) -> int:
        """Delete every recording filed under `caller_number`; returns how many were deleted."""
        removed = 0
        for ref in self.cipher.caller_refs(caller_number):
            directory = self.directory / ref
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if path.is_file():
                    path.unlink()
                    removed += 1
            directory.rmdir()
        return removed
