"""Conversations that hold up, end to end over real sockets (uvicorn, real SDK, emulator, caller
simulator, and a stand-in for Twilio's REST API): greeting once, handover across `goAway`, recovery
from a 1011 drop, end_call and transfer after the goodbye is heard, DTMF, silence, and what the
model is told after a barge-in."""

from __future__ import annotations

import itertools
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from starlette.applications import Starlette

from phone_agent import replay
from phone_agent.app import GeminiTarget, create_app
from phone_agent.bridge import CallSummary, EndReason
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import (
    CallTools,
    Close,
    EmulatorScript,
    FunctionCall,
    GeminiEmulator,
    Reply,
    Say,
    Tone,
    Trigger,
)
from phone_agent.encryption import DataCipher, generate_key
from phone_agent.fixture import CallFixture
from phone_agent.simulator import (
    CallerStep,
    CallRecord,
    Dtmf,
    HangUp,
    Silence,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)
from phone_agent.simulator import Say as CallerSay
from phone_agent.twilio_rest_standin import TwilioRestStandIn

from .test_call_e2e import caller_tone

pytestmark = pytest.mark.anyio

ACCOUNT = "AC" + "1" * 32
TOKEN = "stand-in-token"
FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Call:
    record: CallRecord
    summary: CallSummary
    emulator: GeminiEmulator


@asynccontextmanager
async def served(
    script: EmulatorScript, settings: Settings, *, speed: float = 2.0
) -> AsyncIterator[tuple[str, GeminiEmulator, Starlette]]:
    async with GeminiEmulator(script, speed=speed) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=5)
        async with embedded_server(app) as base:
            yield base.replace("http://", "ws://") + "/twilio/media", emulator, app


async def place(
    url: str, app: Starlette, steps: Sequence[CallerStep], call_sid: str | None = None
) -> tuple[CallRecord, CallSummary]:
    call_sid = call_sid or "CA" + secrets.token_hex(16)
    parameters = app.state.phone_agent.stream_parameters(call_sid)
    simulator = TwilioCallerSimulator(url, steps, call_sid=call_sid, custom_parameters=parameters)
    with anyio.fail_after(30):
        record = await simulator.run()
        await app.state.phone_agent.wait_calls_ended(1)
    return record, app.state.phone_agent.summaries[-1]


def settings(**values: object) -> Settings:
    base: dict[str, object] = {"greeting": "", "silence_reprompt_s": 0, "silence_hang_up_s": 0}
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


def texts_sent(emulator: GeminiEmulator) -> list[str]:
    """Every text the bridge sent the model (as turns or as context), across sessions."""
    out: list[str] = []
    for session in emulator.sessions:
        for record in session.client_messages:
            if record.kind == "text":
                out.append(str(record.data.get("text", "")))
            elif record.kind == "client_content":
                for turn in record.data.get("turns", []):
                    for part in turn.get("parts", []):
                        out.append(str(part.get("text", "")))
    return out


