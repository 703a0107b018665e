"""Function calling end to end: the emulator's model calls `lookup_order`, the bridge runs it on the
order database, and the model's spoken reply is built from the database row."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import pytest

from phone_agent import replay
from phone_agent.app import GeminiTarget, create_app
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import (
    CallTools,
    EmulatorScript,
    FunctionCall,
    GeminiEmulator,
    Reply,
    Say,
    Tone,
)
from phone_agent.encryption import generate_key
from phone_agent.fixture import CallFixture
from phone_agent.simulator import (
    HangUp,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)
from phone_agent.simulator import (
    Say as CallerSay,
)

from .test_call_e2e import caller_tone

pytestmark = pytest.mark.anyio

OWNER = "+15550100001"  # owns order 1042 in the demo data


def script() -> EmulatorScript:
    return EmulatorScript(
        replies=[
            Reply(
                steps=[
                    CallTools([FunctionCall("lookup_order", {"order_number": "one oh four two"})]),
                    Say("{summary}", from_tool_output=True),
                ],
                input_transcript="where is my order one oh four two",
            )
        ],
        default_reply=Reply.of("Anything else?", Tone(500.0, 300, 0.3)),
    )


async def test_model_reads_the_database_row_and_the_recorded_call_replays(tmp_path: Path) -> None:
    settings = Settings(
        tools=["lookup_order", "list_recent_orders"],
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}",
        record="all",
        record_dir=tmp_path / "recordings",
        data_key=generate_key(),
    )
    async with GeminiEmulator(script(), speed=2.0) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=1)
        async with embedded_server(app) as base:
            steps = [
                CallerSay(caller_tone(300.0, 700)),
                WaitForAgentAudio(min_ms=500),
                WaitForAgentSilence(ms=400),
                HangUp(),
            ]
            simulator = TwilioCallerSimulator(
                base.replace("http", "ws") + "/twilio/media",
                steps,
                call_sid=(sid := "CA" + secrets.token_hex(16)),
                custom_parameters=app.state.phone_agent.stream_parameters(sid, **{"from": OWNER}),
            )
            with anyio.fail_after(20):
                record = await simulator.run()
                await app.state.phone_agent.wait_calls_ended(1)
        [session] = emulator.sessions

    record.assert_clean()
    assert session.setup is not None
    assert sorted(session.setup.tools) == ["list_recent_orders", "lookup_order"]
    summary = app.state.phone_agent.summaries[-1]
    assert summary.tools_called == ["lookup_order"]
    [result] = summary.tool_results
    assert result.status == "ok" and result.response["output"]["verified"] is True
    # The spoken answer comes from the row: carrier and ETA of order 1042 in the demo data.
    spoken = "".join(summary.agent_transcript)
    assert "Order 1042 has shipped with UPS" in spoken and "28 November" in spoken

    recorded = CallFixture.load(summary.recording, cipher=settings.data_cipher())
    assert recorded.expect.tools_called == ("lookup_order",)
    again = await replay.replay(recorded, speed="max", settings=settings)
    assert again.ok, again.report()
    # The recording masks the caller's number, so on replay caller ID no longer proves ownership.
    assert again.summary.tools_called == ["lookup_order"]
    assert again.summary.tool_results[0].response["output"]["verified"] is False


async def test_a_stranger_gets_no_details(tmp_path: Path) -> None:
    settings = Settings(
        tools=["lookup_order"], database_url=f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    )
    async with GeminiEmulator(script(), speed=2.0) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=1)
        async with embedded_server(app) as base:
            steps = [
                CallerSay(caller_tone(300.0, 700)),
                WaitForAgentAudio(min_ms=200),
                WaitForAgentSilence(ms=400),
                HangUp(),
            ]
            simulator = TwilioCallerSimulator(
                base.replace("http", "ws") + "/twilio/media",
                steps,
                call_sid=(sid := "CA" + secrets.token_hex(16)),
                custom_parameters=app.state.phone_agent.stream_parameters(
                    sid, **{"from": "+15559999999"}
                ),
            )
            with anyio.fail_after(20):
                await simulator.run()
                await app.state.phone_agent.wait_calls_ended(1)
    [result] = app.state.phone_agent.summaries[-1].tool_results
    output = result.response["output"]
    assert output["verified"] is False and "UPS" not in str(output)
