"""Property-based tests (hypothesis) for the code that faces the untrusted outside world:

- `TwilioStream.receive`: total over arbitrary input (typed event or `TwilioProtocolError`, never
  another exception), errors never echo the payload, the state machine holds, and media round-trip.
- The voice webhook: never a 5xx, 200 exactly for a correct signature, and then well-formed TwiML.
- `PlaybackTracker`: invariants over random sequences of audio, turn ends, barge-ins and echoes.

Each bug these properties found is pinned by a minimal example test beside them.
"""

from __future__ import annotations

import base64
import json
import re
import string
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from phone_agent.app import create_app
from phone_agent.config import Settings
from phone_agent.gemini import ModelSession
from phone_agent.playback import MarkOutcome, PlaybackTracker, SendClear, SendMark
from phone_agent.recorder import RecordingPolicy
from phone_agent.twilio_protocol import (
    MAX_GAP_FILL_MS,
    MULAW_BYTES_PER_MS,
    Connected,
    Dtmf,
    MarkEcho,
    Media,
    Start,
    Stop,
    StreamState,
    TwilioProtocolError,
    TwilioStream,
)
from phone_agent.webhook import xml_safe

# ==========================================================================================
# 1. Twilio Media Streams protocol
# ==========================================================================================

STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "2" * 32
EVENT_TYPES = (Connected, Start, Media, Dtmf, MarkEcho, Stop)
EVENT_NAMES = ("connected", "start", "media", "dtmf", "mark", "stop")
# Weighted: a `stop` (or a second `start`) early would leave little else to test.
MESSAGE_KINDS = (*EVENT_NAMES, "media", "media", "mark", "unknown")
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def protocol_settings(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


texts = st.text(max_size=12)

# Leaves of JSON-ish values, biased towards what the parser looks at.
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),  # negative, and beyond 64 bits
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.from_regex(r"[0-9]{1,16}", fullmatch=True),  # decimal strings, some over 12 digits
    st.text("٠١٢٣٤٥٦٧٨٩", min_size=1, max_size=3),  # Unicode decimal digits (int() takes them)
    st.integers(250, 3000).map(lambda n: "x" * n),  # longer than any string field may be
    st.sampled_from(
        ["", "inbound", "outbound", "audio/x-mulaw", "8000", STREAM_SID, CALL_SID, *EVENT_NAMES]
    ),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
# What a numeric field (sent as a decimal string) might carry instead.
numberish = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities serialise to non-JSON tokens
    st.booleans(),
    st.from_regex(r"-?[0-9]{1,16}(\.[0-9])?", fullmatch=True),
    st.text("0123456789+-_.e ", min_size=1, max_size=6),
    # Unicode numerics: decimals other than 0-9 (int() takes them), and '²', '①', 'Ⅻ'... (it
    # does not, although str.isdigit() holds for some).
    st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=4),
    st.text("0123456789٣۵߂²³¹₂①⑨", min_size=1, max_size=4),  # digit look-alikes
)


def marked(marker: str) -> st.SearchStrategy[Any]:
    """`marker` in places the parser looks at: inside strings, lists, keys, bad base64."""
    return st.one_of(
        st.builds(lambda a, b: a + marker + b, texts, texts),
        st.just(marker + "!"),
        st.builds(lambda: [marker]),  # builds, not just: a fresh object each time
        st.builds(lambda: {marker: marker}),
        st.integers(30, 300).map(lambda n: marker * n),
    )


sequence_numbers = st.one_of(st.integers(0, 20).map(str), st.integers(0, 20))  # dups, reorders


