"""The browser softphone: its routes, its event feed, and real calls from headless Chromium.

The browser tests drive Debian's Chromium (`make browser` installs it) through Playwright, with a
fake microphone that plays a WAV made from the `barge-in` fixture's caller: silence, a question,
silence, then talking over the agent's long answer. The agent is the Gemini Live emulator behind
the real app. They fail under CI=1 when Chromium or Playwright is missing, and skip visibly
elsewhere. `SOFTPHONE_SCREENSHOT_DIR=docs` writes the README's screenshots.
"""

from __future__ import annotations

import base64
import os
import shutil
import warnings
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from phone_agent.app import GeminiTarget, create_app
from phone_agent.bridge import CallSummary, EndReason
from phone_agent.config import ConfigError, Settings, load_settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone, Trigger
from phone_agent.fixture import CallFixture
from phone_agent.metrics import Metrics
from phone_agent.playback import TurnPlayback
from phone_agent.softphone import SoftphoneFeed, SoftphoneObserver

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FIXTURES = Path(__file__).parent / "fixtures"
SOFTPHONE_SECRET = "operator-secret-0123456789abcdef"
SECRETS = {
    "softphone_secret": SOFTPHONE_SECRET,
    "gemini_api_key": "AIzaSy-test-gemini-key-0123456789abcdef",
    "twilio_auth_token": "twilio-auth-token-0123456789abcdef",
    "stream_secret": "stream-secret-0123456789abcdef",
    "metrics_token": "metrics-token-0123456789abcdef",
}


def softphone_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {**SECRETS, "silence_reprompt_s": 0, "silence_hang_up_s": 0}
    return Settings(**{**values, **overrides})


# -- routes, without a browser ----------------------------------------------------------------


def test_the_softphone_is_off_without_its_secret() -> None:
    app = create_app(Settings(softphone_secret=None))
    client = TestClient(app)
    assert client.get("/softphone").status_code == 404
    assert client.get("/softphone/static/softphone.js").status_code == 404
    assert client.post("/softphone/call").status_code == 404
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/softphone/events"):
        pass


def test_the_secret_must_be_long_enough() -> None:
    with pytest.raises(ConfigError, match="PHONE_AGENT_SOFTPHONE_SECRET"):
        load_settings(softphone_secret="short")


def test_a_wrong_secret_is_refused() -> None:
    app = create_app(softphone_settings())
    client = TestClient(app)
    page = client.get("/softphone")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SOFTPHONE_SECRET}):
        assert client.post("/softphone/call", headers=headers).status_code == 401
    placed = client.post("/softphone/call", headers={"Authorization": f"Bearer {SOFTPHONE_SECRET}"})
    assert placed.status_code == 200
    call_sid = placed.json()["call_sid"]
    url = f"/softphone/events?call_sid={call_sid}"
    wrong: list[Any] = [{"secret": "wrong"}, {"token": SOFTPHONE_SECRET}, "not json", b"\x00"]
    for first in wrong:
        with client.websocket_connect(url) as ws:
            if isinstance(first, bytes):
                ws.send_bytes(first)
            elif isinstance(first, str):
                ws.send_text(first)
            else:
                ws.send_json(first)
            with pytest.raises(WebSocketDisconnect) as refused:
                ws.receive_text()
            assert refused.value.code == 1008
    with client.websocket_connect("/softphone/events?call_sid=CA0") as ws:
        ws.send_json({"secret": SOFTPHONE_SECRET})
        with pytest.raises(WebSocketDisconnect) as unknown:
            ws.receive_text()
        assert unknown.value.code == 4404


def test_a_placed_call_gets_a_stream_token_like_a_twilio_call() -> None:
    app = create_app(softphone_settings())
    body = (
        TestClient(app)
        .post("/softphone/call", headers={"Authorization": f"Bearer {SOFTPHONE_SECRET}"})
        .json()
    )
    assert body["call_sid"].startswith("CA") and body["stream_sid"].startswith("MZ")
    assert body["parameters"]["from"] == "softphone"
    assert body["parameters"]["call_sid"] == body["call_sid"]
    assert body["parameters"]["token"]
    assert body["media_url"] == "twilio/media"


# -- the feed, without a socket ----------------------------------------------------------------


