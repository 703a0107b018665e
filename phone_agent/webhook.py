"""Twilio's voice webhook: signature check and the TwiML that connects the media stream."""

from __future__ import annotations

import logging

from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from phone_agent.logs import mask_number

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"


def signed_url(public_url: str, path: str, query: str) -> str:
    """The URL Twilio signed: the configured public base, never the request's own host/scheme."""
    url = public_url.rstrip("/") + path
    return f"{url}?{query}" if query else url


def signature_is_valid(
    auth_token: str, url: str, params: dict[str, str], signature: str | None
) -> bool:
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def connect_twiml(stream_url: str, parameters: dict[str, str], *, action: str | None = None) -> str:
    """`<Connect><Stream>`, bidirectional; per-call data goes in `<Parameter>`s, not the URL."""
    response = VoiceResponse()
    # With an action, Twilio asks us what to do once the stream ends (apology, hang-up).
    connect = Connect(action=action) if action else Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


APOLOGY = "Sorry, our assistant is not available right now."


def apology_twiml(transfer_number: str | None) -> str:
    """No model: apologise, then put the caller through or ask them to call back later."""
    response = VoiceResponse()
    if transfer_number:
        response.say(APOLOGY + " Let me put you through to a colleague.")
        response.dial(transfer_number)
    else:
        response.say(APOLOGY + " Please call back in a few minutes. Goodbye.")
        response.hangup()
    return str(response)


def hang_up_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def busy_twiml(message: str, overflow_number: str | None = None) -> str:
    """Turned away at the door: a polite message, then a hang-up or the overflow number."""
    response = VoiceResponse()
    response.say(message)
    if overflow_number:
        response.dial(overflow_number)
    else:
        response.hangup()
    return str(response)


def xml_safe(value: str, limit: int = 128) -> str:
    """Characters XML 1.0 cannot carry (controls, lone surrogates) removed; length bounded."""
    kept = (
        ch
        for ch in value
        if ch in "\t\n\r"
        or ("\x20" <= ch <= "\ud7ff")
        or ("\ue000" <= ch <= "\ufffd")
        or ("\U00010000" <= ch <= "\U0010ffff")
    )
    return "".join(kept)[:limit]


def call_parameters(form: dict[str, str]) -> dict[str, str]:
    """What the media stream learns about the call, from the webhook's form (XML-safe)."""
    params = {"call_sid": xml_safe(form.get("CallSid", ""))}
    if form.get("From"):
        params["from"] = xml_safe(form["From"])
    if form.get("To"):
        params["to"] = xml_safe(form["To"])
    return params


def log_webhook(form: dict[str, str], outcome: str) -> None:
    log.info(
        "voice webhook %s",
        outcome,
        extra={
            "event": "webhook.voice",
            "outcome": outcome,
            "call_sid": form.get("CallSid", ""),
            "from": mask_number(form.get("From")),
        },
    )