async def test_agent_greets_first_and_only_once_across_a_go_away() -> None:
    script = EmulatorScript(
        replies=[
            Reply.of("Hello, how can I help?", Tone(700.0, 800, 0.3), trigger=Trigger.TEXT),
            Reply.of("It shipped.", Tone(900.0, 1500, 0.3), input_transcript="my order"),
            Reply.of("You're welcome.", Tone(500.0, 800, 0.3), input_transcript="thanks"),
        ],
        go_away=GoAwayAfter(2.5),
    )
    async with served(script, settings(greeting="Greet the caller.")) as (url, emulator, app):
        record, summary = await place(
            url,
            app,
            [
                WaitForAgentAudio(min_ms=700),
                WaitForAgentSilence(ms=300),
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=1400),
                WaitForAgentSilence(ms=300),
                Silence(600),
                CallerSay(caller_tone(300.0, 500)),
                WaitForAgentAudio(min_ms=700),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
    record.assert_clean()
    assert len(emulator.sessions) >= 2 and summary.handovers >= 1
    assert [t for t in texts_sent(emulator) if t == "Greet the caller."] == ["Greet the caller."]
    assert summary.tracker is not None and len(summary.tracker.turns) == 3
    assert all(turn.fully_heard for turn in summary.tracker.turns)
    assert_no_gaps_within_turns(record, limit_ms=100)


def GoAwayAfter(seconds: float) -> object:
    from phone_agent.emulator import GoAway

    # The old connection closes 1.5 s after its goAway, as Gemini's does.
    return GoAway(after_s=seconds, time_left_s=1.5, close_code=1000)


def assert_no_gaps_within_turns(record: CallRecord, *, limit_ms: float) -> None:
    """Between consecutive played slots of one answer, at most `limit_ms` of silence."""
    events = record.play_events
    gaps = [b[0] - (a[0] + a[1] / 8) for a, b in itertools.pairwise(events)]
    # Between answers the line is quiet for the caller's whole turn (their words plus the model's
    # end-of-speech wait: well over a second); any shorter gap is a break inside an answer.
    within = [g for g in gaps if 0 < g < 1000]
    assert all(g <= limit_ms for g in within), within


async def test_go_away_fixture_replays_with_a_seamless_handover() -> None:
    result = await replay.replay(CallFixture.load(FIXTURES / "go-away.json.gz"), speed="realtime")
    assert result.ok, result.report()
    assert result.summary.handovers >= 1
    assert_no_gaps_within_turns(result.record, limit_ms=100)


async def test_a_1011_drop_mid_answer_is_recovered() -> None:
    first = EmulatorScript(
        replies=[
            Reply(
                steps=[Say("Your order has", Tone(1000.0, 900, 0.3)), Close(1011)],
                input_transcript="where is my order",
            )
        ]
    )
    after = EmulatorScript(
        replies=[Reply.of("shipped on Monday.", Tone(600.0, 900, 0.3), trigger=Trigger.TEXT)]
    )
    async with served(first, settings(), speed=1.0) as (url, emulator, app):

        async def swap_script_once_connected() -> None:
            await emulator.wait_for_session(0)
            emulator.script = after  # the resumed connection continues the answer

        async with anyio.create_task_group() as group:
            group.start_soon(swap_script_once_connected)
            record, summary = await place(
                url,
                app,
                [
                    CallerSay(caller_tone(300.0, 600)),
                    WaitForAgentAudio(min_ms=1500),
                    WaitForAgentSilence(ms=400),
                    HangUp(),
                ],
            )
    record.assert_clean()
    assert summary.reconnects == 1 and summary.end_reason is EndReason.CALLER_STOP
    assert len(emulator.sessions) == 2 and emulator.sessions[0].close_code == 1011
    resumed = [t for t in texts_sent(emulator) if "connection dropped" in t]
    assert resumed and "Your order has" in resumed[0]
    assert record.heard_ms >= 1700  # both halves of the answer were heard


async def test_end_call_hangs_up_after_the_goodbye_is_heard(tmp_path: Path) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    script = EmulatorScript(
        replies=[
            Reply(
                steps=[
                    CallTools([FunctionCall("end_call", {})]),
                    Say("Goodbye, have a nice day.", Tone(800.0, 1200, 0.3)),
                ],
                input_transcript="that's all, bye",
            )
        ]
    )
    async with TwilioRestStandIn(ACCOUNT, TOKEN, calls=[call_sid]) as rest:
        config = settings(
            tools=["end_call"],
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_api_base_url=rest.base_url,
            record="all",
            record_dir=tmp_path,
            data_key=generate_key(),
        )
        async with served(script, config) as (url, _emulator, app):
            record, summary = await place(
                url, app, [CallerSay(caller_tone(300.0, 600)), Silence(20_000)], call_sid
            )
        [request] = rest.requests
        # The recorded call replays to the same outcome: goodbye heard, then the REST hang-up.
        assert summary.recording is not None
        again = await replay.replay(
            CallFixture.load(summary.recording, cipher=config.data_cipher()), settings=config
        )
        assert again.ok, again.report()
        assert len(rest.requests) == 2 and rest.requests[1].call_sid == call_sid
    assert request.call_sid == call_sid and request.params.get("Status") == "completed"
    assert rest.calls[call_sid].status == "completed"
    assert summary.end_reason is EndReason.AGENT_HANG_UP and summary.detail == "goodbye heard"
    assert summary.tracker is not None and summary.tracker.turns[-1].fully_heard
    assert record.heard_ms >= 1180  # the whole goodbye


async def test_transfer_to_human_dials_the_configured_number(tmp_path: Path) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    script = EmulatorScript(
        replies=[
            Reply(
                steps=[
                    CallTools([FunctionCall("transfer_to_human", {"reason": "refund"})]),
                    Say("Putting you through now.", Tone(800.0, 900, 0.3)),
                ],
                input_transcript="I want a person",
            )
        ]
    )
    async with TwilioRestStandIn(ACCOUNT, TOKEN, calls=[call_sid]) as rest:
        config = settings(
            tools=["transfer_to_human"],
            transfer_number="+15557654321",
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_api_base_url=rest.base_url,
            record="all",
            record_dir=tmp_path,
            data_key=generate_key(),
        )
        async with served(script, config) as (url, _emulator, app):
            _record, summary = await place(
                url, app, [CallerSay(caller_tone(300.0, 600)), Silence(20_000)], call_sid
            )
        request = rest.requests[0]
        assert summary.recording is not None
        again = await replay.replay(
            CallFixture.load(summary.recording, cipher=config.data_cipher()), settings=config
        )
        assert again.ok, again.report()
        assert [r.params.get("Twiml") for r in rest.requests] == [request.params["Twiml"]] * 2
    dial = ET.fromstring(request.params["Twiml"]).find("Dial")
    assert dial is not None and dial.text == "+15557654321"
    assert summary.end_reason is EndReason.TRANSFERRED


async def test_dtmf_digits_reach_the_model_as_text() -> None:
    script = EmulatorScript(
        replies=[Reply.of("Got it.", Tone(500.0, 400, 0.3), trigger=Trigger.TEXT)]
    )
    async with served(script, settings()) as (url, emulator, app):
        _record, summary = await place(
            url,
            app,
            [Silence(200), Dtmf("1"), Dtmf("0"), Dtmf("#"), WaitForAgentAudio(300), HangUp()],
        )
    assert "".join(summary.dtmf) == "10#"
    assert "[The caller typed 1 0 on the phone keypad.]" in texts_sent(emulator)


async def test_silence_reprompts_then_ends_the_call_politely(tmp_path: Path) -> None:
    script = EmulatorScript(
        replies=[
            Reply.of("Are you still there?", Tone(500.0, 400, 0.3), trigger=Trigger.TEXT),
            Reply.of("Goodbye.", Tone(600.0, 400, 0.3), trigger=Trigger.TEXT),
        ]
    )
    config = settings(
        silence_reprompt_s=1.0,
        silence_hang_up_s=3.0,
        record="all",
        record_dir=tmp_path,
        data_key=generate_key(),
    )
    async with served(script, config) as (url, emulator, app):
        record, summary = await place(url, app, [Silence(30_000)])
    # Replayed from its recording (at real time: silence is timed on the wall clock).
    assert summary.recording is not None
    fixture = CallFixture.load(summary.recording, cipher=config.data_cipher())
    assert [t.trigger for t in fixture.model_turns] == ["text", "text"]
    again = await replay.replay(fixture, speed="realtime", settings=config)
    assert again.ok, again.report()
    assert again.summary.end_reason is EndReason.SILENCE
    sent = texts_sent(emulator)
    assert any("still there" in t for t in sent) and any("goodbye" in t for t in sent)
    assert summary.end_reason is EndReason.SILENCE and summary.detail == "goodbye heard"
    assert record.close is not None and not record.close.by_caller


async def test_after_a_barge_in_the_model_is_told_what_was_heard() -> None:
    long_answer = "Your order left the warehouse on Monday and the courier will deliver it " * 2
    script = EmulatorScript(
        replies=[
            Reply.of(long_answer, Tone(1000.0, 6000, 0.3), input_transcript="where is it"),
            Reply.of("Sure.", Tone(600.0, 500, 0.3), input_transcript="wait"),
        ]
    )
    async with served(script, settings(), speed=1.0) as (url, emulator, app):
        record, summary = await place(
            url,
            app,
            [
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=1200),
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=300),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
    record.assert_clean()
    [note] = [t for t in texts_sent(emulator) if t.startswith("[The caller interrupted")]
    [heard] = summary.honest_notes
    assert heard and heard in note and long_answer.startswith(heard.split(" «")[0][:20])
    # Only what was heard: far less than the whole answer; and so in the call's transcript.
    assert len(heard) < len(long_answer) / 2
    agent_turns = [text for who, text in summary.transcript if who == "agent"]
    assert agent_turns[0] == heard + " …" and agent_turns[1] == "Sure."


async def test_caller_memory_is_given_to_the_model_at_session_start(tmp_path: Path) -> None:
    from phone_agent import db
    from phone_agent.memory import CallerMemory

    url = f"sqlite+aiosqlite:///{tmp_path / 'agent.db'}"
    key = generate_key()
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
        memory = CallerMemory(db.sessionmaker(engine), cipher=DataCipher([key]))
        await memory.remember("+15550001111", "Asked about order 1042.", scope="orders")
        await memory.remember("+15550002222", "Someone else's note.")
    finally:
        await engine.dispose()
    script = EmulatorScript(replies=[Reply.of("Hi again.", Tone(500.0, 300, 0.3))])
    # This test is about what reaches the model, not the recall's time budget: a loaded CI
    # machine must not make it drop the notes.
    config = settings(memory=True, database_url=url, data_key=key, memory_recall_timeout_s=5)
    async with served(script, config) as (
        url_,
        emulator,
        app,
    ):
        sid = "CA" + secrets.token_hex(16)
        parameters = app.state.phone_agent.stream_parameters(sid, **{"from": "+15550001111"})
        simulator = TwilioCallerSimulator(
            url_, [Silence(300), HangUp()], call_sid=sid, custom_parameters=parameters
        )
        with anyio.fail_after(20):
            await simulator.run()
            await app.state.phone_agent.wait_calls_ended(1)
    setup = emulator.sessions[0].setup
    assert setup is not None
    assert "Asked about order 1042." in (setup.system_instruction or "")
    assert "Someone else's note." not in (setup.system_instruction or "")
    assert "remember_for_next_call" in setup.tools


async def test_a_slow_caller_memory_never_delays_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from phone_agent import db
    from phone_agent.memory import CallerMemory

    url = f"sqlite+aiosqlite:///{tmp_path / 'agent.db'}"
    key = generate_key()
    engine = db.create_engine(url)
    try:
        await db.upgrade(engine)
        memory = CallerMemory(db.sessionmaker(engine), cipher=DataCipher([key]))
        await memory.remember("+15550001111", "Asked about order 1042.", scope="orders")
    finally:
        await engine.dispose()
    script = EmulatorScript(replies=[Reply.of("Hi.", Tone(500.0, 300, 0.3))])
    # A budget no database query meets: the call starts at once, without the notes, and says so.
    config = settings(memory=True, database_url=url, data_key=key, memory_recall_timeout_s=1e-6)
    async with served(script, config) as (url_, emulator, app):
        sid = "CA" + secrets.token_hex(16)
        parameters = app.state.phone_agent.stream_parameters(sid, **{"from": "+15550001111"})
        simulator = TwilioCallerSimulator(
            url_, [Silence(300), HangUp()], call_sid=sid, custom_parameters=parameters
        )
        with anyio.fail_after(20):
            await simulator.run()
            await app.state.phone_agent.wait_calls_ended(1)
    setup = emulator.sessions[0].setup
    assert setup is not None and "order 1042" not in (setup.system_instruction or "")
    assert any("caller memory too slow" in r.getMessage() for r in caplog.records)


async def test_session_opened_while_the_phone_rings_is_adopted_by_the_stream() -> None:
    import httpx
    from twilio.request_validator import RequestValidator

    public = "https://agent.example.com"
    call_sid = "CA" + secrets.token_hex(16)
    script = EmulatorScript(
        replies=[Reply.of("Hello!", Tone(700.0, 600, 0.3), trigger=Trigger.TEXT)]
    )
    config = settings(
        greeting="Greet the caller.",
        twilio_auth_token=TOKEN,
        public_url=public,
    )
    async with GeminiEmulator(script, setup_delay_s=0.2) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(config, gemini=target, keep_summaries=5)
        async with embedded_server(app) as base:
            form = {"CallSid": call_sid, "From": "+15550001111", "To": "+15550009999"}
            signature = RequestValidator(TOKEN).compute_signature(public + "/twilio/voice", form)
            async with httpx.AsyncClient(base_url=base) as http:
                answer = await http.post(
                    "/twilio/voice", data=form, headers={"X-Twilio-Signature": signature}
                )
            assert answer.status_code == 200
            record, summary = await place(
                base.replace("http://", "ws://") + "/twilio/media",
                app,
                [WaitForAgentAudio(min_ms=500), WaitForAgentSilence(ms=300), HangUp()],
                call_sid,
            )
    record.assert_clean()
    assert summary.prewarmed
    assert len(emulator.sessions) == 1  # the stream opened no session of its own
    assert texts_sent(emulator).count("Greet the caller.") == 1
    assert summary.tracker is not None and summary.tracker.turns[0].fully_heard


async def test_a_recorded_1011_drop_replays_and_recovers_again(tmp_path: Path) -> None:
    script = EmulatorScript(
        replies=[
            Reply.of("Hello.", Tone(700.0, 600, 0.3), input_transcript="hi"),
            Reply(
                steps=[Say("Your order has", Tone(1000.0, 900, 0.3)), Close(1011)],
                input_transcript="where is my order",
            ),
            Reply.of("shipped on Monday.", Tone(600.0, 900, 0.3), trigger=Trigger.TEXT),
        ]
    )
    config = settings(record="all", record_dir=tmp_path, data_key=generate_key())
    async with served(script, config, speed=1.0) as (url, emulator, app):
        record, summary = await place(
            url,
            app,
            [
                CallerSay(caller_tone(300.0, 500)),
                WaitForAgentAudio(min_ms=500),
                WaitForAgentSilence(ms=300),
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=1600),
                WaitForAgentSilence(ms=400),
                HangUp(),
            ],
        )
    record.assert_clean()
    assert summary.reconnects == 1 and emulator.sessions[0].close_code == 1011
    assert any("connection dropped" in t for t in summary.model_texts)
    assert summary.recording is not None
    fixture = CallFixture.load(summary.recording, cipher=config.data_cipher())
    assert [t.trigger for t in fixture.model_turns] == ["speech_end", "speech_end", "text"]
    again = await replay.replay(fixture, settings=config)
    assert again.ok, again.report()
    assert again.summary.reconnects == 1
    assert any("connection dropped" in t for t in again.summary.model_texts)