def test_the_feed_publishes_a_softphone_call_and_nothing_else() -> None:
    feed = SoftphoneFeed()
    assert feed.open("CA1")
    summary = CallSummary()
    observer = SoftphoneObserver(feed, Metrics(), model="m", clock=lambda: 10.0)
    observer.follow(summary)
    observer.started("CA1", "softphone", 10.0)
    summary.transcript.append(("agent", "Hello."))
    observer.caller_audio(b"\xff" * 160)
    summary.transcript.append(("caller", "Where is"))
    summary.transcript.append(("caller", "my order?"))
    observer.caller_audio(b"\xff" * 160)
    turn = TurnPlayback(generation=2, first_sent_at=10.5, first_heard_at=10.7, heard_ms=300)
    observer.first_heard(turn)
    summary.transcript.append(("agent", "It left"))
    observer.clear_sent(turn, 11.0)
    summary.transcript[-1] = ("agent", "It …")  # talked over: only what was heard
    summary.end_reason = EndReason.CALLER_STOP
    observer.finished(summary)

    other = SoftphoneObserver(feed, Metrics(), model="m")
    other.follow(CallSummary(transcript=[("caller", "hi")]))
    other.started("CA-twilio", "+15550100001", 0.0)
    other.caller_audio(b"\xff" * 160)

    channel = feed.channel("CA1")
    assert channel is not None and feed.channel("CA-twilio") is None
    events = list(channel.history)
    assert [e["type"] for e in events] == [
        "started",
        "transcript",
        "transcript",
        "transcript",
        "turn",
        "transcript",
        "barge_in",
        "transcript",
        "ended",
    ]
    texts = [(e["index"], e["text"]) for e in events if e["type"] == "transcript"]
    assert texts == [(0, "Hello."), (1, "Where is"), (2, "my order?"), (3, "It left"), (3, "It …")]
    latency = next(e for e in events if e["type"] == "turn")
    assert latency["first_sent_ms"] == 500 and latency["first_heard_ms"] == 700
    assert latency["heard_latency_ms"] is None  # no caller speech before it
    assert events[-1]["reason"] == "caller_stop"


@pytest.mark.anyio
async def test_a_late_subscriber_gets_the_history_and_the_end() -> None:
    feed = SoftphoneFeed()
    feed.open("CA1")
    channel = feed.channel("CA1")
    assert channel is not None
    channel.publish({"type": "started"})
    early = channel.subscribe()
    channel.publish({"type": "transcript", "index": 0, "role": "agent", "text": "Hi"})
    channel.end(0.0)
    late = channel.subscribe()
    for stream in (early, late):
        async with stream:
            assert [e["type"] async for e in stream] == ["started", "transcript"]


def test_unused_and_old_channels_are_dropped() -> None:
    now = [0.0]
    feed = SoftphoneFeed(unused_after_s=60, keep_s=120, max_channels=2, clock=lambda: now[0])
    assert feed.open("CA1") and feed.open("CA2")
    assert not feed.open("CA3")  # two in use
    channel = feed.channel("CA2")
    assert channel is not None
    channel.started = True
    now[0] = 61.0
    assert feed.channel("CA1") is None  # never connected: its token is useless now
    assert feed.channel("CA2") is channel
    channel.end(now[0])
    now[0] = 182.0
    assert feed.channel("CA2") is None
    assert feed.open("CA3")


# -- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium for Playwright; the tests must run in CI, they skip visibly elsewhere."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        problem = f"Playwright is not installed ({exc}): pip install -e '.[dev]'"
    path = shutil.which("chromium")
    if problem is None and path is None:
        problem = "Chromium is not installed: `make browser` installs Debian's chromium"
    if problem is not None or path is None:
        message = problem or "no Chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the browser tests must run)", pytrace=False)
        pytest.skip(message)
    return path


