from __future__ import annotations

import base64
import json

import pytest

from phone_agent.twilio_protocol import (
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

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32


def start_msg(**over: object) -> str:
    body: dict[str, object] = {
        "accountSid": "AC" + "0" * 32,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"token": "t"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    body.update(over)
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": body})


def media_msg(seq: int, ts: int, payload: bytes = b"\xff" * 160, sid: str = SID) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": sid,
            "media": {
                "track": "inbound",
                "chunk": str(seq - 1),
                "timestamp": str(ts),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def started() -> TwilioStream:
    stream = TwilioStream()
    stream.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    stream.receive(start_msg())
    return stream


def test_full_sequence_parses_to_typed_events() -> None:
    stream = TwilioStream()
    assert stream.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected(
        "Call", "1.0.0"
    )
    start = stream.receive(start_msg())
    assert isinstance(start, Start)
    assert start.call_sid == CALL and start.custom_parameters == {"token": "t"}
    assert stream.state is StreamState.STREAMING
    media = stream.receive(media_msg(2, 0))
    assert media == Media(sequence_number=2, chunk=1, timestamp_ms=0, payload=b"\xff" * 160)
    dtmf = json.dumps(
        {"event": "dtmf", "sequenceNumber": "3", "streamSid": SID, "dtmf": {"digit": "7"}}
    )
    assert stream.receive(dtmf) == Dtmf(3, "7")
    mark = json.dumps(
        {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "g1:m1:40"}}
    )
    assert stream.receive(mark) == MarkEcho(4, "g1:m1:40")
    stop = json.dumps(
        {"event": "stop", "sequenceNumber": "5", "streamSid": SID, "stop": {"callSid": CALL}}
    )
    assert stream.receive(stop) == Stop(5, CALL)
    assert stream.state is StreamState.STOPPED


def test_timestamp_gap_is_reported_for_silence_fill() -> None:
    stream = started()
    assert stream.receive(media_msg(2, 0)).gap_ms == 0  # type: ignore[union-attr]
    assert stream.receive(media_msg(3, 20)).gap_ms == 0  # type: ignore[union-attr]
    gapped = stream.receive(media_msg(4, 100))
    assert isinstance(gapped, Media) and gapped.gap_ms == 60
    # A huge jump resyncs instead of filling seconds of silence at once.
    assert stream.receive(media_msg(5, 60_000)).gap_ms == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\x00\x01", "binary frame"),
        ("not json", "not valid JSON"),
        ("[1,2]", "must be an object"),
        ('{"event":"bogus"}', "unknown event"),
        ('{"nothing":1}', "no valid 'event'"),
        (media_msg(2, 0), "'media' before 'start'"),
        ("x" * 70_000, "exceeds"),
    ],
)
def test_bad_input_before_start(message: str | bytes, error: str) -> None:
    with pytest.raises(TwilioProtocolError, match=error):
        TwilioStream().receive(message)


def test_bad_input_after_start() -> None:
    bad_b64 = media_msg(2, 0).replace(base64.b64encode(b"\xff" * 160).decode(), "!!!notb64")
    cases = {
        bad_b64: "not valid base64",
        media_msg(2, 0, sid="MZother"): "another streamSid",
        start_msg(): "second 'start'",
        media_msg(2, 0).replace('"2"', '"-2"', 1): "non-negative integer",
        json.dumps(
            {"event": "dtmf", "sequenceNumber": "3", "streamSid": SID, "dtmf": {"digit": "x"}}
        ): "DTMF",
    }
    for message, error in cases.items():
        with pytest.raises(TwilioProtocolError, match=error):
            started().receive(message)


def test_start_is_validated() -> None:
    with pytest.raises(TwilioProtocolError, match="mediaFormat"):
        TwilioStream().receive(
            start_msg(mediaFormat={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        )
    with pytest.raises(TwilioProtocolError, match="SIDs"):
        TwilioStream().receive(start_msg(callSid='CA"injected'))
    with pytest.raises(TwilioProtocolError, match="customParameters"):
        TwilioStream().receive(start_msg(customParameters={"a": 1}))


def test_nothing_after_stop() -> None:
    stream = started()
    stream.receive(json.dumps({"event": "stop", "sequenceNumber": "2", "streamSid": SID}))
    with pytest.raises(TwilioProtocolError, match="after stop"):
        stream.receive(media_msg(3, 0))


def test_outbound_messages_have_twilio_shapes() -> None:
    stream = started()
    assert json.loads(stream.media(b"\x01\x02")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(b"\x01\x02").decode()},
    }
    assert json.loads(stream.mark("g1:m1:20")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "g1:m1:20"},
    }
    assert json.loads(stream.clear()) == {"event": "clear", "streamSid": SID}


def test_cannot_send_before_start() -> None:
    with pytest.raises(RuntimeError):
        TwilioStream().clear()
