"""Log audit (#5, secure by default): secrets never reach the logs.

The app is configured with recognisable secrets and logs at DEBUG through `configure_logging`, as
`phone-agent serve` sets it up, with the handler's stream swapped for a buffer: so the audit reads
exactly the lines an operator would see, every logger included (uvicorn, websockets, google_genai,
httpx, aiosqlite, ...). A recorded call is then replayed through the real webhook (signed with
Twilio's own `RequestValidator`) and the media socket, to the real SDK talking to the emulator, and
every captured line is scanned for the API key, the auth token, the stream secret, the data key,
the stream token minted in the TwiML, the Twilio signatures and the caller's number in any spelling.
The refusals (bad signature, forged and replayed tokens, a bad handshake signature) and a model
that cannot be reached are audited the same way.

In the operator's configuration the redaction filter (`phone_agent.logs.RedactSecrets`) must have
had nothing to do: the sources are clean. With every logger forced to DEBUG (someone debugging a
library), the filter is what stands between the wire dumps and the log, and must hold.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import secrets
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from phone_agent import replay
from phone_agent.admission import MemoryNonceStore, StreamTokens, derive_key
from phone_agent.app import create_app
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import GeminiEmulator
from phone_agent.fixture import CallFixture
from phone_agent.logs import NOISY_LOGGERS, RedactSecrets, configure_logging, secret_values
from phone_agent.simulator import TwilioCallerSimulator

GEMINI_API_KEY = "AIzaLogAudit-gemini-api-key-0123456789"
TWILIO_AUTH_TOKEN = "logaudit-twilio-auth-token-5f3a9c0d"
STREAM_SECRET = "logaudit-stream-secret-77b1e2aa"
DATA_KEY = base64.urlsafe_b64encode(b"logaudit data key: 32 bytes ok!!").decode()
ACCOUNT_SID = "AC" + "0" * 32
CALLER = "+15550100001"  # owns order 1042 in the demo data, so the lookup reads their row
CALLED = "+15550109999"
PUBLIC_URL = "https://agent.example.com"
FIXTURE = Path(__file__).parent / "fixtures" / "order-lookup.json.gz"


def caller_spellings(number: str) -> re.Pattern[str]:
    """The number as E.164, digits only, national, or with any separators: `+1 (555) 010-0001`."""
    digits = number.lstrip("+")
    national = digits[1:] if digits.startswith("1") else digits
    sep = r"[\s().\-]*"
    return re.compile(r"(?<!\d)(?:\+?1" + sep + ")?" + sep.join(national) + r"(?!\d)")


@pytest.mark.parametrize(
    "line",
    [CALLER, "15550100001", "5550100001", "+1 (555) 010-0001", "555.010.0001", "%2B15550100001"],
)
def test_the_scan_finds_the_number_in_any_spelling(line: str) -> None:
    assert caller_spellings(CALLER).search(f'{{"msg":"caller {line} said hi"}}')


@pytest.mark.parametrize("line", ["+15*******01", "+155501000012", "order 1042", "25550100001"])
def test_the_scan_leaves_masked_and_other_numbers_alone(line: str) -> None:
    assert not caller_spellings(CALLER).search(f'{{"msg":"caller {line} said hi"}}')


@dataclass
class AuditLog:
    """What the operator's handler wrote, and the redaction filter on it."""

    stream: io.StringIO
    redactor: RedactSecrets
    needles: dict[str, str] = field(default_factory=dict)

    def watch(self, what: str, value: str) -> None:
        """Scan the log for `value` (plain and URL-encoded), reported as `what`."""
        assert value, what
        self.needles[what] = value

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def events(self) -> list[str]:
        return [str(json.loads(line).get("event")) for line in self.lines()]

    def redacted(self) -> str:
        """For failure messages: what the filter had to catch."""
        lines = [line for line in self.lines() if "[redacted]" in line]
        return f"{self.redactor.redactions} redactions, e.g.:\n" + "\n".join(lines[:10])

    def leaks(self) -> list[str]:
        caller = caller_spellings(CALLER)
        found = []
        for line in self.lines():
            hits = [
                what
                for what, value in self.needles.items()
                if value in line or quote(value, safe="") in line
            ]
            if caller.search(line):
                hits.append("caller number")
            if hits:
                found.append(f"{', '.join(hits)}: {line}")
        return found


