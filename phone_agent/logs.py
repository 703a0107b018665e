"""Logging: stdlib `logging`, one JSON object per line.

Structured fields travel in `extra=` (e.g. `log.info("call ended", extra={"event": "call.end",
"call_sid": sid})`) and become keys of the JSON line. Caller numbers go through `mask_number`.

Secrets never reach the log; three layers make sure of it:

1. **At the source.** Nothing logs a key, an auth token, a stream token or a signature; refusals
   log a one-word reason (`AdmissionError.reason`, "bad signature"); caller numbers are masked.
2. **Levels.** `PHONE_AGENT_LOG_LEVEL=DEBUG` turns on *our* debug lines (`phone_agent.*`) only:
   other libraries stay at INFO, and the chattiest at WARNING, because their DEBUG output is a wire
   dump. uvicorn logs every WebSocket frame and the handshake headers (`X-Twilio-Signature`) on
   `uvicorn.error`; websockets logs the SDK's request headers (`x-goog-api-key`); aiosqlite logs
   every SQL statement with its parameters (caller numbers, notes).
3. **The last line of defence: `RedactSecrets`**, a filter on the handler, so that it sees every
   record of every logger (a logger's own filter would miss records propagated from its
   children). It replaces the secret values registered at start-up (`configure_logging(...,
   secrets=secret_values(settings))`: every `SecretStr` setting and the password of any URL
   setting), the values of credential headers and query parameters (`x-goog-api-key: …`,
   `X-Twilio-Signature: …`, `Authorization: …`, `?key=…`), and masks anything shaped like an E.164
   number — in the message, in the `extra=` fields, and in exception text (a traceback is rendered
   and redacted before any formatter sees it, so an SDK error quoting its URL cannot carry the
   key). It counts what it replaced (`redactions`): the log audit (`tests/test_log_audit.py`)
   demands zero over a whole call, so the filter stays a backstop and never becomes the fix. It
   cannot know per-call values it was not told (a stream token, a number spelled without `+`):
   those are the source's job.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

if TYPE_CHECKING:
    from pydantic import BaseModel

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "color_message"}  # uvicorn's terminal-coloured copy of `msg`
)

REDACTED = "[redacted]"
# Shorter values are not secrets worth the name, and replacing them would shred every line.
MIN_SECRET_LENGTH = 6

# `name: value` / `name=value` of credential headers and query parameters, as HTTP and WebSocket
# libraries dump them at DEBUG, or as an error message quotes a URL.
_CREDENTIAL = re.compile(
    r"(?P<name>\b(?:x-goog-api-key|x-twilio-signature|authorization|proxy-authorization)"
    r"['\"]?\s*[:=]\s*['\"]?|[?&](?:key|api_key|apikey|access_token|token)=)"
    r"(?P<value>(?!\[redacted\])(?:(?:Basic|Bearer|Token)\s+)?[^\s&'\",;]+)",
    re.IGNORECASE,
)
# An E.164 number not already masked (`+15*******42` has no run of 7 digits).
_E164 = re.compile(r"(?<![\w+])\+[1-9]\d{6,14}(?!\d)")


class RedactSecrets(logging.Filter):
    """Replaces known secret values, credential headers/parameters and phone numbers in records.

    Install it on a handler (see the module docstring). `redactions` counts the replacements made.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.redactions = 0
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Register secret values; values shorter than `MIN_SECRET_LENGTH` are ignored."""
        self._secrets.update(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)
        # Longest first: a secret containing another is replaced whole.
        values = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def redact(self, text: str) -> str:
        """`text` with every secret, credential value and E.164 number replaced."""
        count = 0
        if self._pattern is not None:
            text, n = self._pattern.subn(REDACTED, text)
            count += n
        text, n = _CREDENTIAL.subn(lambda m: m["name"] + REDACTED, text)
        count += n
        text, n = _E164.subn(lambda m: mask_number(m[0]), text)
        count += n
        self.redactions += count
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]  # logged as a JSON array either way
        if isinstance(value, int | float | bool) or value is None:
            return value
        # Anything else is logged as its str() (see JsonFormatter): redact that.
        text = str(value)
        redacted = self.redact(text)
        return value if redacted == text else redacted

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: never echo them raw
            message = f"{record.msg} [unformattable arguments]"
            record.msg, record.args = message, None
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = self._value(value)
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def secret_values(settings: BaseModel) -> list[str]:
    """What `RedactSecrets` must never let through, from the settings: every `SecretStr` (and each
    comma-separated part of it, e.g. rotated keys), and the password of every URL setting."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found += [secret, *(part.strip() for part in secret.split(",") if part.strip())]
        elif isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)
    return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET_LENGTH]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            # `RedactSecrets` has rendered and redacted it already, when installed.
            entry["exc"] = _exc_text(self, record)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + _exc_text(self, record)
        return line


def _exc_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if not record.exc_text and record.exc_info:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


# Libraries that log every frame or request at DEBUG, and INFO chatter: WARNING at least.
NOISY_LOGGERS = ("websockets", "google_genai", "httpx", "httpcore", "uvicorn.access", "aiosqlite")


def configure_logging(
    level: str = "INFO", fmt: str = "json", *, secrets: Iterable[str] = ()
) -> RedactSecrets:
    """One handler on the root logger, writing to stderr, with `RedactSecrets` holding `secrets`
    (pass `secret_values(settings)`). DEBUG is for `phone_agent.*` only (see the module docstring).
    Returns the filter."""
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = RedactSecrets(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.INFO, numeric))
    # Below INFO, only our own loggers; at INFO and above they follow the root.
    logging.getLogger("phone_agent").setLevel(numeric if numeric < logging.INFO else logging.NOTSET)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
    return redactor


def mask_number(number: str | None) -> str:
    """A phone number with all but the last two digits hidden: +4479******42."""
    if not number:
        return ""
    digits = sum(ch.isdigit() for ch in number)
    if digits <= 4:
        return "*" * len(number)
    keep_head = 3 if number.startswith("+") else 2
    return number[:keep_head] + "*" * (len(number) - keep_head - 2) + number[-2:]
