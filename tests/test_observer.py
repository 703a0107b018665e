"""The observer without a socket: speech ends found on the caller's audio, turn latency, barge-in,
budget, and the report."""

from __future__ import annotations

import numpy as np
import pytest

from phone_agent.audio import mulaw_to_pcm16, pcm16_to_mulaw
from phone_agent.bridge import CallSummary, EndReason
from phone_agent.gemini import Usage
from phone_agent.metrics import Metrics
from phone_agent.observer import CallObserver
from phone_agent.playback import PlaybackTracker, SendMark
from phone_agent.pricing import Budget


def frames(amplitude: float, ms: int) -> list[bytes]:
    n = 160
    out = []
    for _ in range(ms // 20):
        t = np.arange(n)
        pcm = (amplitude * np.sin(2 * np.pi * 300 * t / 8000)).astype("<i2").tobytes()
        out.append(mulaw_to_pcm16(pcm16_to_mulaw(pcm)))  # as the bridge decodes Twilio's frames
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_turn_latency_from_the_callers_audio_to_sent_and_heard() -> None:
    clock = Clock()
    metrics = Metrics()
    observer = CallObserver(metrics, model="gemini-live-2.5-flash-preview", clock=clock)
    observer.started("CA1", "+15550100001", clock.now)
    for frame in frames(8000.0, 1000) + frames(0.0, 600):  # speech, then quiet
        observer.caller_audio(frame)
    assert observer.speech_ends_ms == [1000.0]
    tracker = PlaybackTracker()
    clock.now += 1.3  # the answer's first audio goes out 300 ms after the caller stopped
    [send_mark] = tracker.on_audio_sent(100.0, clock.now)
    assert isinstance(send_mark, SendMark)
    observer.audio_sent(tracker.current)
    observer.audio_sent(tracker.current)  # a second chunk of the same turn counts once
    clock.now += 0.15
    outcome = tracker.on_mark(send_mark.name, clock.now)
    assert outcome is not None and outcome.first_audio_heard
    observer.first_heard(outcome.turn)
    summary = CallSummary(
        call_sid="CA1", started_at=100.0, ended_at=clock.now, end_reason=EndReason.CALLER_STOP
    )
    summary.tracker = tracker
    report = observer.finished(summary)
    [turn] = report.turns
    assert turn.caller_stopped_ms == 1000.0
    assert turn.sent_latency_ms == pytest.approx(300.0)
    assert turn.first_heard_ms is not None and turn.heard_latency_ms is not None
    assert report.caller_masked == "+15*******01" and report.caller_ref is None
    text = metrics.render().decode()
    assert 'phone_agent_turn_latency_seconds_count{stage="sent"} 1.0' in text
    assert 'phone_agent_calls_total{end_reason="caller_stop"} 1.0' in text


def test_budget_is_reported_once_when_spent() -> None:
    clock = Clock()
    observer = CallObserver(Metrics(), model="m", budget=Budget(0.01), clock=clock)
    observer.started("CA2", None, clock.now)
    small = Usage(1000, 0, 1000, {"AUDIO": 1000}, {})  # $0.003
    assert observer.usage(small) is False
    assert observer.usage(small) is False
    assert observer.usage(small) is False
    assert observer.usage(small) is True  # $0.012 >= $0.01
    assert observer.usage(small) is False  # said once
    assert observer.cost(0.0).tokens.audio_in == 5000


def test_a_clear_counts_a_barge_in_with_its_latency() -> None:
    clock = Clock()
    metrics = Metrics()
    observer = CallObserver(metrics, model="m", clock=clock)
    observer.started("CA3", None, clock.now)
    tracker = PlaybackTracker()
    tracker.on_audio_sent(500.0, clock.now)
    observer.interrupted(clock.now)
    tracker.on_interrupted(clock.now + 0.002)
    observer.clear_sent(tracker.turns[-1], clock.now + 0.002)
    summary = CallSummary(call_sid="CA3", started_at=100.0, ended_at=clock.now + 1)
    summary.tracker = tracker
    report = observer.finished(summary)
    assert report.barge_ins == 1
    assert report.turns[0].interrupt_to_clear_ms is not None
    assert abs(report.turns[0].interrupt_to_clear_ms - 2.0) < 1e-6
    assert "phone_agent_barge_ins_total 1.0" in metrics.render().decode()