def _template(kind: str, draw: st.DrawFn, marker: str) -> dict[str, Any]:
    """A message Twilio could send (for `unknown`: an event it does not send)."""
    seq = draw(sequence_numbers)
    if kind == "connected":
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    if kind == "start":
        params = draw(st.dictionaries(texts, texts | st.just(marker), max_size=3))
        return {
            "event": "start",
            "sequenceNumber": seq,
            "streamSid": STREAM_SID,
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": STREAM_SID,
                "callSid": CALL_SID,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": dict(MEDIA_FORMAT),
            },
        }
    if kind == "media":
        payload = draw(st.binary(max_size=40) | st.just(marker.encode()))
        return {
            "event": "media",
            "sequenceNumber": seq,
            "streamSid": STREAM_SID,
            "media": {
                "track": "inbound",
                "chunk": str(draw(st.integers(0, 20))),
                "timestamp": str(draw(st.integers(0, 10_000))),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    if kind == "dtmf":
        digit = draw(st.sampled_from("0123456789*#ABCD"))
        return {
            "event": "dtmf",
            "sequenceNumber": seq,
            "streamSid": STREAM_SID,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    if kind == "mark":
        name = draw(texts | st.just(marker))
        return {
            "event": "mark",
            "sequenceNumber": seq,
            "streamSid": STREAM_SID,
            "mark": {"name": name},
        }
    if kind == "stop":
        return {
            "event": "stop",
            "sequenceNumber": seq,
            "streamSid": STREAM_SID,
            "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
        }
    return {"event": draw(texts), "sequenceNumber": seq, "streamSid": STREAM_SID, marker: marker}


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


NUMERIC_KEYS = frozenset({"sequenceNumber", "chunk", "timestamp", "sampleRate", "channels"})


@st.composite
def near_valid_messages(
    draw: st.DrawFn,
    marker: str,
    kinds: tuple[str, ...] = MESSAGE_KINDS,
    mutations: tuple[int, int] = (0, 3),
) -> str:
    """A valid message with some mutations (replace / delete / add a field), as JSON text, now
    and then truncated or padded with junk. `marker` is planted in values it may reach."""
    kind = draw(st.sampled_from(kinds))
    message: Any = _template(kind, draw, marker)
    weird = st.one_of(json_values, numberish, marked(marker))
    for _ in range(draw(st.integers(*mutations))):
        paths = list(_paths(message))
        leaves = [p for p in paths if p and not isinstance(_at(message, p), dict | list)]
        numeric = [p for p in leaves if p[-1] in NUMERIC_KEYS]
        where = draw(st.sampled_from(["numeric", "leaf", "leaf", "anywhere"]))
        pool = {"numeric": numeric, "leaf": leaves}.get(where) or paths
        path = draw(st.sampled_from(pool))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if op == "replace":
                message = draw(weird)
            elif isinstance(message, dict):
                message[draw(texts)] = draw(weird)
            continue
        parent = _at(message, path[:-1])
        if op == "replace":
            # Numeric fields mostly get numeric-looking values, strings mostly the marker: that
            # is where parsers slip, and where an error message might quote the input.
            original = parent[path[-1]]
            if path[-1] in NUMERIC_KEYS and draw(st.integers(0, 3)):
                parent[path[-1]] = draw(numberish)
            elif isinstance(original, str) and draw(st.integers(0, 2)):
                parent[path[-1]] = draw(marked(marker))
            else:
                parent[path[-1]] = draw(weird)
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(texts)] = draw(weird)
            elif isinstance(target, list):
                target.append(draw(weird))
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    junk = draw(st.sampled_from(["none"] * 21 + ["truncate", "prefix", "suffix"]))
    if junk == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif junk == "prefix":
        text = draw(texts) + text
    elif junk == "suffix":
        text = text + draw(texts)
    return text


markers = st.text(string.ascii_letters, min_size=10, max_size=10).map(lambda s: "MARKER" + s)


@st.composite
def inputs(draw: st.DrawFn, marker: str) -> str | bytes:
    """Mostly near-valid messages; sometimes arbitrary text or bytes."""
    source = draw(st.sampled_from(["message"] * 20 + ["text", "marked", "binary", "huge"]))
    if source == "message":
        return draw(near_valid_messages(marker))
    if source == "text":
        return draw(st.text())
    if source == "marked":
        return draw(st.text(max_size=8)) + marker + draw(st.text(max_size=8))
    if source == "binary":
        return draw(st.binary(max_size=32) | st.just(marker.encode()))
    return '{"event":"media","x":"' + marker * 5000 + '"}'  # over the 64 KiB limit


class ProtocolModel:
    """The documented state machine, kept beside the parser."""

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        self.seen_connected = False
        self.starts = 0


def feed(stream: TwilioStream, model: ProtocolModel, data: str | bytes, marker: str) -> object:
    """One `receive`: a typed event or `TwilioProtocolError` (anything else propagates and fails
    the test), checked against the model."""
    before = stream.state
    assert before is model.state
    try:
        event = stream.receive(data)
    except TwilioProtocolError as exc:
        text = str(exc)
        assert stream.state is before, "a refused message must not move the state"
        if text.startswith("unknown event "):
            # The one documented echo: an unknown event name of at most 32 characters, repr'd.
            name = orjson.loads(data)["event"]
            assert isinstance(name, str) and len(name) <= 32
            assert text == f"unknown event {name!r}"
        else:
            assert marker not in text
            assert len(text) < 200
        return exc
    assert isinstance(event, EVENT_TYPES)
    assert isinstance(data, str)
    assert before is not StreamState.STOPPED, "nothing may be accepted after stop"
    if isinstance(event, Connected):
        assert before is StreamState.AWAITING_START and not model.seen_connected
        model.seen_connected = True
    elif isinstance(event, Start):
        assert before is StreamState.AWAITING_START
        model.starts += 1
        model.state = StreamState.STREAMING
        assert model.starts == 1
        assert _SID.fullmatch(event.stream_sid) and _SID.fullmatch(event.call_sid)
        assert stream.stream_sid == event.stream_sid
    else:
        assert before is StreamState.STREAMING
        assert event.sequence_number >= 0
        if isinstance(event, Stop):
            model.state = StreamState.STOPPED
            assert len(event.call_sid) <= 64
        elif isinstance(event, Media):
            assert isinstance(event.payload, bytes)
            assert 0 <= event.gap_ms <= MAX_GAP_FILL_MS
            assert event.chunk >= 0 and event.timestamp_ms >= 0
        elif isinstance(event, Dtmf):
            assert event.digit in "0123456789*#ABCD" and len(event.digit) == 1
        elif isinstance(event, MarkEcho):
            assert len(event.name) <= 256
    assert stream.state is model.state
    return event


@protocol_settings(250)
@given(data=st.data(), marker=markers)
def test_receive_is_total_safe_and_follows_the_state_machine(
    data: st.DataObject, marker: str
) -> None:
    stream, model = TwilioStream(), ProtocolModel()
    items = data.draw(st.lists(inputs(marker), min_size=1, max_size=12))
    if data.draw(st.integers(0, 3)):  # most interesting inputs need a started stream
        items = [_valid("connected", data, marker), _valid("start", data, marker), *items]
    for item in items:
        feed(stream, model, item, marker)


@protocol_settings(600)
@given(data=st.data(), marker=markers)
def test_each_mutated_field_is_parsed_or_refused_safely(data: st.DataObject, marker: str) -> None:
    """Denser than the sequence test: one message with 1-2 mutations, in the state that parses
    all of its fields (`start` on a fresh stream, the others on a started one)."""
    stream, model = TwilioStream(), ProtocolModel()
    kind = data.draw(st.sampled_from(MESSAGE_KINDS))
    if kind not in ("start", "connected"):
        feed(stream, model, _valid("start", data, marker), marker)
    mutated = near_valid_messages(marker, kinds=(kind,), mutations=(1, 2))
    feed(stream, model, data.draw(mutated), marker)


@protocol_settings(120)
@given(data=st.data(), marker=markers)
def test_after_stop_everything_is_refused_and_start_comes_once(
    data: st.DataObject, marker: str
) -> None:
    stream, model = TwilioStream(), ProtocolModel()
    feed(stream, model, _valid("start", data, marker), marker)
    assert stream.state is StreamState.STREAMING
    # A second start, however well-formed, is refused; so is a late `connected`.
    for kind in ("start", "connected"):
        assert isinstance(feed(stream, model, _valid(kind, data, marker), marker), Exception)
    for item in data.draw(st.lists(inputs(marker), max_size=4)):
        feed(stream, model, item, marker)
    if stream.state is StreamState.STREAMING:
        assert isinstance(feed(stream, model, _valid("stop", data, marker), marker), Stop)
    assert stream.state is StreamState.STOPPED
    tail = [_valid(kind, data, marker) for kind in EVENT_NAMES]
    tail += data.draw(st.lists(inputs(marker), max_size=6))
    for item in tail:
        with pytest.raises(TwilioProtocolError):
            stream.receive(item)
    assert stream.state is StreamState.STOPPED


@st.composite
def valid_messages(draw: st.DrawFn, kind: str, marker: str) -> dict[str, Any]:
    return _template(kind, draw, marker)


def _valid(kind: str, data: st.DataObject, marker: str) -> str:
    return json.dumps(data.draw(valid_messages(kind, marker)))


mulaw_payloads = st.integers(0, 40).flatmap(lambda ms: st.binary(min_size=8 * ms, max_size=8 * ms))
# Where the next frame starts relative to the end of the audio so far: contiguous, a fillable gap,
# a resync-sized jump, or back in time (overlap, reordering).
timestamp_jumps = st.one_of(
    st.just(0),
    st.integers(1, MAX_GAP_FILL_MS),
    st.integers(MAX_GAP_FILL_MS + 1, 10**7),
    st.integers(-200, -1),
)


def _number(value: int, as_string: bool) -> int | str:
    return str(value) if as_string else value


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(st.tuples(mulaw_payloads, timestamp_jumps), min_size=1, max_size=15),
    first_timestamp=st.integers(0, 10**9),
    as_strings=st.booleans(),
    params=st.dictionaries(st.text(max_size=16), st.text(max_size=32), max_size=4),
)
def test_valid_start_and_media_round_trip_with_gap_accounting(
    frames: list[tuple[bytes, int]],
    first_timestamp: int,
    as_strings: bool,
    params: dict[str, str],
) -> None:
    stream = TwilioStream()
    start = stream.receive(
        orjson.dumps(
            {
                "event": "start",
                "sequenceNumber": _number(1, as_strings),
                "streamSid": STREAM_SID,
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": STREAM_SID,
                    "callSid": CALL_SID,
                    "tracks": ["inbound"],
                    "customParameters": params,
                    "mediaFormat": MEDIA_FORMAT,
                },
            }
        ).decode()
    )
    assert isinstance(start, Start)
    assert (start.stream_sid, start.call_sid, start.account_sid) == (
        STREAM_SID,
        CALL_SID,
        ACCOUNT_SID,
    )
    assert start.custom_parameters == params
    audio_end: int | None = None  # where the audio received so far ends, in stream ms
    for index, (payload, jump) in enumerate(frames):
        timestamp = first_timestamp if audio_end is None else max(0, audio_end + jump)
        message = {
            "event": "media",
            "sequenceNumber": _number(index + 2, as_strings),
            "streamSid": STREAM_SID,
            "media": {
                "track": "inbound",
                "chunk": _number(index + 1, as_strings),
                "timestamp": _number(timestamp, as_strings),
                "payload": base64.b64encode(payload).decode(),
            },
        }
        media = stream.receive(orjson.dumps(message).decode())
        assert isinstance(media, Media)
        assert media.payload == payload
        assert (media.sequence_number, media.chunk, media.timestamp_ms) == (
            index + 2,
            index + 1,
            timestamp,
        )
        if audio_end is None or timestamp <= audio_end:
            expected_gap = 0  # the first frame, contiguous, or overlapping/back in time
        elif timestamp - audio_end <= MAX_GAP_FILL_MS:
            expected_gap = timestamp - audio_end  # filled with silence
        else:
            expected_gap = 0  # too long: the audio clock resyncs instead
        assert media.gap_ms == expected_gap
        end = timestamp + len(payload) // MULAW_BYTES_PER_MS
        audio_end = end if audio_end is None else max(audio_end, end)