def caller_wav(path: Path) -> Path:
    """The fake microphone: 3 s of silence (the greeting plays), a question (2.8 s), 1.5 s of
    silence, then 2 s of speech over the agent's answer, then silence. Made from the `barge-in`
    fixture's caller."""
    fixture = CallFixture.load(FIXTURES / "barge-in.json.gz")
    mulaw = b"".join(
        base64.b64decode(m.message["media"]["payload"])
        for m in fixture.caller
        if m.message.get("event") == "media"
    )
    speech = np.frombuffer(audioop.ulaw2lin(mulaw, 2), dtype="<i2")

    def silence(seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
        return np.zeros(int(seconds * 8000), dtype="<i2")

    pcm = np.concatenate(
        [silence(3), speech[: 8000 * 28 // 10], silence(1.5), speech[36000:52000], silence(3)]
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm.tobytes())
    return path


@asynccontextmanager
async def browser(chromium: str, microphone: Path | None = None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-gpu",
    ]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=chromium, args=args)
        try:
            yield instance
        finally:
            await instance.close()


@asynccontextmanager
async def softphone_server(script: EmulatorScript) -> AsyncIterator[tuple[str, Starlette]]:
    async with GeminiEmulator(script, speed=2.0) as emulator:
        target = GeminiTarget(emulator.base_url, "k", emulator.client_ssl_context())
        app = create_app(softphone_settings(), gemini=target, keep_summaries=5)
        async with embedded_server(app) as base_url:
            yield base_url, app


SCRIPT = EmulatorScript(
    replies=[
        Reply.of(
            "Hello, you are through to the shop.", Tone(700.0, 1200, 0.3), trigger=Trigger.TEXT
        ),
        Reply.of(
            "Your order left our warehouse this morning and is with the courier now, who will "
            "bring it to your door.",
            Tone(500.0, 8000, 0.3),
            input_transcript="Hi, where is my order?",
        ),
        Reply.of(
            "It will arrive on Friday.",
            Tone(900.0, 1000, 0.3),
            input_transcript="When will it arrive?",
        ),
    ],
)


@pytest.mark.anyio
async def test_a_call_from_the_browser_is_heard_and_barged_in_on(
    chromium: str, tmp_path: Path
) -> None:
    microphone = caller_wav(tmp_path / "caller.wav")
    async with softphone_server(SCRIPT) as (base_url, app), browser(chromium, microphone) as b:
        page = await b.new_page(viewport={"width": 1040, "height": 480})
        responses: list[Any] = []
        frames: list[str | bytes] = []
        urls: list[str] = []
        page.on("response", lambda response: responses.append(response))
        page.on("request", lambda request: urls.append(request.url))
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f)))

        await page.goto(base_url + "/softphone")
        # A wrong secret places no call.
        await page.fill("#secret", "not-the-operator-secret")
        await page.click("#call")
        await until(page, "softphone.stats.errors.length === 1")
        assert await page.text_content("#status") == "The operator secret was refused."

        await page.fill("#secret", SOFTPHONE_SECRET)
        await page.click("#call")
        stats = "softphone.stats"
        await until(page, f"{stats}.state === 'in-call'")
        # The greeting is heard, then the caller's question; the answer starts playing...
        await until(page, f"{stats}.turns.length >= 2 && {stats}.turns[1].playedMs > 700", 15)
        await screenshot(page, tmp_path, "softphone-call.png")
        # ...and is cut short when the caller talks over it.
        await until(page, f"{stats}.clears >= 1", 10)
        # The follow-up is heard in full, and every mark echoed.
        await until(
            page,
            f"{stats}.turns.length === 3 && {stats}.turns[2].ended"
            f" && {stats}.marksEchoed === {stats}.marksReceived",
            10,
        )
        await until(
            page,
            "document.querySelectorAll('#transcript li').length === 5"
            " && document.querySelectorAll('#turns tr').length === 3",
        )
        await screenshot(page, tmp_path, "softphone.png")
        await page.click("#hangup")
        await until(page, f"{stats}.feed.some(e => e.type === 'ended')")
        result = await page.evaluate(stats)
        await app.state.phone_agent.wait_calls_ended(1)
        summary: CallSummary = app.state.phone_agent.summaries[0]
        bodies = [await body_of(r) for r in responses]

    assert result["errors"] == ["The operator secret was refused."]
    assert result["violations"] == []
    assert summary.end_reason is EndReason.CALLER_STOP
    assert summary.call_sid == result["callSid"]
    assert summary.tracker is not None
    server_turns = summary.tracker.turns
    greeting, answer, follow_up = result["turns"]

    # Heard: what the page played is the agent's audio, at its pitch, in full.
    for played, hz, turn in ((greeting, 700, server_turns[0]), (follow_up, 900, server_turns[2])):
        assert not played["cleared"]
        assert played["playedMs"] == pytest.approx(turn.sent_ms, abs=1)
        assert played["hz"] == pytest.approx(hz, abs=10)
        assert played["rmsDb"] > -20
        # The server counts it heard from the page's mark echoes, which came as it played (the
        # greeting arrived in one burst: echoes sent on arrival would all come at once).
        assert turn.fully_heard
        assert turn.first_heard_at is not None and turn.last_heard_at is not None
        assert turn.last_heard_at - turn.first_heard_at > (turn.sent_ms - 150) / 1000
    assert greeting["playedMs"] == pytest.approx(1200, abs=30)

    # Barge-in: `clear` dropped what was buffered, the pending marks were echoed at once, and the
    # server's idea of what was heard agrees with what the page played.
    assert result["clears"] == 1 and summary.clears == 1
    assert answer["cleared"] and answer["discardedMs"] > 0
    assert 200 < answer["playedMs"] < 6000
    assert server_turns[1].interrupted and server_turns[1].cleared
    assert answer["playedMs"] - 250 < server_turns[1].heard_ms <= answer["playedMs"] + 1
    assert result["marksEchoedOnClear"] >= 1
    assert result["marksEchoed"] == result["marksReceived"]
    assert result["framesSent"] > 300

    # The side channel: the transcript as the caller lived it, and each turn's latency.
    assert [(e["role"], e["text"]) for e in result["transcript"]] == summary.transcript
    assert summary.transcript[1] == ("caller", "Hi, where is my order?")
    latencies = [e for e in result["feed"] if e["type"] == "turn"]
    assert len(latencies) == 3
    assert latencies[0]["heard_latency_ms"] is None  # the agent spoke first
    for event in latencies[1:]:
        assert 0 < event["heard_latency_ms"] < 3000
    barge_ins = [e for e in result["feed"] if e["type"] == "barge_in"]
    assert [e["generation"] for e in barge_ins] == [server_turns[1].generation]

    # No secret reaches the page, and the operator secret never travels in a URL.
    received = [*bodies, *(f if isinstance(f, bytes) else f.encode() for f in frames)]
    assert len(received) > 100
    for name, value in SECRETS.items():
        assert not any(value.encode() in body for body in received), name
    assert not any(SOFTPHONE_SECRET in url for url in urls)


