"""Configuration from the environment (and an optional `.env` file).

Every setting has one environment variable; a bad value stops the server at start with a message
that names the variable (see `describe_validation_error`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from phone_agent.encryption import DataCipher, EncryptionError, parse_keys

if TYPE_CHECKING:
    from phone_agent.pricing import PriceTable

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly, concise phone assistant for a small online shop. You are speaking on a "
    "telephone line: keep every answer short (one or two sentences), never read out lists longer "
    "than three items, and ask one question at a time. If you do not know something, say so."
)

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class ConfigError(Exception):
    """The configuration is unusable; the message names the environment variable at fault."""


class Settings(BaseSettings):
    """All runtime settings. Field docs are the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="PHONE_AGENT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    gemini_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GEMINI_API_KEY", "gemini_api_key"),
        description="Gemini API key. Absent: offline mode, the built-in emulator answers.",
    )
    gemini_base_url: str | None = Field(
        default=None,
        description="Gemini API base URL, e.g. a local emulator (https://127.0.0.1:8765). "
        "SSL_CERT_FILE is honoured for its CA.",
    )
    model: str = Field(
        default="gemini-live-2.5-flash-preview", description="Gemini Live model name."
    )
    voice: str = Field(default="Puck", description="Prebuilt voice name.")
    language_code: str = Field(default="en-US", description="Speech language (BCP-47).")
    system_prompt: str | None = Field(default=None, description="System instruction, inline.")
    system_prompt_file: Path | None = Field(
        default=None, description="System instruction read from a UTF-8 file."
    )
    twilio_account_sid: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "twilio_account_sid"),
        description="Twilio account SID (AC…).",
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "twilio_auth_token"),
        description="Twilio auth token; webhooks are refused (403) without it.",
    )
    public_url: str | None = Field(
        default=None,
        description="The https base URL Twilio calls, e.g. https://agent.example.com. "
        "Signatures are checked against it, and the stream URL is derived from it.",
    )
    greeting: str = Field(
        default="Greet the caller in one short sentence and ask how you can help.",
        description="Instruction sent to the model when the call connects, so the agent speaks "
        "first. Empty: the caller speaks first.",
    )
    model_setup_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="A model session not set up within this (connect, TLS, setupComplete) counts "
        "as unreachable: the caller hears the apology rather than silence.",
    )
    prewarm: bool = Field(
        default=True,
        description="Open the model session at the webhook, while the phone rings, so the first "
        "words come fast.",
    )
    silence_reprompt_s: float = Field(
        default=8.0, ge=0, description="Re-prompt after this many seconds of silence (0: never)."
    )
    silence_hang_up_s: float = Field(
        default=30.0, ge=0, description="Say goodbye and end the call after this much silence."
    )
    max_call_s: float = Field(
        default=1800.0, ge=0, description="Longest call; it ends with a spoken goodbye (0: none)."
    )
    transfer_number: str | None = Field(
        default=None,
        description="Where `transfer_to_human` puts callers through, and where callers go when "
        "the model cannot be reached (E.164).",
    )
    twilio_api_base_url: str | None = Field(
        default=None,
        description="Twilio REST API base URL (tests point it at a local stand-in).",
    )
    stream_secret: SecretStr | None = Field(
        default=None,
        description="Key for stream tokens. Unset: derived from TWILIO_AUTH_TOKEN (shared by every "
        "replica), or random per process when that is unset too.",
    )
    stream_token_ttl_s: float = Field(
        default=60.0, gt=0, le=300, description="How long a stream token stays valid."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for state shared by replicas (single-use stream tokens, rate limits, "
        "call outcomes), e.g. redis://127.0.0.1:6379/0. Unset: in-process.",
    )
    redis_prefix: str = Field(
        default="phone-agent:",
        min_length=1,
        max_length=64,
        description="Prefix of every Redis key, so deployments can share one Redis.",
    )
    max_unheard_s: float = Field(
        default=90.0,
        gt=0,
        description="A phone that has not confirmed this much agent audio as played has stopped "
        "reading: the call ends rather than buffering without bound.",
    )
    rate_limit_per_number: int = Field(
        default=5, ge=0, description="Calls per minute from one number (0: no limit)."
    )
    rate_limit_per_address: int = Field(
        default=120,
        ge=0,
        description="Webhook requests per minute from one source address (0: no limit).",
    )
    max_concurrent_calls: int = Field(
        default=25,
        ge=0,
        description="Calls one process carries at once (0: no limit). 25 keeps one core at about "
        "75% (tools/loadtest.py).",
    )
    overflow_number: str | None = Field(
        default=None,
        description="Over a limit, callers are put through here (E.164) instead of hearing the "
        "busy message.",
    )
    busy_message: str = Field(
        default="Sorry, all our lines are busy right now. Please call back in a few minutes.",
        description="What callers hear when a limit turns them away.",
    )
    start_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Seconds a media socket may take to send `start`."
    )
    max_message_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest media-socket message accepted; larger closes the call.",
    )
    mark_interval_ms: int = Field(
        default=100,
        ge=20,
        le=2000,
        description="Playback position granularity: a mark is sent after this much agent audio.",
    )
    emulator_fixture: Path | None = Field(
        default=None,
        description="Offline mode only: the built-in emulator plays this recorded call's model "
        "side (for `phone-agent replay --url`).",
    )
    tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tools the model may call, comma-separated (deny by default), e.g. "
        "lookup_order,list_recent_orders.",
    )
    database_url: str | None = Field(
        default=None,
        description="Order database, e.g. postgresql+asyncpg://user@host/db. Unset: an embedded "
        "SQLite file ./phone-agent.db, created and seeded with demo data on first start.",
    )
    memory: bool = Field(
        default=False,
        description="Caller memory: short notes from earlier calls, keyed by calling number, given "
        "to the model at session start (opt-in: tell your callers). Enables the "
        "remember_for_next_call tool.",
    )
    memory_ttl_days: int = Field(default=90, ge=1, le=365, description="How long notes are kept.")
    memory_recall_timeout_s: float = Field(
        default=0.3,
        gt=0,
        le=5,
        description="How long a call's start may wait for the caller's notes; slower, the call "
        "goes on without them (and the log says so).",
    )
    record: Literal["off", "consented", "all"] = Field(
        default="off",
        description="Record calls as replayable fixtures: off, only calls whose TwiML carries "
        "record_consent=yes (webhook URL with ?consent=yes), or all calls.",
    )
    record_dir: Path = Field(
        default=Path("recordings"), description="Where recorded calls are written."
    )
    call_records: bool = Field(
        default=True,
        description="Keep a record of every call (outcome, turn timeline, tokens, cost) in the "
        "database (PHONE_AGENT_DATABASE_URL); the transcript only with a data key, sealed.",
    )
    pricing_file: Path | None = Field(
        default=None,
        description="A JSON price table overriding the built-in rates (the seed's, 2025-08-21).",
    )
    call_budget_usd: float = Field(
        default=0.0,
        ge=0,
        description="Spend limit per call in USD (model tokens + Twilio minutes); when reached "
        "the agent says goodbye and the call ends (0: no limit).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on GET /metrics. Unset: /metrics is open (keep it "
        "off the public ingress; infra/ does).",
    )
    softphone_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Operator secret for the browser softphone (/softphone), typed into the page "
        "(at least 16 characters). Unset: the softphone routes are off (404).",
    )
    live_token_client_secret: SecretStr | None = Field(
        default=None,
        description="Bearer secret first-party clients present on POST /v1/live-token to get a "
        "Gemini Live ephemeral token (at least 16 characters). Unset: the endpoint is off (404).",
    )
    live_token_ttl_s: float = Field(
        default=120.0,
        ge=10,
        le=1200,
        description="How long a minted Live token is valid; a session must start with it within "
        "60 s (or this, if shorter). Single use.",
    )
    live_token_rate_limit_per_address: int = Field(
        default=10,
        ge=0,
        description="Live tokens one source address may request per minute (0: no limit).",
    )
    data_key: SecretStr | None = Field(
        default=None,
        description="Key(s) sealing what is kept about callers: recordings, caller-memory notes, "
        "call transcripts. Comma-separated: the first encrypts, all decrypt (rotation). Required "
        "by PHONE_AGENT_RECORD and PHONE_AGENT_MEMORY. Generate with `phone-agent keygen`.",
    )
    drain_timeout_s: float = Field(
        default=600.0,
        ge=0,
        description="On SIGTERM, how long calls in progress may go on before they hear a goodbye "
        "and end; the process exits when the last call is gone.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log lines as JSON objects or plain text."
    )

    @field_validator("tools", mode="before")
    @classmethod
    def _split_tools(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("transfer_number", "overflow_number")
    @classmethod
    def _check_transfer_number(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"\+[1-9]\d{6,14}", value):
            raise ValueError("must be an E.164 number such as +15551234567")
        return value

    @field_validator("gemini_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://127.0.0.1:8765")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("must be an absolute URL such as https://agent.example.com")
        if parts.scheme != "https" and not (
            parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS
        ):
            raise ValueError("must be https (plain http is allowed only for localhost)")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return value.rstrip("/")

    @field_validator("system_prompt_file", "emulator_fixture", "pricing_file")
    @classmethod
    def _check_prompt_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @field_validator("data_key")
    @classmethod
    def _check_data_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            parse_keys(value.get_secret_value())
        except EncryptionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("live_token_client_secret")
    @classmethod
    def _check_live_token_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @model_validator(mode="after")
    def _one_prompt(self) -> Settings:
        if self.system_prompt and self.system_prompt_file:
            raise ValueError(
                "set PHONE_AGENT_SYSTEM_PROMPT or PHONE_AGENT_SYSTEM_PROMPT_FILE, not both"
            )
        return self

    @model_validator(mode="after")
    def _keep_nothing_unsealed(self) -> Settings:
        # Secure by default: features that keep caller data beyond the call need a data key.
        if self.data_key is None:
            if self.record != "off":
                raise ValueError(
                    "PHONE_AGENT_DATA_KEY is required when PHONE_AGENT_RECORD is set: recordings "
                    "are encrypted at rest (generate a key with `phone-agent keygen`)"
                )
            if self.memory:
                raise ValueError(
                    "PHONE_AGENT_DATA_KEY is required when PHONE_AGENT_MEMORY is on: caller notes "
                    "are encrypted at rest (generate a key with `phone-agent keygen`)"
                )
        return self

    def price_table(self) -> PriceTable:
        """The price table in force: `PHONE_AGENT_PRICING_FILE`, else the built-in one."""
        from phone_agent.pricing import PricingError, load_price_table  # imports the SDK

        try:
            return load_price_table(self.pricing_file)
        except PricingError as exc:
            raise ConfigError(f"PHONE_AGENT_PRICING_FILE: {exc}") from None

    def data_cipher(self) -> DataCipher | None:
        """The cipher for caller data, or None when no data key is configured."""
        if self.data_key is None:
            return None
        return DataCipher.from_setting(self.data_key.get_secret_value())

    @property
    def offline(self) -> bool:
        """No API key and no base URL: the built-in emulator plays the model."""
        return self.gemini_api_key is None and self.gemini_base_url is None

    def system_instruction(self) -> str:
        if self.system_prompt_file is not None:
            return self.system_prompt_file.read_text(encoding="utf-8")
        return self.system_prompt or DEFAULT_SYSTEM_PROMPT

    def media_stream_url(self) -> str | None:
        """The `wss://` URL Twilio must connect the media stream to."""
        if self.public_url is None:
            return None
        parts = urlsplit(self.public_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/twilio/media"


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    return f"PHONE_AGENT_{field.upper()}"


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = item.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = env_name(field) if field else "configuration"
        lines.append(f"{name}: {item.get('msg', 'invalid value')}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise `ConfigError` naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
