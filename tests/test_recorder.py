from __future__ import annotations

from pathlib import Path

from phone_agent.bridge import CallSummary, EndReason
from phone_agent.fixture import CallFixture
from phone_agent.playback import PlaybackTracker
from phone_agent.recorder import CallRecorder, RecordingPolicy

AUDIO = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "AAAA"}}]}}}
DONE = {"serverContent": {"turnComplete": True}, "usageMetadata": {"totalTokenCount": 5}}


def test_model_messages_group_into_turns_with_triggers_and_session_events() -> None:
    rec = CallRecorder(opened_at=100.0)
    rec.model_message({"sessionResumptionUpdate": {"newHandle": "h"}}, 100.5)
    rec.model_message(AUDIO, 101.0)
    rec.model_message({"serverContent": {"interrupted": True}}, 101.2)
    rec.model_message(DONE, 101.21)
    rec.model_message({"sessionResumptionUpdate": {"newHandle": "h2"}}, 101.3)
    rec.sent_to_model("text", 102.0)
    rec.model_message(AUDIO, 102.4)
    rec.model_message({"goAway": {"timeLeft": "50s"}}, 102.5)
    rec.model_message(DONE, 102.6)
    turns = rec.model_turns()
    assert [t.trigger for t in turns] == ["speech_end", "text"]
    assert [m.t_ms for m in turns[0].messages] == [0.0, 200.0, 210.0]
    assert turns[1].messages[0].t_ms == 400.0  # measured from the text the bridge sent
    assert [e.t_ms for e in rec.session_events()] == [500.0, 1300.0, 2500.0]


def test_caller_number_is_masked_in_start() -> None:
    rec = CallRecorder(opened_at=0.0)
    start = {
        "event": "start",
        "start": {"callSid": "CA1", "customParameters": {"from": "+447911123456", "x": "y"}},
    }
    rec.caller_message(start, 0.001)
    rec.caller_message({"event": "stop"}, 1.0)
    summary = CallSummary(call_sid="CA1", end_reason=EndReason.CALLER_STOP)
    summary.tracker = PlaybackTracker()
    fixture = rec.fixture("CA1", summary, {"model": "m"})
    params = fixture.caller[0].message["start"]["customParameters"]
    assert params == {"from": "+44********56", "x": "y"}
    assert fixture.metadata["caller"] == "+44********56"
    assert "447911123456" not in fixture.dumps().decode()
    assert fixture.expect.end_reason == "caller_stop" and fixture.expect.turns == 0


async def _save(policy: RecordingPolicy, fixture: CallFixture) -> Path:
    return await policy.save(fixture)


def test_policy_consent_and_round_trip(tmp_path: Path) -> None:
    import anyio

    consented = RecordingPolicy(tmp_path)
    assert not consented.applies_to({})
    assert consented.applies_to({"record_consent": "yes"})
    assert RecordingPolicy(tmp_path, everyone=True).applies_to({})
    rec = CallRecorder(opened_at=0.0)
    rec.caller_message({"event": "connected"}, 0.0)
    summary = CallSummary(call_sid="CA2", end_reason=EndReason.CALLER_STOP)
    fixture = rec.fixture("CA2", summary, {})
    path = anyio.run(_save, consented, fixture)
    assert path.name == "CA2.json.gz"
    assert CallFixture.load(path) == fixture
