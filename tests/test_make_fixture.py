"""The committed fixture library, and the pure parts of its generator (`tools/make_fixture.py`).

Fast, and no espeak-ng needed: the committed files are checked as they are, and the generator's
audio and scenario helpers are tested on synthetic audio.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from phone_agent.audio import mulaw_to_pcm16
from phone_agent.fixture import CallFixture, ModelTurn, TimedMessage

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = ROOT / "tests" / "fixtures"
LIBRARY = sorted(FIXTURE_DIR.glob("*.json.gz"))
DEMO = ROOT / "phone_agent" / "data" / "demo-call.json.gz"


def _load_tool() -> ModuleType:
    """`tools/` is not a package: load the script from its path."""
    name = "make_fixture"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "make_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


mf = _load_tool()


@pytest.fixture(scope="module")
def library() -> dict[str, CallFixture]:
    return {p.name.removesuffix(".json.gz"): CallFixture.load(p) for p in LIBRARY}


def _all_files() -> Iterator[Path]:
    yield from LIBRARY
    yield DEMO


# -- the committed files --------------------------------------------------------------------------


def test_every_scenario_has_its_file_and_nothing_else_is_there() -> None:
    assert {p.name.removesuffix(".json.gz") for p in LIBRARY} == {s.name for s in mf.SCENARIOS}
    assert DEMO.is_file()


@pytest.mark.parametrize("path", list(_all_files()), ids=lambda p: p.name)
def test_fixture_loads_and_is_well_formed(path: Path) -> None:
    fixture = CallFixture.load(path)
    assert fixture.name == path.name.removesuffix(".json.gz")
    assert fixture.description and not fixture.description.startswith("Recorded call")
    events = [m.message.get("event") for m in fixture.caller]
    assert events[:2] == ["connected", "start"]
    assert events[-1] == "stop"
    start = fixture.caller[1].message["start"]
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert "*" in start["customParameters"]["from"], "the caller's number is masked"
    for timed in fixture.caller:
        if timed.message.get("event") == "media":
            assert len(base64.b64decode(timed.message["media"]["payload"])) == 160
    meta = fixture.metadata
    assert meta["source"] == "synthetic"
    assert meta["generator"] == "tools/make_fixture.py"
    assert meta["tts"]["engine"] == "espeak-ng" and meta["tts"]["version"]
    assert set(meta["texts"]) == {"caller", "agent"}


@pytest.mark.parametrize("path", list(_all_files()), ids=lambda p: p.name)
def test_key_words_are_in_what_the_caller_heard(path: Path) -> None:
    fixture = CallFixture.load(path)
    expect = fixture.expect
    assert expect.turns is not None and expect.heard is not None
    assert len(expect.heard) == expect.turns
    assert bool(expect.agent_transcript_contains) == (expect.turns > 0)
    heard_text = " ".join(
        mf.transcript(turn, (heard.min_ms + heard.max_ms) / 2)
        for turn, heard in zip(mf.speaking_turns(fixture), expect.heard, strict=True)
    )
    for word in expect.agent_transcript_contains:
        assert word.lower() in heard_text.lower(), (word, heard_text)


@pytest.mark.parametrize("scenario", mf.SCENARIOS, ids=lambda s: s.name)
def test_recording_shows_what_the_scenario_is_for(
    scenario: Any, library: dict[str, CallFixture]
) -> None:
    fixture = library[scenario.name]
    want, got = scenario.check, fixture.expect
    assert got.turns == want.turns
    assert got.clears == want.clears
    assert got.dtmf == want.dtmf
    assert got.end_reason == want.end_reason
    if want.interrupted is not None:
        assert tuple(h.interrupted for h in got.heard or ()) == want.interrupted
    assert mf.go_aways(fixture) == ((1, 0) if want.go_away else (0, 0))
    assert fixture.metadata["scenario"] == scenario.name


def test_the_library_keeps_its_promises(library: dict[str, CallFixture]) -> None:
    barge_in = library["barge-in"].expect
    assert barge_in.clears is not None and barge_in.clears >= 1
    assert barge_in.heard is not None and barge_in.heard[0].interrupted is True
    assert barge_in.heard[1].interrupted is False
    assert library["dtmf"].expect.dtmf == "12"
    assert library["silent-caller"].expect.turns == 0
    assert not library["silent-caller"].model_turns
    go_away = library["go-away"]
    assert any("goAway" in m.message for m in go_away.session_events)
    # The conversation carries on past the goAway.
    at = next(m.t_ms for m in go_away.session_events if "goAway" in m.message)
    assert any(m.message.get("event") == "media" and m.t_ms > at + 3000 for m in go_away.caller)
    assert (go_away.expect.turns or 0) >= 2
    gaps = library["timestamp-gaps"]
    assert (gaps.expect.gap_fill_ms or 0) > 0
    stamps = [int(m.message["media"]["timestamp"]) for m in gaps.caller if "media" in m.message]
    assert any(b - a > 20 for a, b in itertools.pairwise(stamps))
    hangup = library["hangup-mid-answer"].expect
    assert hangup.turns == 1 and hangup.clears == 0 and hangup.end_reason == "caller_stop"


def test_the_library_is_small_and_short(library: dict[str, CallFixture]) -> None:
    assert sum(p.stat().st_size for p in LIBRARY) < 2_000_000
    durations = {name: mf.duration_s(f) for name, f in library.items()}
    assert sum(durations.values()) < 90, durations
    assert all(d <= 20 for d in durations.values()), durations


def test_the_demo_is_the_order_status_call() -> None:
    demo = CallFixture.load(DEMO)
    assert demo.name == "demo-call"
    assert demo.metadata["scenario"] == mf.DEMO_SCENARIO
    assert (demo.expect.turns or 0) >= 1 and demo.expect.clears == 0


# -- the generator's pure helpers -----------------------------------------------------------------


def _sine(freq: float, rate: int, ms: int, amplitude: float = 0.5) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype("<i2").tobytes()


def _dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("dst", [8000, 24000])
def test_resample_keeps_pitch_and_duration_and_is_deterministic(dst: int) -> None:
    pcm = _sine(1000.0, 22050, 500)
    out = mf.resample_pcm16(pcm, 22050, dst)
    assert abs(len(out) // 2 - dst // 2) <= 2
    assert abs(_dominant_hz(out, dst) - 1000.0) < 5
    assert out == mf.resample_pcm16(pcm, 22050, dst)
    assert mf.resample_pcm16(pcm, 22050, 22050) == pcm


def test_resample_applies_gain_and_clips() -> None:
    pcm = _sine(440.0, 8000, 100, amplitude=0.9)
    half = np.frombuffer(mf.resample_pcm16(pcm, 8000, 8000, gain=0.5), dtype="<i2")
    assert abs(int(np.abs(half).max()) - 0.45 * 32767) < 3
    loud = np.frombuffer(mf.resample_pcm16(pcm, 8000, 8000, gain=4.0), dtype="<i2")
    assert loud.max() == 32767 and loud.min() == -32768


def test_trim_silence_keeps_a_margin() -> None:
    rate = 1000
    samples = np.zeros(1000)
    samples[400:500] = 0.5
    trimmed = mf.trim_silence(samples, rate)
    margin = rate * mf.TRIM_MARGIN_MS // 1000
    assert len(trimmed) == 100 + 2 * margin
    assert len(mf.trim_silence(np.zeros(100), rate)) == 0


def test_caller_audio_is_8k_mulaw_and_agent_audio_24k_pcm() -> None:
    speech = bytes(2000) + _sine(500.0, 22050, 1000, amplitude=1.0) + bytes(2000)
    caller = mf.to_caller_audio(speech, 22050)
    agent = mf.to_agent_audio(speech, 22050)
    # Silence trimmed (a 20 ms margin kept each side), one byte a sample at 8 kHz.
    assert abs(len(caller) - 8000 * 1.04) < 10
    assert abs(len(agent) // 2 - 24000 * 1.04) < 10
    decoded = mulaw_to_pcm16(caller)
    assert abs(_dominant_hz(decoded, 8000) - 500.0) < 5
    peak = np.abs(np.frombuffer(decoded, dtype="<i2")).max()
    assert abs(peak - mf.SPEECH_GAIN * 32767) < 0.05 * 32767
    assert abs(_dominant_hz(agent, 24000) - 500.0) < 5
    assert caller == mf.to_caller_audio(speech, 22050)


def test_espeak_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mf.shutil, "which", lambda name: None)
    with pytest.raises(mf.GeneratorError, match="apt-get install espeak-ng"):
        mf.espeak_version()


class _ToneVoices(mf.Voices):  # type: ignore[misc, name-defined]
    """Voices without espeak-ng: every line is a 300 ms tone at espeak's rate."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def speak(self, voice: str, text: str) -> tuple[bytes, int]:
        return _sine(400.0, 22050, 300), 22050