def audit_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "gemini_api_key": GEMINI_API_KEY,
        "twilio_auth_token": TWILIO_AUTH_TOKEN,
        "twilio_account_sid": ACCOUNT_SID,
        "stream_secret": STREAM_SECRET,
        "public_url": PUBLIC_URL,
        "log_level": "DEBUG",
        "log_format": "json",
        # What touches the caller's data: the order tools, caller memory, recording.
        "tools": ["lookup_order"],
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}",
        "memory": True,
        "data_key": DATA_KEY,
        "record": "all",
        "record_dir": tmp_path / "recordings",
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def operator_log(settings: Settings, *, every_logger_at_debug: bool = False) -> Iterator[AuditLog]:
    """`configure_logging` as `phone-agent serve` calls it, into a buffer; everything restored
    afterwards. `every_logger_at_debug`: then force every logger, libraries included, to DEBUG."""
    root = logging.getLogger()
    saved_handlers, saved_root_level = root.handlers[:], root.level
    loggers = [
        logging.getLogger(name)
        for name in {*logging.root.manager.loggerDict, *NOISY_LOGGERS, "phone_agent"}
    ]
    saved_levels = {logger: logger.level for logger in loggers}
    redactor = configure_logging(
        settings.log_level, settings.log_format, secrets=secret_values(settings)
    )
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    if every_logger_at_debug:
        root.setLevel(logging.DEBUG)
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
    audit = AuditLog(stream, redactor)
    for what, value in [
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("TWILIO_AUTH_TOKEN", TWILIO_AUTH_TOKEN),
        ("PHONE_AGENT_STREAM_SECRET", STREAM_SECRET),
        ("PHONE_AGENT_DATA_KEY", DATA_KEY),
    ]:
        audit.watch(what, value)
    try:
        yield audit
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_root_level)
        for logger, level in saved_levels.items():
            logger.setLevel(level)


def twilio_signature(url: str, form: dict[str, str], token: str = TWILIO_AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, form))


def voice_form(call_sid: str) -> dict[str, str]:
    """What Twilio posts to the voice webhook (the fields that matter here)."""
    return {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "From": CALLER,
        "Caller": CALLER,
        "To": CALLED,
        "Called": CALLED,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


async def post_webhook(
    http: httpx.AsyncClient, base: str, path: str, form: dict[str, str], signature: str
) -> httpx.Response:
    return await http.post(base + path, data=form, headers={"X-Twilio-Signature": signature})


def stream_parameters(twiml: str) -> dict[str, str]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}