async def until(page: Any, condition: str, timeout_s: float = 5) -> None:
    """Wait for a JavaScript condition. As a function: the page's CSP forbids evaluating strings,
    and Playwright polls an expression with eval."""
    await page.wait_for_function(f"() => ({condition})", timeout=timeout_s * 1000)


async def body_of(response: Any) -> bytes:
    """A response's headers and body, as the page received them."""
    from playwright.async_api import Error

    headers = "".join(f"{k}: {v}\n" for k, v in (await response.all_headers()).items())
    try:
        body: bytes = await response.body()
    except Error:  # redirects and the like have none
        body = b""
    return headers.encode() + body


async def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=str(tmp_path / name), full_page=True)
    target = os.environ.get("SOFTPHONE_SCREENSHOT_DIR")
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


@pytest.mark.anyio
async def test_the_audio_arithmetic_in_the_browser(chromium: str) -> None:
    """mu-law matches audioop bit for bit; the resamplers pass the phone band and stop aliases."""
    async with softphone_server(EmulatorScript()) as (base_url, _), browser(chromium) as b:
        page = await b.new_page()
        await page.goto(base_url + "/softphone")
        measured = await page.evaluate(DSP_PROBE)
    linear = np.arange(-32768, 32768, dtype="<i2")
    assert bytes(measured["encoded"]) == audioop.lin2ulaw(linear.tobytes(), 2)
    decoded = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert measured["decoded"] == decoded.tolist()
    down, up = measured["down"], measured["up"]
    assert abs(down["1000"]) < 0.1 and abs(down["3000"]) < 0.5  # dB: the phone band passes
    assert down["4500"] < -60 and down["6000"] < -60  # would alias: stopped
    assert abs(up["1000"]) < 0.1
    assert up["image"] < -60  # 8 kHz - 1 kHz: the interpolator's image


DSP_PROBE = """async () => {
  const dsp = await import(new URL("softphone/static/dsp.js", document.baseURI).href);
  const encoded = [];
  for (let x = -32768; x < 32768; x++) encoded.push(dsp.linearToMulaw(x));
  const decoded = [];
  for (let b = 0; b < 256; b++) decoded.push(dsp.mulawToLinear(b));

  // Level in dB of `f` (Hz) in `signal` at `rate`, relative to a full-scale sine, after settling.
  const level = (signal, rate, f) => {
    let re = 0, im = 0;
    const start = Math.floor(signal.length / 4);
    const n = signal.length - start;
    for (let i = start; i < signal.length; i++) {
      re += signal[i] * Math.cos(2 * Math.PI * f * i / rate);
      im += signal[i] * Math.sin(2 * Math.PI * f * i / rate);
    }
    return 20 * Math.log10(2 * Math.hypot(re, im) / n + 1e-12);
  };
  const through = (resampler, inRate, f, seconds) => {
    const input = new Float32Array(Math.round(inRate * seconds));
    for (let i = 0; i < input.length; i++) input[i] = Math.sin(2 * Math.PI * f * i / inRate);
    const out = [];
    for (let i = 0; i < input.length; i += 128) {
      resampler.push(input.subarray(i, i + 128), (y) => out.push(y));
    }
    return out;
  };
  const down = {};
  for (const f of [1000, 3000, 4500, 6000]) {
    const out = through(dsp.captureResampler(44100), 44100, f, 0.5);
    down[f] = level(out, 8000, f > 4000 ? 8000 - f : f);  // where an alias would land
  }
  const tone = through(dsp.playbackResampler(44100), 8000, 1000, 0.5);
  const up = { 1000: level(tone, 44100, 1000), image: level(tone, 44100, 7000) };
  return { encoded, decoded, down, up };
}"""
