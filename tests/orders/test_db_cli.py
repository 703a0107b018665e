from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from phone_agent.db_cli import db_app
from phone_agent.orders.demo import DEMO_ORDERS

runner = CliRunner()


def test_upgrade_then_seed_from_the_environment(tmp_path: Path) -> None:
    env = {"PHONE_AGENT_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    result = runner.invoke(db_app, ["upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert "is at revision 0004" in result.output
    assert "sqlite+aiosqlite" in result.output

    result = runner.invoke(db_app, ["seed"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(DEMO_ORDERS)} demo order(s) added" in result.output
    result = runner.invoke(db_app, ["seed"], env=env)
    assert "0 demo order(s) added" in result.output


def test_seed_migrates_first_and_takes_a_url_option(tmp_path: Path) -> None:
    result = runner.invoke(db_app, ["seed", "--url", f"sqlite+aiosqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.db").is_file()


def test_default_is_the_embedded_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PHONE_AGENT_DATABASE_URL", raising=False)
    result = runner.invoke(db_app, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "phone-agent.db").is_file()


def test_a_bad_url_names_the_variable() -> None:
    result = runner.invoke(db_app, ["upgrade"], env={"PHONE_AGENT_DATABASE_URL": "mysql://x/y"})
    assert result.exit_code == 2
    assert "PHONE_AGENT_DATABASE_URL" in result.output
