"""`phone-agent forget`: after a real call that left a note and a recording, nothing of the caller
is left in the database or on disk, and other callers' data is untouched."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from phone_agent import db
from phone_agent.app import GeminiTarget, create_app
from phone_agent.call_store import CallStore, StoredCall
from phone_agent.cli import app as cli
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import CallTools, EmulatorScript, FunctionCall, GeminiEmulator, Reply
from phone_agent.emulator import Say as ModelSay
from phone_agent.emulator import Tone as ModelTone
from phone_agent.encryption import DataCipher, generate_key
from phone_agent.erasure import forget_caller
from phone_agent.fixture import CallFixture
from phone_agent.memory import CallerMemory
from phone_agent.simulator import HangUp, TwilioCallerSimulator, WaitForAgentAudio
from phone_agent.simulator import Say as CallerSay

from .test_call_e2e import caller_tone

pytestmark = pytest.mark.anyio

CALLER = "+15550109876"
OTHER = "+15550104321"
NOTE = "Parcels go to the blue side door."


def remembering_script() -> EmulatorScript:
    return EmulatorScript(
        replies=[
            Reply(
                steps=[
                    CallTools([FunctionCall("remember_for_next_call", {"note": NOTE})]),
                    ModelSay("Noted, goodbye.", ModelTone(600.0, 500, 0.3)),
                ],
                input_transcript="please use the side door",
            )
        ]
    )


async def place_call(settings: Settings, number: str) -> Path:
    async with GeminiEmulator(remembering_script(), speed=2.0) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=1)
        async with embedded_server(app) as base:
            sid = "CA" + secrets.token_hex(16)
            simulator = TwilioCallerSimulator(
                base.replace("http://", "ws://") + "/twilio/media",
                [CallerSay(caller_tone(300.0, 600)), WaitForAgentAudio(min_ms=400), HangUp()],
                call_sid=sid,
                custom_parameters=app.state.phone_agent.stream_parameters(sid, **{"from": number}),
            )
            with anyio.fail_after(30):
                await simulator.run()
                await app.state.phone_agent.wait_calls_ended(1)
    summary = app.state.phone_agent.summaries[-1]
    assert summary.tools_called == ["remember_for_next_call"]
    assert summary.recording is not None
    return Path(summary.recording)


def configured(tmp_path: Path, key: str) -> Settings:
    return Settings(
        greeting="",
        silence_reprompt_s=0,
        silence_hang_up_s=0,
        memory=True,
        record="all",
        record_dir=tmp_path / "recordings",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'agent.db'}",
        data_key=key,
    )


def digits(number: str) -> bytes:
    return number.lstrip("+").encode()


async def test_forget_leaves_nothing_of_the_caller_in_the_database_or_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_key()
    settings = configured(tmp_path, key)
    mine = await place_call(settings, CALLER)
    theirs = await place_call(settings, OTHER)

    # At rest, sealed: neither the number nor what was said is readable in the recording.
    raw = mine.read_bytes()
    assert digits(CALLER) not in raw and b"side door" not in raw
    assert CallFixture.load(mine, cipher=settings.data_cipher()).metadata["caller"] != CALLER
    assert CALLER[-4:] not in str(mine)  # the file name does not give the number away either
    # The call records keep the transcript sealed, and the number only masked.
    before = (tmp_path / "agent.db").read_bytes()
    assert b"side door" not in before  # (the caller note is keyed by the number itself)
    assert len(await stored_calls(settings)) == 2

    for name, value in {
        "PHONE_AGENT_DATABASE_URL": settings.database_url,
        "PHONE_AGENT_RECORD_DIR": str(settings.record_dir),
        "PHONE_AGENT_DATA_KEY": key,
    }.items():
        monkeypatch.setenv(name, str(value))
    # A national spelling of the number finds the same caller.
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(cli, ["forget", "(555) 010-9876"])
    )
    assert result.exit_code == 0, result.output
    assert "removed 1 caller-memory note(s)" in result.output
    assert "removed 1 recording(s)" in result.output
    assert "removed 1 call record(s)" in result.output

    assert not mine.exists() and not mine.parent.exists()
    assert theirs.exists()  # the other caller's data stays
    database = (tmp_path / "agent.db").read_bytes()
    assert digits(CALLER) not in database
    assert digits(OTHER) in database
    engine = db.create_engine(settings.database_url or "")
    try:
        memory = CallerMemory(db.sessionmaker(engine), cipher=DataCipher([key]))
        assert await memory.recall(CALLER) == []
        assert [n.text for n in await memory.recall(OTHER)] == [NOTE]
    finally:
        await engine.dispose()
    [left] = await stored_calls(settings)
    assert left.report.caller_masked.endswith(OTHER[-2:])
    assert ("caller", "please use the side door") in left.report.transcript


async def stored_calls(settings: Settings) -> list[StoredCall]:
    engine = db.create_engine(settings.database_url or "")
    try:
        return await CallStore(db.sessionmaker(engine), settings.data_cipher()).recent()
    finally:
        await engine.dispose()


async def test_forget_finds_recordings_sealed_under_a_rotated_key(tmp_path: Path) -> None:
    old = generate_key()
    mine = await place_call(configured(tmp_path, old), CALLER)
    rotated = configured(tmp_path, f"{generate_key()},{old}")
    report = await forget_caller(rotated, CALLER)
    assert (report.notes, report.recordings, report.calls) == (1, 1, 1)
    assert not mine.exists()
    assert await forget_caller(rotated, CALLER) == type(report)()  # nothing left the second time
