from __future__ import annotations

from phone_agent.emulator.script import Usage
from phone_agent.emulator.usage import TurnUsage


def test_usage_counts_25_tokens_a_second_of_audio() -> None:
    usage = TurnUsage(audio_in_ms=1700, text_in_chars=9, audio_out_ms=400).usage_metadata()
    assert usage == {
        "promptTokenCount": 46,
        "responseTokenCount": 10,
        "totalTokenCount": 56,
        "promptTokensDetails": [
            {"modality": "AUDIO", "tokenCount": 43},
            {"modality": "TEXT", "tokenCount": 3},
        ],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 10}],
    }


def test_scripted_usage_overrides_the_counts() -> None:
    overridden = TurnUsage(audio_out_ms=400).usage_metadata(Usage(prompt_tokens=100))
    assert overridden["promptTokenCount"] == 100
    assert overridden["totalTokenCount"] == 110


def test_absorb_adds_counts() -> None:
    usage = TurnUsage(audio_in_ms=100, text_in_chars=4)
    usage.absorb(TurnUsage(audio_in_ms=40, text_out_chars=2))
    assert usage == TurnUsage(audio_in_ms=140, text_in_chars=4, text_out_chars=2)
