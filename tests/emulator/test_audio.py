from __future__ import annotations

import numpy as np
import pytest

from phone_agent.emulator import audio


def test_tone_has_the_requested_frequency_and_peak() -> None:
    pcm = audio.tone(1000.0, 500, 0.5)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) == 12_000
    assert np.abs(samples).max() == pytest.approx(0.5 * 32767, rel=0.01)
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 24_000)[spectrum.argmax()] == pytest.approx(1000.0)
    assert samples[0] == 0  # faded in


def test_chunks_split_on_sample_boundaries() -> None:
    pcm = audio.silence(100)
    parts = audio.chunks(pcm, 40)
    assert [len(p) for p in parts] == [1920, 1920, 960]
    assert b"".join(parts) == pcm
    assert audio.chunks(b"\0\0\0", 40) == [b"\0\0"]
    assert audio.duration_ms(pcm, 24_000) == 100.0


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 20])
def test_split_text_rejoins_exactly(pieces: int) -> None:
    text = "Your order  shipped yesterday. "
    parts = audio.split_text(text, pieces)
    assert len(parts) == pieces
    assert "".join(parts) == text


def test_split_text_spreads_words_in_order() -> None:
    assert audio.split_text("a b c d", 2) == ["a b", " c d"]
    assert audio.split_text("", 2) == ["", ""]
    assert audio.split_text("x", 0) == []
