"""Issue #6's acceptance: a replayed call produces the log events, the metrics and a call record
whose turn timeline matches the replay's own; its cost equals the hand-computed one."""

from __future__ import annotations

import math
import secrets
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from typer.testing import CliRunner

from phone_agent import db, replay
from phone_agent.app import GeminiTarget, create_app
from phone_agent.bridge import EndReason
from phone_agent.call_store import CallStore
from phone_agent.cli import app as cli
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone, Trigger, Usage
from phone_agent.encryption import generate_key
from phone_agent.fixture import CallFixture
from phone_agent.simulator import HangUp, Silence, TwilioCallerSimulator

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"
# The seed's Gemini 2.5 Flash Live rates, USD per 1M tokens, and Twilio's per started minute.
AUDIO_IN, AUDIO_OUT, TEXT_IN, TEXT_OUT, TWILIO_MINUTE = 3.00, 12.00, 0.50, 2.00, 0.0085


def samples(metrics: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: bytes, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def configured(tmp_path: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'agent.db'}",
        "data_key": generate_key(),
    }
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


async def test_replayed_call_record_metrics_and_logs_match_the_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO")
    settings = configured(tmp_path)
    fixture = CallFixture.load(FIXTURES / "barge-in.json.gz")
    result = await replay.replay(fixture, speed="realtime", settings=settings)
    assert result.ok, result.report()
    call = result.call
    assert call is not None and call.call_sid == result.summary.call_sid

    # The record's turn timeline is the replay's: the same turns, sends, heard positions and cut;
    # "caller stopped" found by the server on the audio it received, by the replay on the audio
    # the phone sent (one 20 ms window apart at most).
    assert len(call.turns) == len(result.timeline) == 2
    for turn, row in zip(call.turns, result.timeline, strict=True):
        assert turn.generation == row.generation
        assert turn.first_sent_ms == pytest.approx(row.first_sent_ms, abs=1e-6)
        assert turn.first_heard_ms == pytest.approx(row.first_heard_ms, abs=1e-6)
        assert turn.heard_ms == pytest.approx(row.heard_ms)
        assert turn.interrupted == row.interrupted
        assert (turn.caller_stopped_ms is None) == (row.caller_stopped_ms is None)
        if row.caller_stopped_ms is not None:
            assert turn.caller_stopped_ms == pytest.approx(row.caller_stopped_ms, abs=20.0)
    cut = call.turns[0]
    assert cut.interrupted and cut.interrupt_to_clear_ms is not None
    assert call.barge_ins == 1 and call.end_reason == "caller_stop"

    # The cost is the hand-computed one, from the call's own usage reports.
    tokens = {"text_in": 0, "text_out": 0, "audio_in": 0, "audio_out": 0}
    for usage in result.summary.usage:
        tokens["text_in"] += usage.prompt_by_modality.get("TEXT", 0)
        tokens["text_out"] += usage.response_by_modality.get("TEXT", 0)
        tokens["audio_in"] += usage.prompt_tokens - usage.prompt_by_modality.get("TEXT", 0)
        tokens["audio_out"] += usage.response_tokens - usage.response_by_modality.get("TEXT", 0)
    assert sum(tokens.values()) > 0
    model_usd = (
        tokens["audio_in"] * AUDIO_IN
        + tokens["audio_out"] * AUDIO_OUT
        + tokens["text_in"] * TEXT_IN
        + tokens["text_out"] * TEXT_OUT
    ) / 1e6
    assert call.cost is not None
    assert call.cost.model_usd == pytest.approx(model_usd, rel=1e-12)
    assert call.cost.twilio_usd == pytest.approx(math.ceil(call.duration_s / 60) * TWILIO_MINUTE)

    # The same figures in /metrics.
    m = result.metrics
    assert value(m, "phone_agent_calls_total", end_reason="caller_stop") == 1
    assert value(m, "phone_agent_barge_ins_total") == 1
    assert value(m, "phone_agent_interrupt_to_clear_seconds_count") == 1
    assert value(m, "phone_agent_turn_latency_seconds_count", stage="heard") == 2
    assert value(m, "phone_agent_active_calls") == 0
    assert (
        value(m, "phone_agent_tokens_total", modality="audio", direction="out")
        == (tokens["audio_out"])
    )
    assert value(m, "phone_agent_cost_usd_total", component="model") == pytest.approx(model_usd)

    # One log event per turn heard, the barge-in, the call's start and end.
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("turn.heard") == 2 and events.count("turn.barge_in") == 1
    assert "call.start" in events
    [end] = [r for r in caplog.records if getattr(r, "event", None) == "call.end"]
    fields = end.__dict__  # the `extra=` fields the JSON line carries
    assert fields["model"] == call.model and fields["barge_ins"] == 1
    assert fields["cost"]["model_usd"] == pytest.approx(model_usd, abs=1e-6)
    assert set(fields["levels"]) == {"caller", "agent"}

    # And the record in the database, read back whole (the transcript sealed and reopened).
    engine = db.create_engine(settings.database_url or "")
    try:
        stored = await CallStore(db.sessionmaker(engine), settings.data_cipher()).get(call.call_sid)
    finally:
        await engine.dispose()
    assert stored is not None and stored.report.turns == call.turns
    assert stored.report.transcript == call.transcript and call.transcript

    # `phone-agent calls show` prints that timeline.
    monkeypatch.setenv("PHONE_AGENT_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("PHONE_AGENT_DATA_KEY", settings.data_key.get_secret_value())  # type: ignore[union-attr]
    shown = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, ["calls", "show", call.call_sid], env={"COLUMNS": "200"})
    )
    assert shown.exit_code == 0, shown.output
    assert f"{cut.first_sent_ms:,.0f}" in shown.output and "yes (clear +" in shown.output
    listed = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, ["calls", "list"], env={"COLUMNS": "200"})
    )
    assert listed.exit_code == 0 and call.call_sid[:12] in listed.output


