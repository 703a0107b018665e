from __future__ import annotations

import numpy as np
import pytest

from phone_agent.levels import AudioLevels


def tone(amplitude: float, n: int = 160) -> bytes:
    t = np.arange(n)
    return (amplitude * np.sin(2 * np.pi * 440 * t / 8000)).astype("<i2").tobytes()


def test_levels_report_loudness_silence_and_clipping() -> None:
    levels = AudioLevels()
    assert levels.report().frames == 0 and levels.report().mean_rms_dbfs is None
    for _ in range(3):
        levels.feed(tone(16384.0))  # a sine at half scale: RMS -9 dBFS
    levels.feed(bytes(320))  # digital silence
    report = levels.report()
    assert report.frames == 4
    assert report.peak_rms_dbfs == pytest.approx(-9.0, abs=0.1)
    assert report.silent_ratio == 0.25 and report.clipped_ratio == 0.0
    levels.feed(np.full(160, 32767, dtype="<i2").tobytes())  # a clipped frame
    assert levels.report().clipped_ratio == pytest.approx(160 / 800)


def test_an_odd_trailing_byte_is_ignored() -> None:
    levels = AudioLevels()
    levels.feed(tone(1000.0) + b"\x01")
    assert levels.samples == 160
