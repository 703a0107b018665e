"""What each Gemini Live model accepts, in one table.

The table is built from documentation snapshots (the "Models" section of gemini-live-wire.md), not
from probing the live service: verify an entry before relying on it, and correct it here. Code that
builds a setup message or a tool response asks `capabilities_for(model)` and never sends an option
the model is not known to accept; an unknown model gets `CONSERVATIVE`, with every option off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCapabilities:
    """What may be sent to a model. Each flag is False unless the documentation says otherwise."""

    non_blocking_tools: bool = False
    """Function declarations may carry `behavior` (NON_BLOCKING, or BLOCKING explicitly)."""
    non_blocking_default: bool = False
    """A declaration without `behavior` runs NON_BLOCKING, so blocking tools must say BLOCKING."""
    tool_response_scheduling: bool = False
    """Responses to NON_BLOCKING calls may carry `scheduling` (SILENT / WHEN_IDLE / INTERRUPT)."""
    affective_dialog: bool = False
    """Setup may set `enable_affective_dialog`."""
    proactive_audio: bool = False
    """Setup may set `proactivity.proactive_audio`."""
    proactive_audio_always_on: bool = False
    """The model decides when to speak whatever the setup says (the option is not sent)."""
    context_window_compression: bool = False
    """Setup may set `contextWindowCompression` (sliding window), for sessions past 15 minutes."""
    native_audio: bool = False
    """Audio is generated natively, not by text-to-speech after a text model (half-cascade)."""
    text_output: bool = False
    """`responseModalities` may be TEXT; otherwise AUDIO only."""


CONSERVATIVE = ModelCapabilities()
"""For models not in the table: no optional option is ever sent."""

_HALF_CASCADE = ModelCapabilities(
    non_blocking_tools=True,
    tool_response_scheduling=True,
    context_window_compression=True,
    text_output=True,
)
# Docs (2025): affective dialog and proactive audio are native-audio features; asynchronous
# (NON_BLOCKING) function calling was documented for half-cascade models only.
_NATIVE_AUDIO_2_5 = ModelCapabilities(
    affective_dialog=True,
    proactive_audio=True,
    context_window_compression=True,
    native_audio=True,
)
_FLASH_LIVE_3_1 = ModelCapabilities(  # sync tools only
    context_window_compression=True,
    native_audio=True,
)
_LIVE_3_8 = ModelCapabilities(  # NON_BLOCKING by default, proactive audio always on, AUDIO only
    non_blocking_tools=True,
    non_blocking_default=True,
    tool_response_scheduling=True,
    proactive_audio_always_on=True,
    context_window_compression=True,
    native_audio=True,
)

# Exact names, or prefixes ending in "*". First match wins. Prefixes end at a "-" so that, e.g.,
# "gemini-live-2.5-flash-preview" does not also claim a differently built "…-preview-native-audio".
_TABLE: tuple[tuple[str, ModelCapabilities], ...] = (
    ("gemini-live-2.5-flash-preview", _HALF_CASCADE),
    ("gemini-2.0-flash-live-001", _HALF_CASCADE),
    ("gemini-2.5-flash-native-audio-*", _NATIVE_AUDIO_2_5),
    ("gemini-3.1-flash-live-preview", _FLASH_LIVE_3_1),
    ("gemini-3.1-flash-live-preview-*", _FLASH_LIVE_3_1),
    ("gemini-3.8-live", _LIVE_3_8),
    ("gemini-3.8-live-*", _LIVE_3_8),
)


def capabilities_for(model: str) -> ModelCapabilities:
    """The capabilities of `model` (`models/` prefix optional); `CONSERVATIVE` if unknown."""
    name = model.strip().removeprefix("models/")
    for pattern, capabilities in _TABLE:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return capabilities
        elif name == pattern:
            return capabilities
    return CONSERVATIVE