def test_non_decimal_unicode_digit_in_a_number_field_is_a_protocol_error() -> None:
    with pytest.raises(TwilioProtocolError):
        TwilioStream().receive('{"event":"start","sequenceNumber":"²"}')


# ==========================================================================================
# 2. The voice webhook
# ==========================================================================================

TOKEN = "tok"
PUBLIC = "https://agent.example.com"
VOICE = "/twilio/voice"
TWIML_FIELDS = ("CallSid", "From", "To")  # the form fields that end up in the TwiML
WEBHOOK_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@asynccontextmanager
async def _no_model() -> AsyncIterator[ModelSession]:  # pragma: no cover - never connected
    raise AssertionError("the voice webhook must never open a model session")
    yield


@pytest.fixture(scope="module")
def webhook_client() -> Iterator[TestClient]:
    # Call limits (if this build has them) would turn repeated calls from the test client's one
    # address and number away with busy TwiML: off, so that a correct signature means <Connect>.
    limits_off: dict[str, Any] = {
        name: 0
        for name in ("rate_limit_per_number", "rate_limit_per_address", "max_concurrent_calls")
        if name in Settings.model_fields
    }
    app_settings = Settings(
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        public_url=PUBLIC,
        prewarm=False,
        **limits_off,
    )
    with TestClient(create_app(app_settings, connect_model=_no_model)) as client:
        yield client


