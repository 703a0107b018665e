from __future__ import annotations

import pytest

from phone_agent.gemini import Usage
from phone_agent.pricing import estimate, rates_for


def test_audio_tokens_priced_by_direction() -> None:
    usage = Usage(
        prompt_tokens=1000,
        response_tokens=500,
        total_tokens=1500,
        prompt_by_modality={"AUDIO": 900, "TEXT": 100},
        response_by_modality={"AUDIO": 500},
    )
    cost = estimate([usage, usage], "gemini-live-2.5-flash-preview")
    assert (cost.audio_in, cost.text_in, cost.audio_out) == (1800, 200, 1000)
    assert cost.usd == pytest.approx((1800 * 3.0 + 200 * 0.5 + 1000 * 12.0) / 1e6)


def test_model_rate_cards() -> None:
    assert rates_for("gemini-2.0-flash-live-001").audio_out == 8.5
    assert rates_for("gemini-2.5-flash-native-audio-latest").audio_out == 12.0


def test_usage_without_breakdown_counts_as_audio() -> None:
    cost = estimate([Usage(100, 50, 150, {}, {})], "gemini-live-2.5-flash-preview")
    assert (cost.audio_in, cost.audio_out) == (100, 50)