async def run_replayed_call(
    audit: AuditLog,
    settings: Settings,
    fixture: CallFixture,
    emulator: GeminiEmulator,
    *,
    speed: float,
) -> None:
    """The whole call as Twilio makes it: signed webhook, media stream with the TwiML's
    parameters (and a signed handshake), then the `<Connect action>` webhook."""
    plan = replay.caller_plan(fixture)
    assert plan.call_sid is not None
    call_sid = plan.call_sid
    app = create_app(settings, keep_summaries=1)
    async with embedded_server(app) as base, httpx.AsyncClient() as http:
        form = voice_form(call_sid)
        signature = twilio_signature(PUBLIC_URL + "/twilio/voice", form)
        audit.watch("webhook signature", signature)
        answer = await post_webhook(http, base, "/twilio/voice", form, signature)
        assert answer.status_code == 200, answer.text
        parameters = stream_parameters(answer.text)
        # The number and a token really travel with the call: the scan below means something.
        assert parameters["from"] == CALLER
        audit.watch("stream token", parameters["token"])

        stream_url = settings.media_stream_url()
        assert stream_url is not None
        handshake = twilio_signature(stream_url, {})
        audit.watch("handshake signature", handshake)
        simulator = TwilioCallerSimulator(
            base.replace("http://", "ws://") + "/twilio/media",
            plan.steps,
            custom_parameters=parameters,
            call_sid=call_sid,
            stream_sid=plan.stream_sid,
            account_sid=ACCOUNT_SID,
            headers={"X-Twilio-Signature": handshake},
            speed=speed,
        )
        with anyio.fail_after(60):
            record = await simulator.run()
            await app.state.phone_agent.wait_calls_ended(1)
        summary = app.state.phone_agent.summaries[-1]
        # The call really happened: the order lookup, the answer read from the caller's row, the
        # recording. (Not the recorded timings: what is audited here is the log, and a loaded
        # machine may shift what was heard by a few hundred ms at 8x.)
        record.assert_clean()
        assert summary.tools_called == ["lookup_order"]
        transcript = "".join(summary.agent_transcript)
        assert all(words in transcript for words in fixture.expect.agent_transcript_contains)
        assert summary.recording is not None

        ended = {**form, "CallStatus": "in-progress"}
        ended_signature = twilio_signature(PUBLIC_URL + "/twilio/stream-ended", ended)
        audit.watch("stream-ended signature", ended_signature)
        answer = await post_webhook(http, base, "/twilio/stream-ended", ended, ended_signature)
        assert answer.status_code == 200 and "Hangup" in answer.text
    # The key went to the model on the wire: it had every chance to be logged.
    assert [s.api_key for s in emulator.sessions] == [GEMINI_API_KEY]


@pytest.mark.anyio
@pytest.mark.parametrize("every_logger_at_debug", [False, True], ids=["operator", "all-debug"])
async def test_a_replayed_call_logs_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_logger_at_debug: bool
) -> None:
    fixture = CallFixture.load(FIXTURE)
    async with GeminiEmulator(
        replay.emulator_script(fixture), speed=1.0, clock="audio", record_messages=False
    ) as emulator:
        # The production path: key + base URL from the settings, the emulator's CA from the env.
        monkeypatch.setenv("SSL_CERT_FILE", str(emulator.ca_file))
        settings = audit_settings(tmp_path, gemini_base_url=emulator.base_url)
        with operator_log(settings, every_logger_at_debug=every_logger_at_debug) as audit:
            # Every library dumping its wire traffic is a heavy load for a 2-core machine: then
            # the phone runs at 2x rather than 8x, so that it still keeps time.
            speed = 2.0 if every_logger_at_debug else replay.MAX_SPEED
            await run_replayed_call(audit, settings, fixture, emulator, speed=speed)

    events = audit.events()
    for event in ("webhook.voice", "call.start", "tool.args", "tool.call", "call.end"):
        assert event in events, f"{event} not logged: the audit did not see the call"
    assert audit.leaks() == []
    if every_logger_at_debug:
        # Libraries dumped headers and SQL parameters; the filter caught them.
        assert audit.redactor.redactions > 0
    else:
        # Sources are clean: the filter, a backstop, had nothing to do.
        assert audit.redactor.redactions == 0, audit.redacted()


