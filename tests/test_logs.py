from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from phone_agent.config import Settings
from phone_agent.logs import (
    NOISY_LOGGERS,
    JsonFormatter,
    RedactSecrets,
    TextFormatter,
    configure_logging,
    mask_number,
    secret_values,
)


def test_mask_number_keeps_only_country_prefix_and_last_two_digits() -> None:
    assert mask_number("+447911123456") == "+44********56"
    assert mask_number("") == ""
    assert mask_number("123") == "***"


def test_json_formatter_emits_extra_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.event = "call.start"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello you" and line["event"] == "call.start" and line["level"] == "info"


# -- redaction: the last line of defence (see phone_agent/logs.py) -------------------------------

API_KEY = "AIzaUnitTest-api-key-0123456789"
AUTH_TOKEN = "unit-test-twilio-auth-token"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Let a test call `configure_logging`; the root logger and levels are restored after."""
    root = logging.getLogger()
    names = ("phone_agent", *NOISY_LOGGERS, "some.library")
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names}
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("phone_agent.x", logging.INFO, __file__, 1, msg, args, exc_info)


def formatted(redactor: RedactSecrets, rec: logging.LogRecord) -> str:
    assert redactor.filter(rec)
    return JsonFormatter().format(rec)


def test_registered_secrets_are_redacted_in_the_message_and_extras() -> None:
    redactor = RedactSecrets([API_KEY, AUTH_TOKEN, "short"])
    rec = record("key %s, token %s", API_KEY, AUTH_TOKEN)
    rec.detail = {"url": f"https://x/?k={AUTH_TOKEN}", "list": [API_KEY, 3]}
    line = json.loads(formatted(redactor, rec))
    assert line["msg"] == "key [redacted], token [redacted]"
    assert line["detail"] == {"url": "https://x/?k=[redacted]", "list": ["[redacted]", 3]}
    assert redactor.redactions == 4
    # Too short to be a secret worth the name: registering it must not shred every line.
    assert formatted(RedactSecrets(["short"]), record("a short line")).count("short") == 1


def test_exception_text_is_redacted_before_any_formatter_sees_it() -> None:
    try:
        raise ConnectionError(f"GET https://generativelanguage.example/ws?key={API_KEY} failed")
    except ConnectionError as exc:
        rec = record("model unreachable", exc=exc)
    line = json.loads(formatted(RedactSecrets(), rec))  # the key is not even registered
    assert API_KEY not in json.dumps(line)
    assert "?key=[redacted]" in line["exc"] and line["exc_type"] == "ConnectionError"
    # The text formatter prints the same redacted traceback.
    assert "?key=[redacted]" in TextFormatter().format(rec)


@pytest.mark.parametrize(
    ("dumped", "expected"),
    [
        (f"> x-goog-api-key: {API_KEY}", "> x-goog-api-key: [redacted]"),
        ("< X-Twilio-Signature: 8PR2977u7CsFNGL0Z5L1klxxbBY=", "< X-Twilio-Signature: [redacted]"),
        ("{'Authorization': 'Basic QUM6dG9rZW4='}", "{'Authorization': '[redacted]'}"),
        ("wss://h/ws/x?token=abc.def&other=1", "wss://h/ws/x?token=[redacted]&other=1"),
        ("('Ada', '+15550100001', 'SW1A 1AA')", "('Ada', '+15*******01', 'SW1A 1AA')"),
    ],
    ids=["api-key-header", "signature-header", "basic-auth", "query-token", "e164"],
)
def test_credential_headers_parameters_and_numbers_are_redacted_unregistered(
    dumped: str, expected: str
) -> None:
    redactor = RedactSecrets()
    assert redactor.redact(dumped) == expected
    assert redactor.redactions == 1


@pytest.mark.parametrize(
    "clean",
    ["call ended", "from +15*******01", "order 1042, 12 items", "took 1500.5 ms", "+44 20"],
)
def test_clean_lines_are_left_alone_and_not_counted(clean: str) -> None:
    redactor = RedactSecrets([API_KEY])
    rec = record(clean)
    assert json.loads(formatted(redactor, rec))["msg"] == clean
    assert redactor.redactions == 0


def test_secret_values_are_every_secret_setting_and_url_password() -> None:
    settings = Settings(
        gemini_api_key=SecretStr(API_KEY),
        twilio_auth_token=SecretStr(AUTH_TOKEN),
        stream_secret=SecretStr("stream-secret-value"),
        database_url="postgresql+asyncpg://agent:db-password-1@db.internal/shop",
        redis_url="redis://:redis-password-2@cache.internal:6379/0",
    )
    found = secret_values(settings)
    for value in (API_KEY, AUTH_TOKEN, "stream-secret-value", "db-password-1", "redis-password-2"):
        assert value in found
    assert secret_values(Settings()) == []


def test_configure_logging_redacts_every_logger_and_keeps_library_debug_out(
    root_logging: None,
) -> None:
    redactor = configure_logging("DEBUG", "json", secrets=[API_KEY])
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    logging.getLogger("phone_agent.bridge").debug("ours at debug")
    logging.getLogger("some.library").debug("a library's wire dump")
    logging.getLogger("websockets.client").info("frames")
    # A filter on the handler sees records of every logger, the libraries' included.
    logging.getLogger("some.library").warning("library error quoting %s", API_KEY)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["ours at debug", "library error quoting [redacted]"]
    assert redactor.redactions == 1
    # At INFO our loggers follow the root again.
    configure_logging("INFO", "text")
    assert not logging.getLogger("phone_agent.bridge").isEnabledFor(logging.DEBUG)
