from __future__ import annotations

from pathlib import Path

import pytest

from phone_agent.bridge import CallSummary, EndReason
from phone_agent.encryption import DataCipher, generate_key
from phone_agent.fixture import CallFixture, FixtureError
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


def test_policy_consent() -> None:
    cipher = DataCipher([generate_key()])
    consented = RecordingPolicy(Path("unused"), cipher)
    assert not consented.applies_to({})
    assert consented.applies_to({"record_consent": "yes"})
    assert RecordingPolicy(Path("unused"), cipher, everyone=True).applies_to({})


@pytest.mark.anyio
async def test_recordings_are_sealed_and_filed_by_caller_reference(tmp_path: Path) -> None:
    cipher = DataCipher([generate_key()])
    policy = RecordingPolicy(tmp_path, cipher)
    fixture = CallFixture.load(Path(__file__).parent / "fixtures" / "silent-caller.json.gz")
    path = await policy.save(fixture, "+15550100001")
    assert path.parent == tmp_path / cipher.caller_ref("(555) 010-0001")
    assert path.name.endswith(".json.gz.enc")
    assert b"silent" not in path.read_bytes()
    assert CallFixture.load(path, cipher=cipher) == fixture
    with pytest.raises(FixtureError, match="PHONE_AGENT_DATA_KEY"):
        CallFixture.load(path)
    with pytest.raises(FixtureError, match="none of the configured keys"):
        CallFixture.load(path, cipher=DataCipher([generate_key()]))
    withheld = await policy.save(fixture, None)
    assert withheld.parent.name == "withheld"
    assert policy.forget("+1 555 010 0001") == 1 and not path.exists()
    assert withheld.exists() and policy.forget("+15550100001") == 0