def start_message(call_sid: str, parameters: dict[str, str]) -> str:
    stream_sid = "MZ" + secrets.token_hex(16)
    start = {
        "accountSid": ACCOUNT_SID,
        "streamSid": stream_sid,
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    message = {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start}
    return json.dumps(message)


async def media_stream_close_code(
    url: str, call_sid: str, parameters: dict[str, str], headers: dict[str, str] | None = None
) -> int | None:
    """Open the media socket as Twilio would, send `start`, and wait for the server to close."""
    async with connect(url, additional_headers=headers) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send(start_message(call_sid, parameters))
        await ws.wait_closed()
        return ws.close_code


def unreachable_base_url() -> str:
    """An https URL on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"https://127.0.0.1:{port}"


@pytest.mark.anyio
async def test_refusals_and_failures_log_no_secret(tmp_path: Path) -> None:
    """Bad signature, forged, other-call and replayed tokens, a bad handshake signature, and a
    model that cannot be reached: each is logged, none with a secret."""
    settings = audit_settings(tmp_path, gemini_base_url=unreachable_base_url())
    call_sid = "CA" + secrets.token_hex(16)
    form = voice_form(call_sid)
    with operator_log(settings) as audit:
        app = create_app(settings, keep_summaries=10)
        async with embedded_server(app) as base, httpx.AsyncClient() as http:
            media_url = base.replace("http://", "ws://") + "/twilio/media"
            # A webhook signed with the wrong auth token.
            forged_signature = twilio_signature(PUBLIC_URL + "/twilio/voice", form, "not-it")
            audit.watch("forged webhook signature", forged_signature)
            refused = await post_webhook(http, base, "/twilio/voice", form, forged_signature)
            assert refused.status_code == 403

            signature = twilio_signature(PUBLIC_URL + "/twilio/voice", form)
            audit.watch("webhook signature", signature)
            answer = await post_webhook(http, base, "/twilio/voice", form, signature)
            assert answer.status_code == 200, answer.text
            parameters = stream_parameters(answer.text)
            token = parameters["token"]
            audit.watch("stream token", token)

            # Tokens signed with another key, tampered with, or minted for another call.
            elsewhere = StreamTokens(derive_key("another-secret", None), MemoryNonceStore())
            forged = elsewhere.mint(call_sid)
            payload, mac = token.split(".")
            tampered = payload + "." + mac[::-1]
            other_call = app.state.phone_agent.stream_parameters("CA" + "7" * 32)["token"]
            for what, bad in [
                ("forged token", forged),
                ("tampered token", tampered),
                ("other call's token", other_call),
            ]:
                audit.watch(what, bad)
                code = await media_stream_close_code(
                    media_url, call_sid, {**parameters, "token": bad}
                )
                assert code == 1008, what

            # A handshake signed with the wrong auth token is refused before the socket opens.
            bad_handshake = twilio_signature(PUBLIC_URL + "/twilio/media", {}, "not-it")
            audit.watch("forged handshake signature", bad_handshake)
            with pytest.raises(InvalidStatus):
                await media_stream_close_code(
                    media_url, call_sid, parameters, {"X-Twilio-Signature": bad_handshake}
                )

            # The real token, but the model cannot be reached: the call is handed back to Twilio,
            # which asks what to do next and hears the apology.
            assert await media_stream_close_code(media_url, call_sid, parameters) is not None
            with anyio.fail_after(30):
                await app.state.phone_agent.wait_calls_ended(4)
            ended_signature = twilio_signature(PUBLIC_URL + "/twilio/stream-ended", form)
            audit.watch("stream-ended signature", ended_signature)
            apology = await post_webhook(http, base, "/twilio/stream-ended", form, ended_signature)
            assert apology.status_code == 200 and "Say" in apology.text

            # Once used, the token is refused.
            assert await media_stream_close_code(media_url, call_sid, parameters) == 1008
            with anyio.fail_after(5):
                await app.state.phone_agent.wait_calls_ended(5)

    logged = [json.loads(line) for line in audit.lines()]
    refusals = " ".join(str(e["msg"]) for e in logged if e.get("event") == "call.rejected")
    for reason in ("forged", "wrong_call", "replayed", "bad handshake signature"):
        assert reason in refusals, refusals
    assert any(e.get("reason") == "model_unavailable" for e in logged)
    assert any(e.get("outcome") == "refused: bad signature" for e in logged)
    assert audit.leaks() == []
    assert audit.redactor.redactions == 0, audit.redacted()
