from __future__ import annotations

import dataclasses

import pytest

from phone_agent.capabilities import CONSERVATIVE, ModelCapabilities, capabilities_for


@pytest.mark.parametrize("model", ["gemini-live-2.5-flash-preview", "gemini-2.0-flash-live-001"])
def test_half_cascade_models_take_non_blocking_tools_and_text(model: str) -> None:
    caps = capabilities_for(model)
    assert caps.non_blocking_tools and caps.tool_response_scheduling and caps.text_output
    assert not caps.native_audio and not caps.non_blocking_default


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash-native-audio-preview-09-2025",
        "gemini-2.5-flash-native-audio-preview-12-2025",
        "gemini-2.5-flash-native-audio-latest",
        "models/gemini-2.5-flash-native-audio-latest",
    ],
)
def test_native_audio_models_by_prefix(model: str) -> None:
    caps = capabilities_for(model)
    assert caps.native_audio and caps.affective_dialog and caps.proactive_audio
    assert not caps.text_output


def test_flash_live_3_1_is_sync_tools_only() -> None:
    caps = capabilities_for("gemini-3.1-flash-live-preview")
    assert not caps.non_blocking_tools and not caps.tool_response_scheduling
    assert caps.native_audio and not caps.text_output


def test_live_3_8_is_non_blocking_by_default_and_audio_only() -> None:
    caps = capabilities_for("gemini-3.8-live")
    assert caps.non_blocking_tools and caps.non_blocking_default and caps.tool_response_scheduling
    assert caps.proactive_audio_always_on and not caps.proactive_audio
    assert not caps.text_output
    assert capabilities_for("gemini-3.8-live-001") == caps


@pytest.mark.parametrize(
    "model",
    [
        "gemini-9-live",
        "",
        # An exact name must not claim a longer, differently built model.
        "gemini-live-2.5-flash-preview-native-audio",
        "gemini-3.8-lively",
    ],
)
def test_unknown_models_get_every_option_off(model: str) -> None:
    caps = capabilities_for(model)
    assert caps == CONSERVATIVE
    assert not any(dataclasses.astuple(caps))


def test_capabilities_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        capabilities_for("gemini-3.8-live").text_output = True  # type: ignore[misc]
    assert isinstance(CONSERVATIVE, ModelCapabilities)
