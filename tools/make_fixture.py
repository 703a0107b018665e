#!/usr/bin/env python3
"""Generate the recorded-call fixture library (`tests/fixtures/`) from text, with espeak-ng.

Each scenario below is a short phone call declared as data: what the caller says and does, and
what the agent answers. The caller's lines are spoken by espeak-ng (American voice) and sent as
8 kHz mu-law; the agent's lines are spoken in a different voice (British, female variant) and
played by the Gemini Live emulator as 24 kHz PCM. The call is then placed for real, in process:
the Twilio caller simulator dials the app (uvicorn on a free port) at real time, the app bridges
it to the emulator through the google-genai SDK, and the app's call recorder writes the fixture.
This script checks the recording against what the scenario is meant to exercise, then saves it
with a description, metadata and the agent's key words added to its expectations.

    python tools/make_fixture.py                    # the whole library, into tests/fixtures
    python tools/make_fixture.py --only barge-in    # one scenario
    python tools/make_fixture.py --demo             # also phone_agent/data/demo-call.json.gz
    python tools/make_fixture.py --list             # the scenarios, without recording

The audio is deterministic (espeak-ng, then a fixed gain, trim and soxr resampling); the timings
are measured on a real clock, so two runs differ by a few milliseconds here and there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import soxr
from pydantic import SecretStr

from phone_agent import emulator as emu
from phone_agent.app import GeminiTarget, create_app
from phone_agent.bridge import CallSummary
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.encryption import DataCipher, generate_key
from phone_agent.fixture import CallFixture, ModelTurn
from phone_agent.gemini import OUTPUT_RATE
from phone_agent.simulator import (
    CallerStep,
    CallRecord,
    Dtmf,
    Gap,
    HangUp,
    Silence,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)
from phone_agent.simulator import Say as SayMulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures"
DEMO_PATH = ROOT / "phone_agent" / "data" / "demo-call.json.gz"
DEMO_SCENARIO = "order-status"

ESPEAK = "espeak-ng"
WORDS_PER_MINUTE = 165
CALLER_VOICE = "en-us"
AGENT_VOICE = "en-gb+f3"
SPEECH_GAIN = 0.5
"""espeak-ng peaks near full scale; -6 dB leaves headroom for the resamplers and mu-law."""
TRIM_LEVEL = 1e-3
"""Leading and trailing samples quieter than this (fraction of full scale) are cut."""
TRIM_MARGIN_MS = 20
CALLER_RATE = 8000
AGENT_RATE = OUTPUT_RATE
AGENT_BYTES_PER_MS = AGENT_RATE * 2 // 1000
CALLER_NUMBER = "+15550101042"
AGENT_NUMBER = "+15550109999"


class GeneratorError(Exception):
    """Fixture generation failed; the message says why."""


# -- the scenario language ------------------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    """One agent reply: its words, and the `key` words replay must find in the agent's transcript.

    Key words must be in the part of the reply the caller actually hears (checked after recording).
    """

    text: str
    key: tuple[str, ...] = ()
    # A function the model calls (name, arguments) before it speaks; it waits for the answer.
    tool: tuple[str, Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Caller:
    """The caller says `text`; when it is an utterance the model answers, `then` is the answer.

    The emulated model answers utterances in order, so every answered utterance must come before
    the first unanswered one (a closing "bye" the caller hangs up after).
    """

    text: str
    then: Agent | None = None


@dataclass(frozen=True)
class Listen:
    """Wait for the agent's answer to start, then to finish: the line quiet for `quiet_ms`."""

    quiet_ms: int = 500


Step = Caller | Listen | CallerStep


