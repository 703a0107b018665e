from __future__ import annotations

import wave
from pathlib import Path

from typer.testing import CliRunner

from phone_agent.cli import app as cli
from phone_agent.demo import bundled_fixture
from phone_agent.fixture import CallFixture

FIXTURES = Path(__file__).parent / "fixtures"


def test_bundled_demo_call_ships_in_the_package() -> None:
    fixture = CallFixture.load(bundled_fixture())
    assert fixture.model_turns and fixture.expect.turns


def test_demo_command_plays_a_call_and_writes_a_stereo_wav(tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    result = CliRunner().invoke(
        cli, ["demo", "--fixture", str(FIXTURES / "silent-caller.json.gz"), "--wav", str(wav)]
    )
    assert result.exit_code == 0, result.output
    assert "Cost estimate" in result.output and "went as recorded" in result.output
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        assert w.getnframes() >= 8000 * 2.5
