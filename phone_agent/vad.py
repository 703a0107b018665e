"""Energy-based voice activity detection, measured in audio time.

Pure: no clock and no I/O. Time advances only as samples are fed, so the same audio always gives the
same events, however it was chunked and however fast it arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FULL_SCALE = 32768.0


@dataclass(frozen=True)
class SpeechStarted:
    """Speech was confirmed; `at_ms` is the audio time at which it was confirmed."""

    at_ms: float


@dataclass(frozen=True)
class SpeechEnded:
    """Speech ended; `at_ms` is the audio time at which the silence reached its required length."""

    at_ms: float


VadEvent = SpeechStarted | SpeechEnded


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB full scale (a full-scale square wave is 0 dBFS)."""
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20.0 * math.log10(rms / FULL_SCALE) if rms > 0 else -math.inf


class EnergyVad:
    """Detects speech in 16-bit mono PCM by the RMS level of fixed windows.

    Speech starts once `start_ms` of consecutive windows are at or above `threshold_dbfs`, and ends
    once `silence_ms` of consecutive windows are below it. Any sample rate works: the window is
    `window_ms` worth of samples at each chunk's rate. A change of rate drops the partial window.
    """

    def __init__(
        self,
        *,
        threshold_dbfs: float = -40.0,
        start_ms: int = 60,
        silence_ms: int = 500,
        window_ms: int = 20,
    ) -> None:
        if window_ms <= 0 or start_ms <= 0 or silence_ms <= 0:
            raise ValueError("window_ms, start_ms and silence_ms must be positive")
        self.threshold_dbfs = threshold_dbfs
        self.window_ms = window_ms
        self._start_windows = max(1, math.ceil(start_ms / window_ms))
        self._silence_windows = max(1, math.ceil(silence_ms / window_ms))
        self._rate = 0
        self._pending = b""
        self._audio_ms = 0.0
        self._loud_run = 0
        self._quiet_run = 0
        self.speaking = False

    @property
    def pending(self) -> bool:
        """Part of a window is buffered (`feed_window` must wait for it to complete)."""
        return bool(self._pending)

    @property
    def audio_ms(self) -> float:
        """Audio time consumed so far (complete windows only)."""
        return self._audio_ms

    def feed(self, pcm: bytes, rate: int) -> list[VadEvent]:
        """Consume little-endian int16 mono PCM at `rate` Hz; return the events it caused."""
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        if rate != self._rate:
            self._rate = rate
            self._pending = b""
        data = self._pending + pcm
        window_bytes = 2 * max(1, rate * self.window_ms // 1000)
        usable = len(data) - len(data) % window_bytes
        self._pending = data[usable:]
        if usable == 0:
            return []
        windows = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, window_bytes // 2)
        power = np.mean(np.square(windows.astype(np.float64)), axis=1)
        threshold_power = (FULL_SCALE * 10.0 ** (self.threshold_dbfs / 20.0)) ** 2
        loud = power >= threshold_power
        window_ms = (window_bytes // 2) * 1000.0 / rate
        events: list[VadEvent] = []
        for is_loud in loud.tolist():
            self._audio_ms += window_ms
            event = self._step(bool(is_loud))
            if event is not None:
                events.append(event)
        return events

    def feed_window(self, power: float, rate: int) -> VadEvent | None:
        """One whole window whose mean power (of int16 samples) the caller measured already.

        The same as `feed` with that window's samples, without measuring them twice.
        """
        if rate != self._rate:
            self._rate = rate
            self._pending = b""
        if self._pending:
            raise ValueError("feed_window after a partial window fed by `feed`")
        self._audio_ms += self.window_ms
        threshold_power = (FULL_SCALE * 10.0 ** (self.threshold_dbfs / 20.0)) ** 2
        return self._step(power >= threshold_power)

    def flush(self) -> list[VadEvent]:
        """End of the audio stream: drop the partial window and end any speech in progress."""
        self._pending = b""
        self._loud_run = self._quiet_run = 0
        if not self.speaking:
            return []
        self.speaking = False
        return [SpeechEnded(self._audio_ms)]

    def _step(self, is_loud: bool) -> VadEvent | None:
        if is_loud:
            self._loud_run += 1
            self._quiet_run = 0
            if not self.speaking and self._loud_run >= self._start_windows:
                self.speaking = True
                return SpeechStarted(self._audio_ms)
        else:
            self._quiet_run += 1
            self._loud_run = 0
            if self.speaking and self._quiet_run >= self._silence_windows:
                self.speaking = False
                return SpeechEnded(self._audio_ms)
        return None
