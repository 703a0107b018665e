from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from phone_agent.app import create_app
from phone_agent.config import Settings
from phone_agent.gemini import ModelSession

TOKEN = "test-auth-token"
PUBLIC = "https://agent.example.com"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+15551234567", "To": "+15557654321"}


@asynccontextmanager
async def no_model() -> AsyncIterator[ModelSession]:  # pragma: no cover - never connected here
    raise AssertionError("no model session expected")
    yield


def client(**settings: object) -> TestClient:
    values: dict[str, object] = {"twilio_auth_token": TOKEN, "public_url": PUBLIC}
    values.update(settings)
    return TestClient(create_app(Settings(**values), connect_model=no_model))  # type: ignore[arg-type]


def sign(url: str, form: dict[str, str]) -> str:
    return str(RequestValidator(TOKEN).compute_signature(url, form))


def test_signed_webhook_gets_connect_stream_twiml() -> None:
    with client() as c:
        sig = sign(PUBLIC + "/twilio/voice", FORM)
        # The request arrives as plain http on another host (TLS terminated upstream).
        r = c.post(
            "http://backend.internal:8080/twilio/voice",
            data=FORM,
            headers={"X-Twilio-Signature": sig},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://agent.example.com/twilio/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["call_sid"] == FORM["CallSid"] and params["from"] == FORM["From"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        {"X-Twilio-Signature": sign("http://agent.example.com/twilio/voice", FORM)},
        {"X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", {**FORM, "From": "+1999"})},
    ],
    ids=["unsigned", "garbage", "wrong-scheme", "other-params"],
)
def test_unsigned_or_wrongly_signed_webhook_is_403(headers: dict[str, str]) -> None:
    with client() as c:
        r = c.post("/twilio/voice", data=FORM, headers=headers)
    assert r.status_code == 403
    assert "Connect" not in r.text


def test_webhook_refused_without_auth_token() -> None:
    with client(twilio_auth_token=None) as c:
        sig = sign(PUBLIC + "/twilio/voice", FORM)
        r = c.post("/twilio/voice", data=FORM, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 403


def test_health_and_readiness() -> None:
    with client() as c:
        assert c.get("/healthz").json() == {"status": "alive"}
        ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