@dataclass(frozen=True)
class Check:
    """What the recording must show, or the scenario failed to exercise what it is for."""

    turns: int
    clears: int = 0
    interrupted: tuple[bool, ...] | None = None
    dtmf: str = ""
    end_reason: str = "caller_stop"
    go_away: bool = False
    tools_called: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """One call of the library: the caller's steps (with the agent's answers), and its purpose.

    `emulator_speed` paces the model's audio (2.0 is twice real time, as Gemini does; 1.0 keeps
    the model generating while the caller hears it, which barge-in needs). `go_away`: the model
    connection gets a goAway.
    """

    name: str
    description: str
    steps: tuple[Step, ...]
    check: Check
    emulator_speed: float = 2.0
    go_away: emu.GoAway | None = None
    tools: tuple[str, ...] = ()
    """Tools the server enables (the order tools run on a fresh demo database)."""

    def caller_lines(self) -> list[str]:
        return [s.text for s in self.steps if isinstance(s, Caller)]

    def agent_replies(self) -> list[Agent]:
        return [s.then for s in self.steps if isinstance(s, Caller) and s.then is not None]

    def validate(self) -> None:
        answered = [s.then is not None for s in self.steps if isinstance(s, Caller)]
        if answered != sorted(answered, reverse=True):
            raise GeneratorError(
                f"{self.name}: an unanswered utterance comes before an answered one"
            )
        for reply in self.agent_replies():
            missing = [k for k in reply.key if k not in reply.text]
            if missing:
                raise GeneratorError(f"{self.name}: key words {missing} are not in {reply.text!r}")
            phrases = [k for k in reply.key if len(k.split()) != 1]
            if phrases:
                # Transcript pieces may be joined with or without separators: words, not phrases.
                raise GeneratorError(f"{self.name}: key words must be single words, not {phrases}")


