"""Audio levels, sampled: loudness, clipping and silence, never the audio itself (seed §10).

`AudioLevels` keeps running sums over 16-bit PCM frames: the frames' mean and peak RMS level
(dBFS), the share of clipped samples (at or within 1 LSB of full scale: a line that is too hot),
and the share of silent frames (below `SILENCE_DBFS`: a dead line or a muted phone). Each
direction of a call has one; the call's end log and call record carry both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phone_agent.audio import pcm16_peak, pcm16_rms

FULL_SCALE = 32768.0
SILENCE_DBFS = -50.0
_CLIP = 32766  # |sample| at or above this counts as clipped
_SILENCE_POWER = (FULL_SCALE * 10 ** (SILENCE_DBFS / 20.0)) ** 2


@dataclass(frozen=True)
class LevelReport:
    frames: int
    mean_rms_dbfs: float | None
    peak_rms_dbfs: float | None
    clipped_ratio: float
    silent_ratio: float

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "frames": self.frames,
            "mean_rms_dbfs": self.mean_rms_dbfs,
            "peak_rms_dbfs": self.peak_rms_dbfs,
            "clipped_ratio": self.clipped_ratio,
            "silent_ratio": self.silent_ratio,
        }


def _dbfs(power: float) -> float | None:
    return round(10.0 * math.log10(power / FULL_SCALE**2), 1) if power > 0 else None


class AudioLevels:
    """Running level statistics of one direction of a call (see the module docstring)."""

    def __init__(self) -> None:
        self.frames = 0
        self.samples = 0
        self._power_sum = 0.0
        self._peak_power = 0.0
        self._clipped = 0
        self._silent = 0

    def feed(self, pcm16: bytes) -> float:
        """Account one frame of little-endian int16 PCM; returns its mean power."""
        count = len(pcm16) // 2
        if count == 0:
            return 0.0
        pcm16 = pcm16[: 2 * count]
        power = float(pcm16_rms(pcm16)) ** 2
        self.frames += 1
        self.samples += count
        self._power_sum += power
        self._peak_power = max(self._peak_power, power)
        if pcm16_peak(pcm16) >= _CLIP:  # rare: count only then
            samples = np.frombuffer(pcm16, dtype="<i2").astype(np.int32)
            self._clipped += int(np.count_nonzero(np.abs(samples) >= _CLIP))
        if power < _SILENCE_POWER:
            self._silent += 1
        return power

    def report(self) -> LevelReport:
        if self.frames == 0:
            return LevelReport(0, None, None, 0.0, 0.0)
        return LevelReport(
            frames=self.frames,
            mean_rms_dbfs=_dbfs(self._power_sum / self.frames),
            peak_rms_dbfs=_dbfs(self._peak_power),
            clipped_ratio=round(self._clipped / self.samples, 6),
            silent_ratio=round(self._silent / self.frames, 4),
        )
