"""Replays a recorded call (`phone_agent.fixture`) through the bridge and checks its outcome.

The caller side goes through the Twilio caller simulator, frame by frame, with the recording's
gaps, DTMF and hang-up. The model side goes to the Gemini Live emulator as one reply per recorded
turn, fired by the same trigger as in the recording (the caller stopping talking, text, a tool
response), so the model reacts to the bridge instead of playing blind.

Determinism: the emulator paces recorded turns by the caller *audio* clock (`clock="audio"`), and
its voice-activity detection counts audio, not wall time. So turns start, and barge-ins cut them,
at the same points of the call whatever the machine's load or the replay speed. What varies is
transport latency; the expectations' tolerances cover it (`HEARD_TOLERANCE_MS`), and the timeline
of two replays of one fixture agrees within `TIMELINE_TOLERANCE_MS` at real-time speed.

Speeds: `realtime` runs the phone at 1×; `max` at `MAX_SPEED`× — the fastest pace at which a
2-core machine still delivers each 20 ms frame on time, so timing stays meaningful.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from phone_agent.bridge import CallSummary
from phone_agent.call_report import CallReport, caller_stopped_before
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import (
    Close,
    EmulatorScript,
    GeminiEmulator,
    GoAway,
    Recorded,
    Reply,
    Trigger,
)
from phone_agent.fixture import CallFixture, Expectations
from phone_agent.model_link import CLOSED_MARKER
from phone_agent.observer import SPEECH_END_SILENCE_MS
from phone_agent.simulator import (
    CallerStep,
    CallRecord,
    Dtmf,
    Gap,
    HangUp,
    Say,
    TwilioCallerSimulator,
)
from phone_agent.vad import EnergyVad, SpeechEnded

Speed = Literal["realtime", "max"]
MAX_SPEED = 8.0
TIMELINE_TOLERANCE_MS = 80.0
_FRAME_MS = 20


class ReplayError(Exception):
    """The fixture cannot be replayed (e.g. it has no `start`)."""


# -- fixture → peers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallerPlan:
    steps: list[CallerStep]
    custom_parameters: dict[str, str]
    call_sid: str | None
    stream_sid: str | None
    account_sid: str | None


def caller_plan(fixture: CallFixture) -> CallerPlan:
    """The fixture's caller side as simulator steps (frames, gaps, DTMF, hang-up)."""
    steps: list[CallerStep] = []
    pending = bytearray()
    expected_ts: int | None = None
    start: Mapping[str, Any] | None = None

    def flush() -> None:
        if pending:
            steps.append(Say(bytes(pending)))
            pending.clear()

    for item in fixture.caller:
        message = item.message
        event = message.get("event")
        if event == "start":
            body = message.get("start")
            start = body if isinstance(body, Mapping) else {}
        elif event == "media":
            media = message.get("media") or {}
            try:
                payload = base64.b64decode(str(media.get("payload", "")), validate=True)
                timestamp = int(str(media.get("timestamp", "0")))
            except (binascii.Error, ValueError):
                raise ReplayError(f"fixture {fixture.name}: bad media message") from None
            if expected_ts is not None and timestamp > expected_ts:
                gap = timestamp - expected_ts
                if gap >= _FRAME_MS:
                    flush()
                    steps.append(Gap(gap - gap % _FRAME_MS))
            expected_ts = timestamp + len(payload) // 8
            pending += payload
        elif event == "dtmf":
            flush()
            digit = str((message.get("dtmf") or {}).get("digit", ""))
            steps.append(Dtmf(digit))
        elif event == "stop":
            flush()
            steps.append(HangUp())
    flush()
    if start is None:
        raise ReplayError(f"fixture {fixture.name}: the caller side has no 'start'")
    params = start.get("customParameters") or {}
    return CallerPlan(
        steps=steps,
        custom_parameters={str(k): str(v) for k, v in params.items()},
        call_sid=_str_or_none(start.get("callSid")),
        stream_sid=_str_or_none(start.get("streamSid")),
        account_sid=_str_or_none(start.get("accountSid")),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def emulator_script(fixture: CallFixture) -> EmulatorScript:
    """The fixture's model side: one reply per recorded turn, plus the recorded `goAway`."""
    # A turn recorded as interrupted stops where the caller cut in; `Recorded` keeps such a turn
    # "generating" until the replayed caller cuts in again.
    replies = []
    for turn in fixture.model_turns:
        messages = [(m.t_ms, m.message) for m in turn.messages if CLOSED_MARKER not in m.message]
        steps: list[Recorded | Close] = [Recorded(messages)]
        closed = [m for m in turn.messages if CLOSED_MARKER in m.message]
        if closed:
            # The recorded connection failed here: fail the replayed one the same way.
            info = closed[0].message[CLOSED_MARKER]
            code = info.get("code") if isinstance(info, Mapping) else None
            steps.append(Close(code if isinstance(code, int) else 1011))
        replies.append(Reply(steps=steps, trigger=Trigger(turn.trigger)))
    go_away = None
    for event in fixture.session_events:
        body = event.message.get("goAway") or event.message.get("go_away")
        if isinstance(body, Mapping):
            left = str(body.get("timeLeft") or body.get("time_left") or "0s").rstrip("s")
            go_away = GoAway(after_s=event.t_ms / 1000.0, time_left_s=float(left), close_code=None)
            break
    # Past the recording the model says nothing: an unscripted trigger gets silence.
    silent = Reply(steps=[], trigger=Trigger.ANY)
    return EmulatorScript(replies=replies, default_reply=silent, go_away=go_away)


# -- timeline -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnTimeline:
    """One model turn on the call clock (ms since the stream started)."""

    generation: int
    caller_stopped_ms: float | None
    first_sent_ms: float
    first_heard_ms: float | None
    sent_ms: float
    heard_ms: float
    interrupted: bool
    clear_ms: float | None

    def describe(self) -> str:
        parts = []
        if self.caller_stopped_ms is not None:
            parts.append(
                f"caller stopped {self.caller_stopped_ms:7.0f} ms → first audio sent "
                f"+{self.first_sent_ms - self.caller_stopped_ms:4.0f} ms"
            )
        else:
            parts.append(f"first audio sent at {self.first_sent_ms:7.0f} ms")
        if self.first_heard_ms is not None:
            parts.append(f"heard +{self.first_heard_ms - self.first_sent_ms:4.0f} ms")
        parts.append(f"{self.heard_ms:5.0f}/{self.sent_ms:5.0f} ms heard")
        if self.interrupted:
            cut = f" → clear at {self.clear_ms:.0f} ms" if self.clear_ms is not None else ""
            parts.append(f"INTERRUPTED{cut}")
        return f"turn {self.generation}: " + ", ".join(parts)


def caller_speech_ends(record: CallRecord) -> list[float]:
    """When the caller stopped talking (call ms), by the same energy detector the emulator and the
    server's `observer.CallObserver` use."""
    silence_ms = SPEECH_END_SILENCE_MS
    vad = EnergyVad(silence_ms=silence_ms)
    pcm = record.caller_pcm16().tobytes()
    return [
        event.at_ms - silence_ms for event in vad.feed(pcm, 8000) if isinstance(event, SpeechEnded)
    ]


def build_timeline(summary: CallSummary, record: CallRecord) -> list[TurnTimeline]:
    if summary.tracker is None:
        return []
    origin = summary.started_at
    ends = caller_speech_ends(record)
    clears = [c.t_ms for c in record.clears]
    rows = []
    for turn in summary.tracker.turns:
        sent = (turn.first_sent_at - origin) * 1000.0
        stopped = caller_stopped_before(ends, sent)
        heard = (turn.first_heard_at - origin) * 1000.0 if turn.first_heard_at else None
        clear = next((c for c in clears if c >= sent), None) if turn.interrupted else None
        rows.append(
            TurnTimeline(
                generation=turn.generation,
                caller_stopped_ms=stopped,
                first_sent_ms=sent,
                first_heard_ms=heard,
                sent_ms=turn.sent_ms,
                heard_ms=turn.heard_ms,
                interrupted=turn.interrupted,
                clear_ms=clear,
            )
        )
    return rows


# -- expectations ---------------------------------------------------------------------------------


def check(expect: Expectations, summary: CallSummary, record: CallRecord) -> list[str]:
    """Every way the replay's outcome differs from the fixture's expectations."""
    failures = [f"protocol violation: {v.reason}" for v in record.violations]
    turns = summary.tracker.turns if summary.tracker is not None else []
    if expect.turns is not None and len(turns) != expect.turns:
        failures.append(f"expected {expect.turns} model turns, got {len(turns)}")
    if expect.clears is not None and summary.clears != expect.clears:
        failures.append(f"expected {expect.clears} clears, got {summary.clears}")
    if expect.tools_called is not None and tuple(summary.tools_called) != expect.tools_called:
        failures.append(f"expected tools {list(expect.tools_called)}, got {summary.tools_called}")
    if expect.dtmf is not None and "".join(summary.dtmf) != expect.dtmf:
        failures.append(f"expected DTMF {expect.dtmf!r}, got {''.join(summary.dtmf)!r}")
    if expect.gap_fill_ms is not None and summary.gap_fill_ms != expect.gap_fill_ms:
        failures.append(f"expected {expect.gap_fill_ms} ms gap fill, got {summary.gap_fill_ms}")
    reason = summary.end_reason.value if summary.end_reason else None
    if expect.end_reason is not None and reason != expect.end_reason:
        failures.append(f"expected the call to end by {expect.end_reason}, got {reason}")
    for i, heard in enumerate(expect.heard or ()):
        if i >= len(turns):
            break
        turn = turns[i]
        if not heard.min_ms <= turn.heard_ms <= heard.max_ms:
            failures.append(
                f"turn {i + 1}: caller heard {turn.heard_ms:.0f} ms, "
                f"expected {heard.min_ms:.0f}–{heard.max_ms:.0f}"
            )
        if heard.interrupted is not None and turn.interrupted != heard.interrupted:
            failures.append(f"turn {i + 1}: interrupted={turn.interrupted}, expected otherwise")
    transcript = " ".join("".join(summary.agent_transcript).lower().split())
    for words in expect.agent_transcript_contains:
        if words.lower() not in transcript:
            failures.append(f"agent transcript lacks {words!r}")
    return failures


# -- running --------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    fixture: CallFixture
    record: CallRecord
    summary: CallSummary
    timeline: list[TurnTimeline] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    call: CallReport | None = None
    """What the server recorded of the call (`observer.CallObserver`)."""
    metrics: bytes = b""
    """The server's `/metrics` after the call."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        lines = [f"{self.fixture.name}: {len(self.timeline)} turns, {self.summary.clears} clears"]
        lines += ["  " + row.describe() for row in self.timeline]
        lines += ["  FAIL " + f for f in self.failures] or ["  ok"]
        return "\n".join(lines)


def speed_factor(speed: Speed | float) -> float:
    if speed == "realtime":
        return 1.0
    if speed == "max":
        return MAX_SPEED
    factor = float(speed)
    if not 0 < factor < math.inf:
        raise ValueError("speed must be 'realtime', 'max' or a positive number")
    return factor


@asynccontextmanager
async def replay_stack(
    fixture: CallFixture, settings: Settings | None = None
) -> AsyncIterator[tuple[str, GeminiEmulator, Any]]:
    """Emulator playing the fixture's model side + the app on an ephemeral port."""
    from phone_agent.app import GeminiTarget, create_app

    settings = settings or Settings()
    async with GeminiEmulator(
        emulator_script(fixture), speed=1.0, clock="audio", record_messages=False
    ) as emulator:
        target = GeminiTarget(emulator.base_url, "replay", emulator.client_ssl_context())
        app = create_app(settings, gemini=target, keep_summaries=100)
        async with embedded_server(app) as base_url:
            yield base_url.replace("http://", "ws://") + "/twilio/media", emulator, app


async def replay(
    fixture: CallFixture,
    *,
    speed: Speed | float = "max",
    limit_s: float | None = None,
    settings: Settings | None = None,
) -> ReplayResult:
    """Replay in-process: the bridge between the simulator and the emulator. `settings` configure
    the server side (e.g. the tools enabled and their database)."""
    plan = caller_plan(fixture)
    factor = speed_factor(speed)
    duration_s = max((m.t_ms for m in fixture.caller), default=0.0) / 1000.0
    limit = limit_s if limit_s is not None else 30.0 + 2.0 * duration_s / factor
    async with replay_stack(fixture, settings) as (media_url, _emulator, app):
        state = app.state.phone_agent
        call_sid = plan.call_sid or "CA" + secrets.token_hex(16)
        # The recorded token was single use: mint a fresh one, as the webhook would.
        parameters = {**plan.custom_parameters, **state.stream_parameters(call_sid)}
        simulator = TwilioCallerSimulator(
            media_url,
            plan.steps,
            custom_parameters=parameters,
            call_sid=call_sid,
            stream_sid=plan.stream_sid,
            account_sid=plan.account_sid or "AC" + "0" * 32,
            speed=factor,
        )
        with anyio.fail_after(limit):
            record = await simulator.run()
            await state.wait_calls_ended(1)
        summary: CallSummary = state.summaries[-1]
        call = state.reports[-1] if state.reports else None
        metrics = state.metrics.render()
    result = ReplayResult(fixture, record, summary, call=call, metrics=metrics)
    result.timeline = build_timeline(summary, record)
    result.failures = check(fixture.expect, summary, record)
    return result


# -- replay into a running server -----------------------------------------------------------------


@dataclass
class RemoteResult:
    """A replay into a server in another process: only the phone's view is known."""

    fixture: CallFixture
    record: CallRecord
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        heard = heard_by_generation(self.record)
        lines = [
            f"{self.fixture.name} (remote): {len(heard)} turns, {len(self.record.clears)} clears"
        ]
        lines += [f"  turn {g}: {ms:.0f} ms heard" for g, ms in sorted(heard.items())]
        lines += ["  FAIL " + f for f in self.failures] or ["  ok"]
        return "\n".join(lines)


def heard_by_generation(record: CallRecord) -> dict[int, float]:
    """Per generation, the furthest mark echoed after really playing (phone side)."""
    heard: dict[int, float] = {}
    for name in record.marks_received:
        generation = _generation(name)
        if generation is not None:
            heard.setdefault(generation, 0.0)
    for echo in record.mark_echoes:
        generation = _generation(echo.name)
        if generation is None or echo.cleared:
            continue
        heard[generation] = max(heard.get(generation, 0.0), float(echo.name.rsplit(":", 1)[1]))
    return heard


def _generation(mark: str) -> int | None:
    head = mark.split(":", 1)[0]
    return int(head[1:]) if head.startswith("g") and head[1:].isdigit() else None


def check_remote(expect: Expectations, record: CallRecord) -> list[str]:
    failures = [f"protocol violation: {v.reason}" for v in record.violations]
    heard = heard_by_generation(record)
    if expect.turns is not None and len(heard) != expect.turns:
        failures.append(f"expected {expect.turns} model turns, got {len(heard)}")
    if expect.clears is not None and len(record.clears) != expect.clears:
        failures.append(f"expected {expect.clears} clears, got {len(record.clears)}")
    for i, rng in enumerate(expect.heard or ()):
        ms = heard.get(i + 1)
        if ms is not None and not rng.min_ms <= ms <= rng.max_ms:
            failures.append(
                f"turn {i + 1}: caller heard {ms:.0f} ms, "
                f"expected {rng.min_ms:.0f}–{rng.max_ms:.0f}"
            )
    return failures


async def webhook_stream_parameters(
    media_url: str, public_url: str, auth_token: str, call_sid: str
) -> dict[str, str]:
    """Ask a running server's voice webhook, signed as Twilio would sign it, for the stream's
    `<Parameter>`s (its stream token among them)."""
    import xml.etree.ElementTree as ET

    import httpx
    from twilio.request_validator import RequestValidator

    http_url = media_url.replace("wss://", "https://").replace("ws://", "http://")
    voice_url = http_url.rsplit("/twilio/media", 1)[0] + "/twilio/voice"
    form = {"CallSid": call_sid, "From": "+15550100000", "To": "+15550109999"}
    signed = public_url.rstrip("/") + "/twilio/voice"
    signature = RequestValidator(auth_token).compute_signature(signed, form)
    async with httpx.AsyncClient() as http:
        answer = await http.post(voice_url, data=form, headers={"X-Twilio-Signature": signature})
    answer.raise_for_status()
    stream = ET.fromstring(answer.text).find("./Connect/Stream")
    if stream is None:
        raise ReplayError("the webhook did not answer with <Connect><Stream>")
    return {
        str(p.get("name")): str(p.get("value"))
        for p in stream.findall("Parameter")
        if p.get("name")
    }


async def replay_remote(
    fixture: CallFixture,
    url: str,
    *,
    speed: Speed | float = "realtime",
    public_url: str | None = None,
    auth_token: str | None = None,
) -> RemoteResult:
    """Play the caller side into a running server; its model must play the fixture's model side
    (`PHONE_AGENT_EMULATOR_FIXTURE`). With `public_url` and `auth_token` (the server's), the
    stream is admitted with a token from the server's own webhook, as Twilio's would be."""
    plan = caller_plan(fixture)
    factor = speed_factor(speed)
    duration_s = max((m.t_ms for m in fixture.caller), default=0.0) / 1000.0
    call_sid = plan.call_sid or "CA" + secrets.token_hex(16)
    parameters = dict(plan.custom_parameters)
    if public_url and auth_token:
        parameters.update(await webhook_stream_parameters(url, public_url, auth_token, call_sid))
    simulator = TwilioCallerSimulator(
        url,
        plan.steps,
        call_sid=call_sid,
        custom_parameters=parameters,
        speed=factor,
    )
    with anyio.fail_after(30.0 + 2.0 * duration_s / factor):
        record = await simulator.run()
    return RemoteResult(fixture, record, check_remote(fixture.expect, record))
