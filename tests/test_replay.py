"""Recorded calls replayed through the whole stack (uvicorn, real SDK, emulator, simulator)."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from phone_agent import replay
from phone_agent.app import create_app
from phone_agent.cli import app as cli
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone
from phone_agent.encryption import generate_key
from phone_agent.fixture import CallFixture, Expectations
from phone_agent.gemini import GeminiConnector
from phone_agent.recorder import HEARD_TOLERANCE_MS
from phone_agent.simulator import (
    HangUp,
    Say,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)

from .test_call_e2e import caller_tone

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json.gz"))
BUNDLED = Path(__file__).parents[1] / "phone_agent" / "data" / "demo-call.json.gz"

pytestmark = pytest.mark.anyio


def test_the_library_is_there() -> None:
    names = {p.name.removesuffix(".json.gz") for p in FIXTURES}
    assert {"order-status", "barge-in", "silent-caller", "dtmf"} <= names
    assert BUNDLED.is_file()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name.removesuffix(".json.gz"))
async def test_library_replays_at_max_speed(path: Path) -> None:
    result = await replay.replay(CallFixture.load(path), speed="max")
    assert result.ok, result.report()


async def test_replay_is_deterministic() -> None:
    fixture = CallFixture.load(Path(__file__).parent / "fixtures" / "barge-in.json.gz")
    first = await replay.replay(fixture, speed="realtime")
    second = await replay.replay(fixture, speed="realtime")
    assert first.ok and second.ok, first.report() + "\n" + second.report()
    assert [(r.generation, r.interrupted) for r in first.timeline] == [
        (r.generation, r.interrupted) for r in second.timeline
    ]
    assert first.summary.clears == second.summary.clears
    tolerance = replay.TIMELINE_TOLERANCE_MS
    for a, b in zip(first.timeline, second.timeline, strict=True):
        pair = f"{a}\n{b}"
        assert abs(a.first_sent_ms - b.first_sent_ms) <= tolerance, pair
        assert abs(a.sent_ms - b.sent_ms) <= tolerance, pair
        if a.first_heard_ms is not None and b.first_heard_ms is not None:
            assert abs(a.first_heard_ms - b.first_heard_ms) <= tolerance, pair
        # What was heard of a cut-off turn also depends on how fast the clear travels.
        assert abs(a.heard_ms - b.heard_ms) <= HEARD_TOLERANCE_MS, pair


async def test_a_recorded_call_replays_to_the_same_outcome(tmp_path: Path) -> None:
    script = EmulatorScript(
        replies=[
            # Gemini transcribes what the caller said; the recorder relies on it to tell a turn
            # that answers speech from one that answers the greeting text.
            Reply.of(
                "A long answer about your order.",
                Tone(1000.0, 4000, 0.3),
                input_transcript="tell me about my order",
            ),
            Reply.of("Sure.", Tone(600.0, 600, 0.3), input_transcript="stop"),
        ]
    )
    async with GeminiEmulator(script, speed=1.0) as emulator:
        settings = Settings(record="all", record_dir=tmp_path, data_key=generate_key())
        connector = GeminiConnector(
            settings,
            api_key="k",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
        )
        app = create_app(settings, connect_model=connector.connect, keep_summaries=1)
        async with embedded_server(app) as base:
            steps = [
                Say(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=800),
                Say(caller_tone(300.0, 500)),
                WaitForAgentAudio(min_ms=300),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ]
            with anyio.fail_after(20):
                sid = "CA" + secrets.token_hex(16)
                await TwilioCallerSimulator(
                    base.replace("http", "ws") + "/twilio/media",
                    steps,
                    call_sid=sid,
                    custom_parameters=app.state.phone_agent.stream_parameters(sid),
                ).run()
                await app.state.phone_agent.wait_calls_ended(1)
    recording = app.state.phone_agent.summaries[-1].recording
    assert recording is not None and recording.startswith(str(tmp_path))
    recorded = CallFixture.load(recording, cipher=settings.data_cipher())
    assert recorded.expect.clears == 1 and recorded.expect.turns == 2
    result = await replay.replay(recorded, speed="max")
    assert result.ok, result.report()


async def test_a_failed_expectation_is_reported() -> None:
    fixture = CallFixture.load(FIXTURES[0])
    wrong = CallFixture(
        name=fixture.name,
        caller=fixture.caller,
        model_turns=fixture.model_turns,
        session_events=fixture.session_events,
        expect=Expectations(clears=7, agent_transcript_contains=("platypus",)),
    )
    result = await replay.replay(wrong, speed="max")
    assert not result.ok
    assert any("7 clears" in f for f in result.failures)
    assert any("platypus" in f for f in result.failures)


def test_cli_replay_exits_non_zero_on_failure(tmp_path: Path) -> None:
    fixture = CallFixture.load(Path(__file__).parent / "fixtures" / "silent-caller.json.gz")
    broken = tmp_path / "broken.json"
    CallFixture(
        name="broken",
        caller=fixture.caller,
        model_turns=fixture.model_turns,
        expect=Expectations(turns=3),
    ).save(broken)
    ok = CliRunner().invoke(cli, ["replay", str(FIXTURES[0].parent / "silent-caller.json.gz")])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["replay", str(broken)])
    assert bad.exit_code == 1 and "expected 3 model turns" in bad.output


async def test_fixture_replays_prove_the_conversation_behaviours() -> None:
    """goAway: handed over, greeted once; DTMF reaches the model; a barge-in is told honestly."""
    greeting = Settings().greeting
    crossed = await replay.replay(CallFixture.load(FIXTURES[0].parent / "go-away.json.gz"))
    assert crossed.ok and crossed.summary.handovers >= 1, crossed.report()
    assert crossed.summary.model_texts.count(greeting) == 1

    # Real time: digits are grouped by a wall-clock pause, which a faster replay would outrun.
    keys = await replay.replay(
        CallFixture.load(FIXTURES[0].parent / "dtmf.json.gz"), speed="realtime"
    )
    assert keys.ok, keys.report()
    typed = [t for t in keys.summary.model_texts if "keypad" in t]
    assert typed and "1" in typed[0]

    cut = await replay.replay(CallFixture.load(FIXTURES[0].parent / "barge-in.json.gz"))
    assert cut.ok, cut.report()
    [heard] = cut.summary.honest_notes
    notes = [t for t in cut.summary.model_texts if t.startswith("[The caller interrupted")]
    assert heard and len(notes) == 1 and heard in notes[0]
