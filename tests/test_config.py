from __future__ import annotations

from pathlib import Path

import pytest

from phone_agent.config import ConfigError, load_settings
from phone_agent.encryption import generate_key


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("GEMINI_API_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_offline() -> None:
    settings = load_settings()
    assert settings.offline
    assert settings.media_stream_url() is None


def test_api_key_and_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "sekrit-key-123")
    monkeypatch.setenv("PHONE_AGENT_PUBLIC_URL", "https://agent.example.com/")
    monkeypatch.setenv("PHONE_AGENT_MODEL", "gemini-x")
    settings = load_settings()
    assert not settings.offline
    assert settings.model == "gemini-x"
    assert settings.media_stream_url() == "wss://agent.example.com/twilio/media"
    assert "sekrit-key-123" not in repr(settings)


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("PHONE_AGENT_PUBLIC_URL", "http://agent.example.com", "PHONE_AGENT_PUBLIC_URL"),
        ("PHONE_AGENT_PUBLIC_URL", "https://a.example.com/?x=1", "PHONE_AGENT_PUBLIC_URL"),
        ("PHONE_AGENT_GEMINI_BASE_URL", "ftp://x", "PHONE_AGENT_GEMINI_BASE_URL"),
        ("PHONE_AGENT_START_TIMEOUT_S", "-1", "PHONE_AGENT_START_TIMEOUT_S"),
        ("PHONE_AGENT_LOG_LEVEL", "LOUD", "PHONE_AGENT_LOG_LEVEL"),
        ("PHONE_AGENT_DATA_KEY", "hunter2", "PHONE_AGENT_DATA_KEY"),
        ("PHONE_AGENT_RECORD", "all", "PHONE_AGENT_DATA_KEY is required"),
        ("PHONE_AGENT_MEMORY", "true", "PHONE_AGENT_DATA_KEY is required"),
        (
            "PHONE_AGENT_SYSTEM_PROMPT_FILE",
            "/nonexistent/prompt.txt",
            "PHONE_AGENT_SYSTEM_PROMPT_FILE",
        ),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_system_prompt_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Be brief.", encoding="utf-8")
    monkeypatch.setenv("PHONE_AGENT_SYSTEM_PROMPT_FILE", str(prompt))
    assert load_settings().system_instruction() == "Be brief."
    monkeypatch.setenv("PHONE_AGENT_SYSTEM_PROMPT", "Also this.")
    with pytest.raises(ConfigError, match="not both"):
        load_settings()


def test_local_http_public_url_allowed_for_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONE_AGENT_PUBLIC_URL", "http://127.0.0.1:8080")
    assert load_settings().media_stream_url() == "ws://127.0.0.1:8080/twilio/media"


def test_data_key_enables_recording_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("PHONE_AGENT_RECORD", "consented")
    monkeypatch.setenv("PHONE_AGENT_DATA_KEY", key)
    settings = load_settings()
    assert settings.data_cipher() is not None and key not in repr(settings)
    monkeypatch.setenv("PHONE_AGENT_DATA_KEY", key[:-8])
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert key not in str(info.value)