form_text = st.text(max_size=24)
twiml_text = st.text(max_size=24)  # any characters: the webhook keeps the TwiML well-formed
forms = st.builds(
    lambda extra, known: {**{k: v for k, v in extra.items() if k not in TWIML_FIELDS}, **known},
    st.dictionaries(form_text, form_text, max_size=6),
    st.fixed_dictionaries({}, optional=dict.fromkeys(TWIML_FIELDS, twiml_text)),
)
queries = st.one_of(
    st.just(""),
    st.just("consent=yes"),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(urlencode),
    # Raw query text (no control characters: the HTTP client itself refuses those in a URL).
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=30),
)


def _url(client: TestClient, query: str) -> Any:
    """The request URL as the test client will send it (it percent-encodes the query)."""
    return client.build_request("POST", VOICE + ("?" + query if query else "")).url


def _signed_url(url: Any) -> str:
    """What Twilio signs: the public URL, plus the query exactly as the server receives it."""
    query = url.query.decode("ascii")
    return PUBLIC + VOICE + ("?" + query if query else "")


def _sign(url: Any, form: dict[str, str]) -> str:
    return str(RequestValidator(TOKEN).compute_signature(_signed_url(url), form))


signatures = st.one_of(
    st.none(),
    st.text(string.ascii_letters + string.digits + "+/=", max_size=40),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
    st.just("correct"),  # replaced by the right signature
    st.just("flipped"),  # the right signature with one character changed
)


