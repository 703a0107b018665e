"""A local Gemini Live API emulator that the real google-genai SDK connects to.

Used by the tests, the offline demo and the server's offline mode. See `GeminiEmulator` and
`EmulatorScript`; `http_options(emu)` gives what `genai.Client` needs to reach it. `Recorded`
replays recorded server messages; `GeminiEmulator(clock="audio")` paces replies by the caller's
audio, so that replays are deterministic (see `phone_agent.emulator.pacing`).
"""

from phone_agent.emulator.protocol import SetupInfo
from phone_agent.emulator.script import (
    DEFAULT_REPLY,
    CallTools,
    Close,
    EmulatorScript,
    FunctionCall,
    GoAway,
    Pause,
    Pcm,
    Raw,
    Recorded,
    Reply,
    Say,
    ScriptError,
    Silence,
    Tone,
    Trigger,
    Usage,
)
from phone_agent.emulator.server import GeminiEmulator, http_options
from phone_agent.emulator.session import (
    ClientRecord,
    EmulatorSession,
    Outcome,
    ReplyRecord,
    SentRecord,
    SpeechRecord,
)
from phone_agent.vad import EnergyVad, SpeechEnded, SpeechStarted

__all__ = [
    "DEFAULT_REPLY",
    "CallTools",
    "ClientRecord",
    "Close",
    "EmulatorScript",
    "EmulatorSession",
    "EnergyVad",
    "FunctionCall",
    "GeminiEmulator",
    "GoAway",
    "Outcome",
    "Pause",
    "Pcm",
    "Raw",
    "Recorded",
    "Reply",
    "ReplyRecord",
    "Say",
    "ScriptError",
    "SentRecord",
    "SetupInfo",
    "Silence",
    "SpeechEnded",
    "SpeechRecord",
    "SpeechStarted",
    "Tone",
    "Trigger",
    "Usage",
    "http_options",
]