async def test_tool_latency_reaches_the_record_and_the_metrics(tmp_path: Path) -> None:
    settings = configured(tmp_path, tools=["lookup_order", "list_recent_orders"])
    fixture = CallFixture.load(FIXTURES / "order-lookup.json.gz")
    result = await replay.replay(fixture, speed="max", settings=settings)
    assert result.ok, result.report()
    assert result.call is not None
    [use] = [u for t in result.call.turns for u in t.tools]
    assert use.name == "lookup_order" and use.status == "ok"
    assert use.latency_ms == result.summary.tool_results[0].latency_ms
    m = result.metrics
    assert value(m, "phone_agent_tool_latency_seconds_count", tool="lookup_order") == 1
    assert value(m, "phone_agent_tool_calls_total", tool="lookup_order", status="ok") == 1


async def test_a_spent_budget_ends_the_call_with_a_goodbye(tmp_path: Path) -> None:
    script = EmulatorScript(
        replies=[
            Reply.of(
                "Hello there.",
                Tone(500.0, 400, 0.3),
                trigger=Trigger.TEXT,
                usage=Usage(prompt_tokens=400_000, response_tokens=0),
            ),
            Reply.of("Sorry, I have to go. Goodbye.", Tone(600.0, 400, 0.3), trigger=Trigger.TEXT),
        ]
    )
    # 400k audio tokens in at $3/M is $1.20: over a $1 budget after the first answer.
    settings = configured(tmp_path, call_budget_usd=1.0, silence_hang_up_s=0, silence_reprompt_s=0)
    async with GeminiEmulator(script, speed=2.0) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=1)
        async with embedded_server(app) as base:
            sid = "CA" + secrets.token_hex(16)
            simulator = TwilioCallerSimulator(
                base.replace("http://", "ws://") + "/twilio/media",
                [Silence(15_000), HangUp()],
                call_sid=sid,
                custom_parameters=app.state.phone_agent.stream_parameters(sid),
            )
            with anyio.fail_after(30):
                await simulator.run()
                await app.state.phone_agent.wait_calls_ended(1)
    summary = app.state.phone_agent.summaries[-1]
    assert summary.end_reason is EndReason.BUDGET and summary.detail == "goodbye heard"
    assert summary.tracker is not None and summary.tracker.turns[-1].fully_heard
    assert len(summary.tracker.turns) == 2


def test_metrics_can_require_a_bearer_token(tmp_path: Path) -> None:
    app = create_app(configured(tmp_path, metrics_token="scrape-me"))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "phone_agent_active_calls 0.0" in ok.text
    open_app = create_app(configured(tmp_path))
    with TestClient(open_app) as client:
        assert client.get("/metrics").status_code == 200