@WEBHOOK_SETTINGS
@given(form=forms, query=queries, signature=signatures)
def test_webhook_answers_403_or_200_and_200_only_when_correctly_signed(
    webhook_client: TestClient, form: dict[str, str], query: str, signature: str | None
) -> None:
    url = _url(webhook_client, query)
    correct = _sign(url, form)
    if signature == "correct":
        signature = correct
    elif signature == "flipped":
        signature = correct[:-2] + ("A" if correct[-2] != "A" else "B") + correct[-1]
    # As bytes: the client refuses non-ASCII str header values, the server decodes latin-1.
    headers = {} if signature is None else {"X-Twilio-Signature": signature.encode("latin-1")}
    response = webhook_client.post(url, data=form, headers=headers)
    assert response.status_code in (200, 403), response.text
    valid = RequestValidator(TOKEN).validate(_signed_url(url), form, signature or "")
    assert (response.status_code == 200) == valid
    if response.status_code == 403:
        assert "Connect" not in response.text and "token" not in response.text


@WEBHOOK_SETTINGS
@given(form=forms, query=queries)
def test_correctly_signed_webhook_returns_connect_stream_twiml(
    webhook_client: TestClient, form: dict[str, str], query: str
) -> None:
    url = _url(webhook_client, query)
    response = webhook_client.post(url, data=form, headers={"X-Twilio-Signature": _sign(url, form)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    connect = root.find("./Connect")
    assert connect is not None
    assert connect.get("action") == PUBLIC + "/twilio/stream-ended"
    stream = connect.find("./Stream")
    assert stream is not None
    assert stream.get("url") == "wss://agent.example.com/twilio/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params.get("token")
    # Values are carried XML-safe: characters XML cannot hold are dropped.
    assert params["call_sid"] == xml_safe(form.get("CallSid", ""))
    assert params.get("from") == (xml_safe(form["From"]) if form.get("From") else None)
    assert params.get("to") == (xml_safe(form["To"]) if form.get("To") else None)
    consent = QueryParams(url.query.decode("ascii")).get("consent") == "yes"
    assert params.get(RecordingPolicy.CONSENT_PARAMETER) == ("yes" if consent else None)


def test_signed_webhook_twiml_stays_xml_with_a_control_character(
    webhook_client: TestClient,
) -> None:
    form = {"From": "\x01"}
    url = _url(webhook_client, "")
    response = webhook_client.post(url, data=form, headers={"X-Twilio-Signature": _sign(url, form)})
    assert response.status_code == 200
    ET.fromstring(response.text)


# ==========================================================================================
# 3. Playback tracking
# ==========================================================================================

_MARK_NAME = re.compile(r"g(\d{1,9}):m(\d{1,9}):(\d{1,12})")
# Mark names carry round(sent_ms): an echo may confirm up to half a millisecond more than sent.
ROUNDING_SLACK_MS = 0.5

garbage_names = st.one_of(
    st.text(max_size=20).filter(lambda s: _MARK_NAME.fullmatch(s) is None),
    st.sampled_from(["", "g", "g1", "g1:m1", "g1:m1:", "g1:m1:1:1", " g1:m1:1", "g1:m1:-5"]),
    # Well-formed but never issued (forged, or for a generation that does not exist yet).
    st.builds("g{}:m{}:{}".format, st.integers(1, 4), st.integers(1, 9), st.integers(0, 10**5)),
    st.builds("g{}:m{}:{}".format, st.integers(10**6, 10**9 - 1), st.integers(1, 9), st.integers()),
)
audio_ms = st.one_of(st.integers(0, 400), st.floats(0, 400), st.sampled_from([20.0, 0.4, 0.6, 2.5]))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), audio_ms),
        st.tuples(st.just("audio"), audio_ms),
        st.tuples(st.just("complete"), st.none()),
        st.tuples(st.just("interrupted"), st.none()),
        st.tuples(st.just("talked_over"), st.none()),
        st.tuples(st.just("echo"), st.integers(0, 10**6)),
        st.tuples(st.just("echo"), st.integers(0, 10**6)),
        st.tuples(st.just("garbage"), garbage_names),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(ops=operations, interval=st.sampled_from([20.0, 100.0, 250.0]))