async def test_maximum_call_length_ends_with_a_spoken_goodbye() -> None:
    script = EmulatorScript(
        replies=[
            Reply.of("Sorry, we have to stop here.", Tone(600.0, 500, 0.3), trigger=Trigger.TEXT)
        ]
    )
    async with served(script, settings(max_call_s=1.0)) as (url, _emulator, app):
        record, summary = await place(url, app, [Silence(30_000)])
    assert any("time limit" in t for t in summary.model_texts)
    assert summary.end_reason is EndReason.MAX_DURATION and summary.detail == "goodbye heard"
    assert record.heard_ms >= 480 and not record.close.by_caller


def test_unreachable_model_gets_an_apology_and_a_transfer_never_dead_air() -> None:
    from starlette.testclient import TestClient
    from twilio.request_validator import RequestValidator

    from phone_agent.gemini import ModelSessionClosed

    @asynccontextmanager
    async def unreachable(**_: object) -> AsyncIterator[object]:
        raise ModelSessionClosed(1011, "service unavailable")
        yield  # pragma: no cover

    public = "https://agent.example.com"
    call_sid = "CA" + secrets.token_hex(16)
    config = settings(
        twilio_auth_token=TOKEN, public_url=public, transfer_number="+15557654321", prewarm=False
    )
    app = create_app(config, connect_model=unreachable, keep_summaries=2)  # type: ignore[arg-type]
    validator = RequestValidator(TOKEN)
    form = {"CallSid": call_sid, "From": "+15550001111"}
    with TestClient(app) as client:
        voice = client.post(
            "/twilio/voice",
            data=form,
            headers={
                "X-Twilio-Signature": validator.compute_signature(public + "/twilio/voice", form)
            },
        )
        connect = ET.fromstring(voice.text).find("Connect")
        assert connect is not None and connect.get("action") == public + "/twilio/stream-ended"
        stream = connect.find("Stream")
        assert stream is not None
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ" + call_sid[2:],
            "start": {
                "accountSid": ACCOUNT,
                "streamSid": "MZ" + call_sid[2:],
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
        with client.websocket_connect("/twilio/media") as ws:
            ws.send_json(start)
            closed = ws.receive()
        assert closed["type"] == "websocket.close"
        ended = public + "/twilio/stream-ended"
        after = client.post(
            "/twilio/stream-ended",
            data=form,
            headers={"X-Twilio-Signature": validator.compute_signature(ended, form)},
        )
    twiml = ET.fromstring(after.text)
    say, dial = twiml.find("Say"), twiml.find("Dial")
    assert say is not None and "not available" in (say.text or "")
    assert dial is not None and dial.text == "+15557654321"
    summary = app.state.phone_agent.summaries[-1]
    assert summary.end_reason is EndReason.MODEL_UNAVAILABLE


async def test_talking_over_an_answer_gemini_already_finished_clears_it() -> None:
    # speed=8: the 5 s answer is generated in well under a second, so no `interrupted` comes;
    # the caller's speech (its input transcription) must still stop the stale answer.
    script = EmulatorScript(
        replies=[
            Reply.of("A long answer " * 6, Tone(1000.0, 5000, 0.3), input_transcript="tell me"),
            Reply.of("Sure.", Tone(600.0, 500, 0.3), input_transcript="stop"),
        ]
    )
    async with served(script, settings(), speed=8.0) as (url, emulator, app):
        record, summary = await place(
            url,
            app,
            [
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=1200),
                CallerSay(caller_tone(300.0, 600)),
                WaitForAgentAudio(min_ms=300),
                WaitForAgentSilence(ms=300),
                HangUp(),
            ],
        )
    record.assert_clean()
    assert not any(r.outcome.value == "interrupted" for r in emulator.sessions[0].replies)
    [clear] = record.clears
    after = record.heard_pcm16()[int(clear.t_ms * 8) :]
    from .test_call_e2e import band_energy

    assert band_energy(after, 8000, 1000.0) < 1e-4 * band_energy(after, 8000, 600.0)
    assert summary.tracker is not None and summary.tracker.turns[0].interrupted
    assert len(summary.honest_notes) == 1 and summary.honest_notes[0]