def test_a_scenario_becomes_an_emulator_script_and_caller_steps() -> None:
    scenario = next(s for s in mf.SCENARIOS if s.name == "order-status")
    call = mf.Call.prepare(scenario, _ToneVoices())
    replies = call.script.replies
    assert [r.input_transcript for r in replies] == scenario.caller_lines()[: len(replies)]
    assert len(replies) == len(scenario.agent_replies()) == 2
    assert call.script.default_reply.trigger == "tool_response"  # a closing "bye" gets no answer
    kinds = [type(s).__name__ for s in call.steps]
    assert kinds.count("Say") == len(scenario.caller_lines())
    # Listen is a wait for the answer to start, then for it to end.
    assert kinds.count("WaitForAgentAudio") == kinds.count("WaitForAgentSilence") == 2
    assert kinds[-1] == "HangUp"


def test_scenarios_are_validated() -> None:
    bad_order = mf.Scenario(
        "x",
        "",
        (mf.Caller("bye"), mf.Caller("hello", mf.Agent("hi"))),
        mf.Check(turns=1),
    )
    with pytest.raises(mf.GeneratorError, match="unanswered"):
        bad_order.validate()
    phrase = mf.Scenario(
        "x", "", (mf.Caller("hi", mf.Agent("hello there", ("hello there",))),), mf.Check(1)
    )
    with pytest.raises(mf.GeneratorError, match="single words"):
        phrase.validate()
    absent = mf.Scenario("x", "", (mf.Caller("hi", mf.Agent("hello", ("bye",))),), mf.Check(1))
    with pytest.raises(mf.GeneratorError, match="not in"):
        absent.validate()
    for scenario in mf.SCENARIOS:
        scenario.validate()


def test_call_sids_are_stable_and_twilio_shaped() -> None:
    sid = mf.call_sid("dtmf")
    assert sid == mf.call_sid("dtmf") != mf.call_sid("barge-in")
    assert sid.startswith("CA") and len(sid) == 34


def _audio(ms: int) -> dict[str, Any]:
    data = base64.urlsafe_b64encode(bytes(48 * ms)).decode()
    return {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": data}}]}}}


def _text(text: str) -> dict[str, Any]:
    return {"serverContent": {"outputTranscription": {"text": text}}}


def test_transcript_of_a_turn_stops_at_what_was_heard() -> None:
    messages = [_audio(100), _text("Hello"), _audio(100), _text(" there,"), _audio(100)]
    messages += [_text(" friend.")]
    turn = ModelTurn("speech_end", tuple(TimedMessage(i, m) for i, m in enumerate(messages)))
    assert mf.audio_ms(messages[0]) == 100
    assert mf.transcript(turn) == "Hello there, friend."
    assert mf.transcript(turn, heard_ms=150) == "Hello there,"
    assert mf.transcript(turn, heard_ms=50) == "Hello"
