"""Watches one call for the operator: turn latency as the caller lived it, barge-ins, tools,
tokens and cost, audio levels; feeds the Prometheus metrics and the log, and at the end builds
the call's `CallReport`.

The bridge tells it what happened (`caller_audio`, `audio_sent`, `interrupted`, `clear_sent`,
`tool_finished`, `usage`, ...); it does no I/O but logging and metric updates, and never changes
the call — except that `usage` reports when the call's budget is spent, and the bridge then ends
the call politely.

When the caller stopped speaking is found by an energy detector on the caller's audio
(`vad.EnergyVad`, 500 ms of quiet ends speech), in audio time: the same detector the emulator and
the replay timeline use, so a replayed call's record and its replay agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from phone_agent import gemini
from phone_agent.call_report import (
    CallReport,
    ToolUse,
    TurnReport,
    caller_stopped_before,
)
from phone_agent.levels import AudioLevels
from phone_agent.logs import mask_number
from phone_agent.metrics import Metrics
from phone_agent.playback import TurnPlayback
from phone_agent.pricing import DEFAULT_TABLE, Budget, CallCost, PriceTable, Tokens
from phone_agent.tools.registry import ToolResult
from phone_agent.vad import EnergyVad, SpeechEnded

if TYPE_CHECKING:
    from phone_agent.bridge import CallSummary
    from phone_agent.encryption import DataCipher

log = logging.getLogger("phone_agent.calls")

SPEECH_END_SILENCE_MS = 500
CALLER_RATE = 8000
_WINDOW_BYTES = 2 * CALLER_RATE * 20 // 1000  # one 20 ms PCM16 frame, Twilio's usual
ERROR_REASONS = frozenset(
    {
        "protocol_error",
        "internal_error",
        "model_unavailable",
        "model_closed",
        "playback_stalled",
        "admission_refused",
        "start_timeout",
    }
)


class CallObserver:
    """One call's observations (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        model: str,
        prices: PriceTable = DEFAULT_TABLE,
        budget: Budget | None = None,
        cipher: DataCipher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.model = model
        self.prices = prices
        self.budget = budget or Budget()
        self.cipher = cipher
        self.clock = clock
        self.call_sid = ""
        self.caller_number: str | None = None
        self.origin = 0.0
        self.started_wall = datetime.now(UTC)
        self.caller_levels = AudioLevels()
        self.agent_levels = AudioLevels()
        self._vad = EnergyVad(silence_ms=SPEECH_END_SILENCE_MS, window_ms=20)
        self.speech_ends_ms: list[float] = []
        self._seen_generations: set[int] = set()
        self._heard_generations: set[int] = set()
        self._interrupted_at: float | None = None
        self._clear_latency: dict[int, float] = {}
        self._tools: list[ToolUse] = []
        self._tool_asked: dict[str, float] = {}
        self.barge_ins = 0
        self._usages: list[gemini.Usage] = []
        self._model_usd = 0.0
        self._over_budget_told = False
        self._started = False

    # -- the call's course ------------------------------------------------------------------

    def started(self, call_sid: str, caller_number: str | None, now: float) -> None:
        self.call_sid, self.caller_number, self.origin = call_sid, caller_number, now
        self.started_wall = datetime.now(UTC)
        self._started = True
        self.metrics.active_calls.inc()

    def _ms(self, at: float) -> float:
        return (at - self.origin) * 1000.0

    def caller_audio(self, pcm: bytes) -> None:
        """Every caller frame (and gap filler), in order, decoded: 8 kHz PCM16."""
        power = self.caller_levels.feed(pcm)
        if len(pcm) == _WINDOW_BYTES and not self._vad.pending:
            event = self._vad.feed_window(power, CALLER_RATE)  # the level measured just now
            events = [event] if event is not None else []
        else:  # frames that are not 20 ms: the detector windows them itself
            events = self._vad.feed(pcm, CALLER_RATE)
        for event in events:
            if isinstance(event, SpeechEnded):
                self.speech_ends_ms.append(event.at_ms - SPEECH_END_SILENCE_MS)

    def agent_audio(self, pcm24k: bytes) -> None:
        self.agent_levels.feed(pcm24k)

    def audio_sent(self, turn: TurnPlayback | None) -> None:
        """After agent audio went to Twilio: the first chunk of a generation starts a turn."""
        if turn is None or turn.generation in self._seen_generations:
            return
        self._seen_generations.add(turn.generation)
        stopped = caller_stopped_before(self.speech_ends_ms, self._ms(turn.first_sent_at))
        if stopped is not None:
            latency = self._ms(turn.first_sent_at) - stopped
            self.metrics.turn_latency.labels("sent").observe(max(0.0, latency) / 1000.0)

    def first_heard(self, turn: TurnPlayback) -> None:
        if turn.generation in self._heard_generations or turn.first_heard_at is None:
            return
        self._heard_generations.add(turn.generation)
        sent_ms = self._ms(turn.first_sent_at)
        heard_ms = self._ms(turn.first_heard_at)
        stopped = caller_stopped_before(self.speech_ends_ms, sent_ms)
        if stopped is not None:
            self.metrics.turn_latency.labels("heard").observe(max(0.0, heard_ms - stopped) / 1e3)
        log.info(
            "agent heard",
            extra={
                "event": "turn.heard",
                "call_sid": self.call_sid,
                "generation": turn.generation,
                "caller_stopped_ms": _round(stopped),
                "first_sent_ms": _round(sent_ms),
                "first_heard_ms": _round(heard_ms),
                "sent_latency_ms": _round(None if stopped is None else sent_ms - stopped),
                "heard_latency_ms": _round(None if stopped is None else heard_ms - stopped),
            },
        )

    def interrupted(self, now: float) -> None:
        """The caller barged in (Gemini's `interrupted`, or speech over a finished answer)."""
        self._interrupted_at = now

    def clear_sent(self, turn: TurnPlayback | None, now: float) -> None:
        self.barge_ins += 1
        self.metrics.barge_ins.inc()
        latency_ms = None
        if self._interrupted_at is not None:
            latency_ms = (now - self._interrupted_at) * 1000.0
            self.metrics.interrupt_to_clear.observe(latency_ms / 1000.0)
            if turn is not None:
                self._clear_latency[turn.generation] = latency_ms
            self._interrupted_at = None
        log.info(
            "caller barged in",
            extra={
                "event": "turn.barge_in",
                "call_sid": self.call_sid,
                "generation": turn.generation if turn is not None else None,
                "heard_ms": _round(turn.heard_ms) if turn is not None else None,
                "sent_ms": _round(turn.sent_ms) if turn is not None else None,
                "interrupt_to_clear_ms": None if latency_ms is None else round(latency_ms, 2),
            },
        )

    def tool_asked(self, call_id: str, now: float) -> None:
        self._tool_asked[call_id] = self._ms(now)

    def tool_finished(self, result: ToolResult) -> None:
        at = self._tool_asked.pop(result.id, 0.0)
        self._tools.append(ToolUse(result.name, result.status, result.latency_ms, at))
        self.metrics.tool_latency.labels(result.name).observe(result.latency_ms / 1000.0)
        self.metrics.tool_calls.labels(result.name, result.status).inc()
        if result.status != "ok":
            self.metrics.errors.labels("tool_" + result.status).inc()

    def usage(self, usage: gemini.Usage) -> bool:
        """Account one usage report; True once the call's budget is spent (said once)."""
        self._usages.append(usage)
        tokens = Tokens.of(usage)
        counts = (tokens.text_in, tokens.text_out, tokens.audio_in, tokens.audio_out)
        for (modality, direction), n in zip(_TOKEN_LABELS, counts, strict=True):
            if n:
                self.metrics.tokens.labels(modality, direction).inc(n)
        usd = self.prices.rates_for(self.model).usd(tokens)
        self._model_usd += usd
        self.metrics.cost.labels("model").inc(usd)
        if not self.budget.enabled or self._over_budget_told:
            return False
        so_far = self.cost(max(0.0, self.clock() - self.origin))
        if self.budget.over_budget(so_far):
            self._over_budget_told = True
            log.warning(
                "call budget spent",
                extra={
                    "event": "call.budget",
                    "call_sid": self.call_sid,
                    "budget_usd": self.budget.limit_usd,
                    "spent_usd": round(so_far.total_usd, 6),
                },
            )
            return True
        return False

    def cost(self, duration_s: float) -> CallCost:
        """The call's bill so far (`pricing.CallCost`)."""
        return CallCost.of(self._usages, duration_s, self.model, self.prices)

    # -- the end ------------------------------------------------------------------------------

    def finished(self, summary: CallSummary) -> CallReport:
        """Account the finished call in the metrics and build its report."""
        reason = summary.end_reason.value if summary.end_reason is not None else None
        duration_s = max(0.0, summary.ended_at - summary.started_at) if summary.started_at else 0.0
        if self._started:
            self.metrics.active_calls.dec()
            self.metrics.call_duration.observe(duration_s)
        self.metrics.calls.labels(reason or "unknown").inc()
        if reason in ERROR_REASONS:
            self.metrics.errors.labels(reason).inc()
        if summary.reconnects:
            self.metrics.reconnects.labels("resume").inc(summary.reconnects)
        if summary.handovers:
            self.metrics.reconnects.labels("handover").inc(summary.handovers)
        cost = self.cost(duration_s if self._started else 0.0)
        self.metrics.cost.labels("twilio").inc(cost.twilio_usd)
        return CallReport(
            call_sid=summary.call_sid,
            started_at=self.started_wall,
            duration_s=round(duration_s, 3),
            model=self.model,
            end_reason=reason,
            detail=summary.detail,
            caller_masked=mask_number(self.caller_number),
            caller_ref=self.cipher.caller_ref(self.caller_number) if self.cipher else None,
            prewarmed=summary.prewarmed,
            reconnects=summary.reconnects,
            handovers=summary.handovers,
            barge_ins=self.barge_ins,
            cost=cost,
            levels={
                "caller": self.caller_levels.report().as_dict(),
                "agent": self.agent_levels.report().as_dict(),
            },
            turns=self._turns(summary),
            transcript=tuple(summary.transcript),
        )

    def _turns(self, summary: CallSummary) -> tuple[TurnReport, ...]:
        if summary.tracker is None:
            return ()
        turns = summary.tracker.turns
        starts = [self._ms(t.first_sent_at) for t in turns]
        tools_by_turn: dict[int, list[ToolUse]] = {}
        for use in self._tools:
            # A tool belongs to the turn it serves: the first to start after it was asked for.
            index = next((i for i, s in enumerate(starts) if s >= use.at_ms), len(turns) - 1)
            tools_by_turn.setdefault(index, []).append(use)
        reports = []
        for i, turn in enumerate(turns):
            sent = starts[i]
            reports.append(
                TurnReport(
                    index=i,
                    generation=turn.generation,
                    caller_stopped_ms=caller_stopped_before(self.speech_ends_ms, sent),
                    first_sent_ms=sent,
                    first_heard_ms=(
                        self._ms(turn.first_heard_at) if turn.first_heard_at is not None else None
                    ),
                    sent_ms=turn.sent_ms,
                    heard_ms=turn.heard_ms,
                    interrupted=turn.interrupted,
                    interrupt_to_clear_ms=self._clear_latency.get(turn.generation),
                    tools=tuple(tools_by_turn.get(i, ())),
                )
            )
        return tuple(reports)


_TOKEN_LABELS = (("text", "in"), ("text", "out"), ("audio", "in"), ("audio", "out"))


def _round(value: float | None) -> float | None:
    return None if value is None else float(round(value))