# -- the library ----------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="order-lookup",
        description="The caller, on a number that does not own the order, asks about order 1042 "
        "and gives the delivery postcode; the model calls lookup_order (order number and postcode "
        "as spoken), the server answers from the order database, and the model reads the answer "
        "out. One turn with one tool call.",
        steps=(
            Silence(300),
            Caller(
                "Where is my order one oh four two? My postcode is S W 1 A, 1 A A.",
                Agent(
                    "Order ten forty-two has shipped with U P S and should arrive on Friday the "
                    "twenty-eighth of November.",
                    ("shipped", "Friday"),
                    tool=(
                        "lookup_order",
                        {"order_number": "one oh four two", "postcode": "sw1a 1aa"},
                    ),
                ),
            ),
            Listen(),
            Silence(200),
            HangUp(),
        ),
        check=Check(turns=1, interrupted=(False,), tools_called=("lookup_order",)),
        tools=("lookup_order", "list_recent_orders"),
    ),
    Scenario(
        name="order-status",
        description="The caller asks where order 1042 is; the agent says it shipped and will "
        "arrive on Friday; a follow-up question about a signature; the caller thanks the agent "
        "and hangs up. Two complete turns, nothing interrupted.",
        steps=(
            Silence(400),
            Caller(
                "Hi, where is my order one oh four two?",
                Agent(
                    "Order ten forty-two shipped yesterday and should arrive on Friday.",
                    ("shipped", "Friday"),
                ),
            ),
            Listen(),
            Caller(
                "Do I need to sign for it?",
                Agent("No signature is needed. The driver will leave it at your door.", ("door",)),
            ),
            Listen(),
            Caller("Thanks, bye."),
            Silence(300),
            HangUp(),
        ),
        check=Check(turns=2, interrupted=(False, False)),
    ),
    Scenario(
        name="barge-in",
        description="The agent starts a long answer about order 227; about 1.5 s in, the caller "
        "talks over it ('Sorry, wait, wrong order.'). The model is still generating (emulator at "
        "real time), so it is interrupted: one clear, turn 1 interrupted; the short second answer "
        "is heard in full.",
        steps=(
            Silence(300),
            Caller(
                "Can you tell me about order two two seven?",
                Agent(
                    "Order two twenty-seven has three items: a blue kettle, two mugs and a tea "
                    "towel. It left our warehouse on Monday and is with the courier now.",
                    ("twenty-seven",),
                ),
            ),
            WaitForAgentAudio(min_ms=1500),
            Caller(
                "Sorry, wait, wrong order.",
                Agent("No problem. Which order do you mean?", ("problem",)),
            ),
            Listen(),
            Silence(200),
            HangUp(),
        ),
        check=Check(turns=2, clears=1, interrupted=(True, False)),
        emulator_speed=1.0,
    ),
    Scenario(
        name="silent-caller",
        description="The caller says nothing for three seconds and hangs up: the model is never "
        "triggered, no turns, nothing played.",
        steps=(Silence(3000), HangUp()),
        check=Check(turns=0),
    ),
    Scenario(
        name="dtmf",
        description="The agent asks for a two-digit branch code; the caller keys 1 then 2 on the "
        "keypad between short utterances; the agent confirms branch twelve.",
        steps=(
            Silence(300),
            Caller(
                "Hello, I need to reach my branch.",
                Agent("Sure. Please key in your branch code.", ("branch",)),
            ),
            Listen(),
            Dtmf("1"),
            Silence(300),
            Dtmf("2"),
            Silence(400),
            Caller("That's it.", Agent("Thanks, branch twelve. You are all set.", ("twelve",))),
            Listen(),
            HangUp(),
        ),
        check=Check(turns=2, dtmf="12", interrupted=(False, False)),
    ),
    Scenario(
        name="hangup-mid-answer",
        description="The caller asks about returns; the agent starts a long answer and the caller "
        "hangs up about two seconds into it. The call ends with the turn partly heard, no clear.",
        steps=(
            Silence(300),
            Caller(
                "What is your returns policy?",
                Agent(
                    "You can return any item within thirty days of delivery. Pack it in the "
                    "original box, print the free label from your account page, and drop it at "
                    "any post office.",
                    ("return", "item"),
                ),
            ),
            WaitForAgentAudio(min_ms=2000),
            HangUp(),
        ),
        check=Check(turns=1, interrupted=(False,)),
    ),
    Scenario(
        name="timestamp-gaps",
        description="Twilio skipping silent frames: after each utterance the caller sends no "
        "media for a while (the next frame's timestamp jumps); the bridge fills the gaps with "
        "silence for the model, whose speech detection then ends the caller's turn.",
        steps=(
            Silence(300),
            Caller("Hi, it's Sam again.", Agent("Hello Sam. How can I help?", ("Sam",))),
            Gap(800),
            Listen(),
            Gap(600),
            Caller(
                "Can I change my delivery address?",
                Agent("Yes, until the parcel ships. Which address should we use?", ("address",)),
            ),
            Gap(800),
            Listen(),
            Gap(400),
            Caller("I will email it. Bye."),
            Silence(200),
            HangUp(),
        ),
        check=Check(turns=2, interrupted=(False, False)),
    ),
    Scenario(
        name="go-away",
        description="A three-turn order whose model connection gets a goAway (time left: 30 s) "
        "seven seconds in, between the first and second turns; the connection stays open and "
        "the conversation carries on past it. The goAway is in the session events "
        "(`model.session`).",
        steps=(
            Silence(300),
            Caller(
                "Hi, I'd like to order a blue kettle.",
                Agent("Of course. One blue kettle, that is twenty-four pounds.", ("kettle",)),
            ),
            Listen(),
            Caller(
                "Can you deliver it tomorrow?",
                Agent("Yes, next-day delivery is three pounds extra.", ("next-day",)),
            ),
            Listen(),
            Caller(
                "OK, go ahead, thanks.",
                Agent("Done. Your order is ten fifty-five.", ("fifty-five",)),
            ),
            Listen(),
            HangUp(),
        ),
        check=Check(turns=3, interrupted=(False, False, False), go_away=True),
        go_away=emu.GoAway(after_s=7.0, time_left_s=30.0, close_code=None),
    ),
)

# -- audio ----------------------------------------------------------------------------------------