def test_playback_tracker_invariants(ops: list[tuple[str, Any]], interval: float) -> None:
    tracker = PlaybackTracker(mark_interval_ms=interval)
    issued: list[str] = []  # every mark name, in the order it was issued
    discarding = False  # between `interrupted` and the next turn complete
    cleared_heard: dict[int, float] = {}  # heard_ms of each turn when it was cleared
    now = 0.0

    def check(commands: list[SendMark | SendClear], op: str) -> None:
        for command in commands:
            if isinstance(command, SendMark):
                assert not discarding, "a mark while the interrupted turn's audio is dropped"
                assert command.name not in issued, f"mark name {command.name} issued twice"
                assert _MARK_NAME.fullmatch(command.name)
                issued.append(command.name)
            else:
                assert op in ("interrupted", "talked_over"), "only a barge-in clears the buffer"
        assert tracker.accepts_audio() is not discarding
        for turn in tracker.turns:
            assert 0.0 <= turn.heard_ms <= turn.sent_ms + ROUNDING_SLACK_MS, turn
            if turn.cleared:
                heard = cleared_heard.setdefault(turn.generation, turn.heard_ms)
                assert turn.heard_ms == heard, "an echo after the clear moved a cleared turn"
        assert [t.generation for t in tracker.turns] == list(range(1, len(tracker.turns) + 1))
        assert tracker.unheard_ms() >= 0.0

    for op, arg in ops:
        now += 0.02
        if op == "audio":
            if discarding:
                with pytest.raises(RuntimeError):
                    tracker.on_audio_sent(arg, now)
                check([], op)
            else:
                check(tracker.on_audio_sent(arg, now), op)
        elif op == "complete":
            commands = tracker.on_turn_complete(now)
            if discarding:
                assert commands == []
            discarding = False
            check(commands, op)
        elif op == "interrupted":
            discarding = True
            check(tracker.on_interrupted(now), op)
        elif op == "talked_over":
            generating = tracker.current is not None
            commands, cut = tracker.on_talked_over(now)
            if generating:  # Gemini is still generating: its own `interrupted` will come
                assert (commands, cut) == ([], None)
            if cut is None:
                assert commands == []
            else:
                assert commands == [SendClear()] and cut.cleared and cut.interrupted
            check(commands, op)
        elif op == "echo":
            if not issued:
                continue
            name = issued[arg % len(issued)]
            generation = int(name[1 : name.index(":")])
            was_cleared = tracker.turns[generation - 1].cleared
            outcome = tracker.on_mark(name, now)
            if was_cleared:
                assert outcome is None, "an echo of a cleared turn was taken as heard"
            if outcome is not None:
                assert isinstance(outcome, MarkOutcome)
                assert outcome.turn.generation == generation
            check([], op)
        else:
            outcome = tracker.on_mark(arg, now)
            if arg not in issued:
                assert outcome is None, f"mark name {arg!r} accepted but never issued"
            check([], op)

    # Let the model finish, then echo every mark in order, as Twilio does once audio has played:
    # every turn that was not cleared is then fully heard.
    discarding = False
    check(tracker.on_turn_complete(now + 0.02), "complete")
    assert tracker.current is None and tracker.accepts_audio()
    for name in issued:
        tracker.on_mark(name, now + 1.0)
    for turn in tracker.turns:
        assert turn.ended
        assert turn.fully_heard or turn.cleared, turn
    assert not tracker.playing
    check([], "echo")


def test_an_unissued_mark_name_cannot_confirm_more_than_was_sent() -> None:
    tracker = PlaybackTracker()
    assert tracker.on_audio_sent(20.0, now=0.0) == [SendMark("g1:m1:20")]
    assert tracker.on_mark("g1:m9:5000", now=0.1) is None
    assert tracker.turns[0].heard_ms <= tracker.turns[0].sent_ms