def float_to_pcm16(samples: npt.NDArray[np.float64]) -> bytes:
    """Samples in [-1, 1) to int16 little-endian, rounded half to even, clipped."""
    scaled = np.clip(np.rint(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def trim_silence(
    samples: npt.NDArray[np.float64], rate: int, level: float = TRIM_LEVEL
) -> npt.NDArray[np.float64]:
    """Cut leading and trailing samples quieter than `level`, keeping a short margin."""
    loud = np.flatnonzero(np.abs(samples) > level)
    if not len(loud):
        return samples[:0]
    margin = rate * TRIM_MARGIN_MS // 1000
    return samples[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def resample_pcm16(pcm: bytes, src_rate: int, dst_rate: int, *, gain: float = 1.0) -> bytes:
    """Resample int16 LE mono PCM with soxr (HQ; deterministic), applying `gain` first."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * (gain / 32768.0)
    if src_rate != dst_rate and len(samples):
        samples = np.asarray(soxr.resample(samples, src_rate, dst_rate, quality="HQ"))
    return float_to_pcm16(samples)


def prepare_speech(pcm: bytes, rate: int) -> bytes:
    """espeak-ng output to clean PCM at `rate`: fixed gain, silence trimmed at both ends."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    return float_to_pcm16(trim_silence(samples * SPEECH_GAIN, rate))


def to_caller_audio(pcm: bytes, rate: int) -> bytes:
    """Speech (int16 PCM at `rate`) as the caller's phone sends it: 8 kHz mu-law."""
    return audioop.lin2ulaw(resample_pcm16(prepare_speech(pcm, rate), rate, CALLER_RATE), 2)


def to_agent_audio(pcm: bytes, rate: int) -> bytes:
    """Speech (int16 PCM at `rate`) as Gemini sends it: 24 kHz int16 PCM."""
    return resample_pcm16(prepare_speech(pcm, rate), rate, AGENT_RATE)


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise GeneratorError(f"{path}: expected 16-bit mono audio from {ESPEAK}")
        return w.readframes(w.getnframes()), w.getframerate()


def espeak_version() -> str:
    """The installed espeak-ng's version, e.g. '1.51'; fails clearly when it is missing."""
    if shutil.which(ESPEAK) is None:
        raise GeneratorError(
            f"{ESPEAK} is not installed; install it: apt-get install espeak-ng "
            "(or run `make fixtures`, which does)"
        )
    out = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True).stdout
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/..."
    words = out.split(":", 1)[-1].split()
    return words[0] if words else out.strip()


class Voices:
    """Speaks text with espeak-ng, caching each (voice, text) once per run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._cache: dict[tuple[str, str], tuple[bytes, int]] = {}

    def speak(self, voice: str, text: str) -> tuple[bytes, int]:
        key = (voice, text)
        if key not in self._cache:
            digest = hashlib.sha1(f"{voice}\0{text}".encode()).hexdigest()[:16]
            path = self.workdir / f"{digest}.wav"
            cmd = [ESPEAK, "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(path), text]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise GeneratorError(f"{ESPEAK} failed on {text!r}: {result.stderr.strip()}")
            self._cache[key] = read_wav(path)
        return self._cache[key]

    def caller(self, text: str) -> bytes:
        return to_caller_audio(*self.speak(CALLER_VOICE, text))

    def agent(self, text: str) -> bytes:
        return to_agent_audio(*self.speak(AGENT_VOICE, text))


# -- recording ------------------------------------------------------------------------------------

NEVER = emu.Reply.of(trigger=emu.Trigger.TOOL_RESPONSE)
"""Default reply that no trigger of these calls fires: a closing 'bye' gets no answer."""


def emulator_script(scenario: Scenario, voices: Voices) -> emu.EmulatorScript:
    replies = []
    for s in scenario.steps:
        if not isinstance(s, Caller) or s.then is None:
            continue
        calls = [emu.FunctionCall(s.then.tool[0], dict(s.then.tool[1]))] if s.then.tool else []
        audio = emu.Pcm(voices.agent(s.then.text))
        replies.append(emu.Reply.of(s.then.text, audio, tool_calls=calls, input_transcript=s.text))
    return emu.EmulatorScript(replies=replies, default_reply=NEVER, go_away=scenario.go_away)


def caller_steps(scenario: Scenario, voices: Voices) -> list[CallerStep]:
    steps: list[CallerStep] = []
    for step in scenario.steps:
        if isinstance(step, Caller):
            steps.append(SayMulaw(voices.caller(step.text)))
        elif isinstance(step, Listen):
            steps += [WaitForAgentAudio(min_ms=300), WaitForAgentSilence(ms=step.quiet_ms)]
        else:
            steps.append(step)
    return steps


def call_sid(name: str) -> str:
    """A stable, Twilio-shaped id per scenario, so regenerated files differ only in timings."""
    return "CA" + hashlib.sha256(f"phone-agent fixture {name}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Call:
    """A scenario made ready to dial: the emulator's script and the caller's steps, with audio."""

    scenario: Scenario
    script: emu.EmulatorScript
    steps: tuple[CallerStep, ...]

    @classmethod
    def prepare(cls, scenario: Scenario, voices: Voices) -> Call:
        scenario.validate()
        steps = tuple(caller_steps(scenario, voices))
        return cls(scenario, emulator_script(scenario, voices), steps)


@dataclass
class Recording:
    fixture: CallFixture
    summary: CallSummary
    notes: list[str] = field(default_factory=list)


# The app seals every recording; these calls are synthetic (espeak-ng voices, demo data), so a
# throwaway key seals them in the scratch directory and the library keeps them in the clear.
SCRATCH_KEY = generate_key()


async def place_call(call: Call, record_dir: Path) -> tuple[CallSummary, CallRecord]:
    """Place one call through the in-process stack, with the app recording it into `record_dir`."""
    sid = call_sid(call.scenario.name)
    async with emu.GeminiEmulator(call.script, speed=call.scenario.emulator_speed) as emulator:
        # No .env: a developer's local settings (e.g. the mark interval) must not leak in.
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            record="all",
            record_dir=record_dir,
            data_key=SecretStr(SCRATCH_KEY),
            greeting="",  # the scenarios script who speaks first
            silence_reprompt_s=0,
            silence_hang_up_s=0,
            tools=list(call.scenario.tools),
            database_url=f"sqlite+aiosqlite:///{record_dir / 'orders.db'}",
        )
        app = create_app(
            settings,
            gemini=GeminiTarget(
                emulator.base_url, "fixture-generator", emulator.client_ssl_context()
            ),
            keep_summaries=5,
        )
        async with embedded_server(app) as base_url:
            url = base_url.replace("http://", "ws://") + "/twilio/media"
            simulator = TwilioCallerSimulator(
                url,
                call.steps,
                speed=1.0,
                call_sid=sid,
                stream_sid="MZ" + sid[2:],
                custom_parameters=app.state.phone_agent.stream_parameters(
                    sid, call_sid=sid, **{"from": CALLER_NUMBER, "to": AGENT_NUMBER}
                ),
            )
            with anyio.fail_after(60):
                record = await simulator.run()
            with anyio.fail_after(10):
                await app.state.phone_agent.wait_calls_ended(1)
            [summary] = app.state.phone_agent.summaries
    return summary, record


def record_call(call: Call, record_dir: Path) -> Recording:
    """Place the call (real time) and load what the app recorded."""
    summary, record = anyio.run(place_call, call, record_dir)
    name = call.scenario.name
    if summary.recording is None:
        raise GeneratorError(f"{name}: the app did not record the call")
    violations = [f"{v.code}: {v.reason}" for v in record.violations]
    if violations:
        raise GeneratorError(f"{name}: the caller saw protocol violations: {violations}")
    notes = [f"caller wait timed out: {w}" for w in record.wait_timeouts]
    recorded = CallFixture.load(summary.recording, cipher=DataCipher([SCRATCH_KEY]))
    return Recording(recorded, summary, notes)


# -- checking and finishing -----------------------------------------------------------------------


def _content(message: Mapping[str, Any]) -> Mapping[str, Any]:
    content = message.get("serverContent") or message.get("server_content") or {}
    return content if isinstance(content, Mapping) else {}


def audio_ms(message: Mapping[str, Any]) -> float:
    """Milliseconds of 24 kHz agent audio in one recorded server message."""
    turn = _content(message).get("modelTurn") or _content(message).get("model_turn") or {}
    total = 0.0
    for part in turn.get("parts", []):
        blob = part.get("inlineData") or part.get("inline_data") or {}
        data = blob.get("data")
        if isinstance(data, str):
            total += len(data.rstrip("=")) * 3 // 4 / AGENT_BYTES_PER_MS
    return total


def transcript(turn: ModelTurn, heard_ms: float = math.inf) -> str:
    """The agent's output transcription for the audio the caller heard of a recorded turn.

    The model sends each transcript piece just after the audio it belongs to: a piece counts as
    heard when the audio before it started within `heard_ms`.
    """
    text, sent_ms, last_chunk_start = [], 0.0, 0.0
    for timed in turn.messages:
        ms = audio_ms(timed.message)
        if ms:
            last_chunk_start, sent_ms = sent_ms, sent_ms + ms
        content = _content(timed.message)
        out = content.get("outputTranscription") or content.get("output_transcription") or {}
        if out.get("text") and last_chunk_start < heard_ms:
            text.append(str(out["text"]))
    return "".join(text)


def _is_go_away(message: Mapping[str, Any]) -> bool:
    return "goAway" in message or "go_away" in message


def go_aways(fixture: CallFixture) -> tuple[int, int]:
    """How many goAway messages the recording has: in its session events, and inside turns."""
    in_session = sum(_is_go_away(m.message) for m in fixture.session_events)
    in_turns = sum(_is_go_away(m.message) for t in fixture.model_turns for m in t.messages)
    return in_session, in_turns


def speaking_turns(fixture: CallFixture) -> list[ModelTurn]:
    """The recorded model turns that carry agent audio, in order."""
    return [t for t in fixture.model_turns if any(audio_ms(m.message) for m in t.messages)]


def check_recording(scenario: Scenario, rec: Recording) -> list[str]:
    """Every way the recording misses what the scenario is for (empty: good)."""
    problems: list[str] = []
    expect, want = rec.fixture.expect, scenario.check
    caller = rec.fixture.caller
    events = [m.message.get("event") for m in caller[:2]]
    if events != ["connected", "start"]:
        problems.append(f"caller messages start with {events}, not connected, start")
    if expect.turns != want.turns:
        problems.append(f"{expect.turns} turns, expected {want.turns}")
    if expect.clears != want.clears:
        problems.append(f"{expect.clears} clears, expected {want.clears}")
    if expect.dtmf != want.dtmf:
        problems.append(f"dtmf {expect.dtmf!r}, expected {want.dtmf!r}")
    if tuple(expect.tools_called or ()) != want.tools_called:
        problems.append(f"tools called {expect.tools_called}, expected {want.tools_called}")
    if expect.end_reason != want.end_reason:
        problems.append(f"ended by {expect.end_reason}, expected {want.end_reason}")
    interrupted = tuple(h.interrupted for h in expect.heard or ())
    if want.interrupted is not None and interrupted != want.interrupted:
        problems.append(f"interrupted {interrupted}, expected {want.interrupted}")
    in_session, in_turns = go_aways(rec.fixture)
    if (in_session, in_turns) != ((1, 0) if want.go_away else (0, 0)):
        where = f"{in_session} in model.session, {in_turns} inside turns"
        problems.append(f"goAway messages: {where}; expected {int(want.go_away)} between turns")
    tracker_turns = rec.summary.tracker.turns if rec.summary.tracker is not None else []
    replies = scenario.agent_replies()
    for i, (turn, heard) in enumerate(
        zip(speaking_turns(rec.fixture), tracker_turns, strict=False)
    ):
        if i >= len(replies):
            problems.append(f"turn {i + 1} has no scripted reply")
            continue
        text = transcript(turn, heard.heard_ms)
        missing = [k for k in replies[i].key if k not in text]
        if missing:
            problems.append(
                f"turn {i + 1}: key words {missing} not in what was heard "
                f"({heard.heard_ms:.0f} ms: {text!r})"
            )
    problems += rec.notes
    return problems


def heard_keywords(scenario: Scenario, turns: int) -> tuple[str, ...]:
    return tuple(k for reply in scenario.agent_replies()[:turns] for k in reply.key)


def finish(scenario: Scenario, rec: Recording, tts_version: str, name: str) -> CallFixture:
    recorded = rec.fixture
    go_away = scenario.go_away
    metadata: dict[str, Any] = {
        **recorded.metadata,
        "source": "synthetic",
        "generator": "tools/make_fixture.py",
        "scenario": scenario.name,
        "tts": {
            "engine": ESPEAK,
            "version": tts_version,
            "caller_voice": CALLER_VOICE,
            "agent_voice": AGENT_VOICE,
            "words_per_minute": WORDS_PER_MINUTE,
        },
        "model_backend": "phone_agent.emulator",
        "emulator": {
            "speed": scenario.emulator_speed,
            "go_away": dataclasses.asdict(go_away) if go_away is not None else None,
        },
        "caller_speed": 1.0,
        "texts": {
            "caller": scenario.caller_lines(),
            "agent": [reply.text for reply in scenario.agent_replies()],
        },
    }
    expect = dataclasses.replace(
        recorded.expect,
        agent_transcript_contains=heard_keywords(scenario, recorded.expect.turns or 0),
    )
    return dataclasses.replace(
        recorded, name=name, description=scenario.description, metadata=metadata, expect=expect
    )


def duration_s(fixture: CallFixture) -> float:
    return fixture.caller[-1].t_ms / 1000 if fixture.caller else 0.0


def describe(fixture: CallFixture, path: Path) -> str:
    e = fixture.expect
    heard = ", ".join(
        f"{(h.min_ms + h.max_ms) / 2 / 1000:.1f}s{' interrupted' if h.interrupted else ''}"
        for h in e.heard or ()
    )
    return (
        f"wrote {_display(path)}: {path.stat().st_size / 1024:.1f} KiB, "
        f"{duration_s(fixture):.1f} s, {e.turns} turns, {e.clears} clears, dtmf {e.dtmf!r}, "
        f"end {e.end_reason}, heard [{heard}]"
    )


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate the recorded-call fixture library from text, with espeak-ng.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="generate only these scenarios (see --list)"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"also write {DEMO_PATH.relative_to(ROOT)} (the {DEMO_SCENARIO} call), "
        "which the offline demo plays",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--raw-dir",
        type=Path,
        help="keep the app's raw recordings here (default: a temporary folder)",
    )
    return parser.parse_args(argv)


def generate(args: argparse.Namespace) -> int:
    by_name = {s.name: s for s in SCENARIOS}
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:18} {s.description}")
        return 0
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        raise GeneratorError(f"unknown scenario(s) {unknown}; known: {sorted(by_name)}")
    selected = [s for s in SCENARIOS if args.only is None or s.name in args.only]
    to_record = [s for s in SCENARIOS if s in selected or (args.demo and s.name == DEMO_SCENARIO)]
    version = espeak_version()
    written: list[Path] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="make-fixture-") as tmp:
        voices = Voices(Path(tmp))
        for scenario in to_record:
            print(f"recording {scenario.name} ...", flush=True)
            call = Call.prepare(scenario, voices)
            rec = record_call(call, (args.raw_dir or Path(tmp)) / scenario.name)
            problems = check_recording(scenario, rec)
            if problems:
                failed.append(scenario.name)
                for problem in problems:
                    print(f"  {scenario.name}: {problem}", file=sys.stderr)
                continue
            targets = []
            if scenario in selected:
                targets.append((args.out / f"{scenario.name}.json.gz", scenario.name))
            if args.demo and scenario.name == DEMO_SCENARIO:
                targets.append((DEMO_PATH, "demo-call"))
            for path, name in targets:
                path.parent.mkdir(parents=True, exist_ok=True)
                fixture = finish(scenario, rec, version, name)
                fixture.save(path)
                written.append(path)
                print(describe(fixture, path), flush=True)
    if written:
        total = sum(p.stat().st_size for p in written)
        print(f"{len(written)} file(s), {total / 1024:.1f} KiB in all")
    if failed:
        print(f"error: not written, the recording missed its purpose: {failed}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # websockets honours proxy variables; every socket of these calls is on loopback.
    os.environ["NO_PROXY"] = "127.0.0.1,localhost," + os.environ.get("NO_PROXY", "")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return generate(args)
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
