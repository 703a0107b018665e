"""Streaming audio conversion between Twilio Media Streams and the Gemini Live API.

Uplink (caller -> model): mu-law 8 kHz -> PCM16 16 kHz, `UplinkConverter`.
Downlink (model -> caller): PCM16 24 kHz -> mu-law 8 kHz, `DownlinkConverter`.
PCM16 is signed 16-bit little-endian mono throughout.

The converters are a mu-law codec (`audioop`) around a resampler, and the resamplers
(`Upsampler2x`, `Decimator3x`) are exposed on their own so they can be measured on PCM.

Why a hand-written FIR rather than a library:

* numpy has no streaming resampler.
* soxr's `ResampleStream` meets the quality bar but holds output back in blocks: fed 20 ms
  chunks it lags 43-85 ms on average and up to 150 ms at HQ/VHQ, against our bar of at most
  5 ms and no block buffering (a 20 ms frame in must give ~20 ms out at once).
* `audioop.ratecv` has no anti-alias filter: 24 -> 8 kHz aliases at 0 dB.

So each resampler is a linear-phase polyphase FIR (Kaiser-windowed sinc, designed once at
import) with a history buffer, with 71-72 dB of stopband: 3400 -> 4600 Hz for the 2x
interpolator (images at 16 kHz) and 3400 -> 4400 Hz for the 3x decimator (aliases at 24 kHz).
Delays are 1.875 ms uplink and 2.25 ms downlink. Output depends only on the input samples,
never on how they were chunked. `tools/bench_audio.py` and docs/audio.md have the figures.

`flush()` ends a turn: it pushes zeros through the filter so the whole tail (the last
`delay_ms` of audio plus the filter's ring-out) comes out, then resets. `reset()` drops all
state without output (barge-in).
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt

with warnings.catch_warnings():
    # Deprecated in the stdlib on 3.11/3.12; the audioop-lts package provides it on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "MULAW_SILENCE",
    "Decimator3x",
    "DownlinkConverter",
    "UplinkConverter",
    "Upsampler2x",
    "mulaw_to_pcm16",
    "pcm16_peak",
    "pcm16_rms",
    "pcm16_to_mulaw",
]

MULAW_SILENCE = b"\xff"

_PCM16 = np.dtype("<i2")
# Taps are stored as integers scaled by 2**24. With int16 samples every product and partial
# sum is then an integer below 2**53, so float64 convolution is exact whatever the summation
# order: the output is bit-identical however the input is chunked.
_TAP_SCALE = 2.0**24

Float64Array = npt.NDArray[np.float64]


def mulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 mu-law to PCM16 at the same rate."""
    return audioop.ulaw2lin(data, 2)


def pcm16_rms(data: bytes) -> int:
    """RMS of PCM16 samples (C speed: levels are measured on every frame)."""
    return int(audioop.rms(data, 2))


def pcm16_peak(data: bytes) -> int:
    """Largest absolute PCM16 sample."""
    return int(audioop.max(data, 2))


def pcm16_to_mulaw(data: bytes) -> bytes:
    """Encode PCM16 (an even number of bytes) to G.711 mu-law at the same rate."""
    if len(data) % 2:
        raise ValueError("PCM16 data must be a whole number of 2-byte samples")
    return audioop.lin2ulaw(data, 2)


def _kaiser_lowpass(taps: int, cutoff_hz: float, rate_hz: float, beta: float) -> Float64Array:
    """Windowed-sinc lowpass with unity DC gain, as integer taps scaled by _TAP_SCALE."""
    t = np.arange(taps) - (taps - 1) / 2
    fc = cutoff_hz / rate_hz
    h: Float64Array = 2 * fc * np.sinc(2 * fc * t) * np.kaiser(taps, beta)
    return np.round(h * _TAP_SCALE)


def _to_pcm16(acc: Float64Array) -> bytes:
    scaled = np.rint(acc / _TAP_SCALE)
    return np.clip(scaled, -32768, 32767).astype(_PCM16).tobytes()


# Kaiser's formula for 72 dB (beta = 0.1102 * (72 - 8.7) = 7.0) gives 60.5 taps at 16 kHz for
# a 1200 Hz transition and 107 taps at 24 kHz for 1000 Hz; both are rounded up so the delay is
# a whole number of output samples.
#
# 2x interpolation filter at 16 kHz, cut off at 4 kHz (fs/4) with a gain of 2: a half-band
# filter, so every other tap is zero except the centre one, which is 1. The even outputs are
# thus the input samples delayed by _UP_DELAY_IN, and only the odd outputs need the FIR.
_UP_TAPS = 61
_UP_H = 2 * _kaiser_lowpass(_UP_TAPS, 4000, 16000, 7.0)
_UP_ODD = _UP_H[1::2].copy()  # 30 taps
_UP_DELAY_IN = (_UP_TAPS - 1) // 4  # 15 input samples = 30 output samples = 1.875 ms

# 3x decimation filter at 24 kHz, cut off at 3900 Hz; only every third output is kept.
_DEC_TAPS = 109
_DEC_H = _kaiser_lowpass(_DEC_TAPS, 3900, 24000, 7.0)  # delay 54 input = 18 output samples


class _Pcm16Stream:
    """Splits a byte stream into whole int16 samples, carrying an odd trailing byte."""

    def __init__(self) -> None:
        self._carry = b""

    def samples(self, pcm: bytes) -> npt.NDArray[np.int16]:
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) % 2:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        return np.frombuffer(pcm, dtype=_PCM16)


class Upsampler2x:
    """PCM16 8 kHz -> PCM16 16 kHz, two output samples per input sample, no buffering."""

    delay_ms: float = 1000 * 2 * _UP_DELAY_IN / 16000

    def __init__(self) -> None:
        self.reset()

    def process(self, pcm: bytes) -> bytes:
        x = self._stream.samples(pcm)
        if not len(x):
            return b""
        self._fed = True
        return self._run(x.astype(np.float64))

    def flush(self) -> bytes:
        """Return the filter tail (ends the stream), then reset."""
        out = self._run(np.zeros(len(self._history))) if self._fed else b""
        self.reset()
        return out

    def reset(self) -> None:
        self._stream = _Pcm16Stream()
        self._fed = False
        self._history: Float64Array = np.zeros(len(_UP_ODD))

    def _run(self, x: Float64Array) -> bytes:
        n = len(x)
        buf = np.concatenate((self._history, x))
        self._history = buf[n:]
        acc = np.empty(2 * n)
        acc[0::2] = buf[_UP_DELAY_IN : _UP_DELAY_IN + n] * _TAP_SCALE
        acc[1::2] = np.convolve(buf[1:], _UP_ODD, "valid")
        return _to_pcm16(acc)


class Decimator3x:
    """PCM16 24 kHz -> PCM16 8 kHz, one output sample per three input samples, no buffering.

    Any chunk size works: an odd trailing byte is carried to the next call and the
    decimation phase is tracked across calls.
    """

    delay_ms: float = 1000 * (_DEC_TAPS - 1) / 2 / 24000

    def __init__(self) -> None:
        self.reset()

    def process(self, pcm: bytes) -> bytes:
        x = self._stream.samples(pcm)
        if not len(x):
            return b""
        self._fed = True
        return self._run(x.astype(np.float64))

    def flush(self) -> bytes:
        """Return the filter tail (ends the stream), then reset."""
        out = self._run(np.zeros(len(self._history))) if self._fed else b""
        self.reset()
        return out

    def reset(self) -> None:
        self._stream = _Pcm16Stream()
        self._fed = False
        self._history: Float64Array = np.zeros(_DEC_TAPS - 1)
        self._phase = 0  # input samples seen, mod 3

    def _run(self, x: Float64Array) -> bytes:
        n = len(x)
        buf = np.concatenate((self._history, x))
        self._history = buf[n:]
        # acc[i] is the filter output at input sample (seen + i); keep multiples of 3.
        acc = np.convolve(buf, _DEC_H, "valid")[-self._phase % 3 :: 3]
        self._phase = (self._phase + n) % 3
        return _to_pcm16(acc)


class UplinkConverter:
    """Twilio to Gemini: mu-law 8 kHz -> PCM16 16 kHz."""

    def __init__(self) -> None:
        self._upsampler = Upsampler2x()

    @property
    def delay_ms(self) -> float:
        return self._upsampler.delay_ms

    def convert(self, mulaw: bytes) -> bytes:
        return self.convert_pcm(mulaw_to_pcm16(mulaw))

    def convert_pcm(self, pcm8k: bytes) -> bytes:
        """The same, from audio already decoded (the bridge decodes each frame once)."""
        return self._upsampler.process(pcm8k)

    def flush(self) -> bytes:
        return self._upsampler.flush()

    def reset(self) -> None:
        self._upsampler.reset()


class DownlinkConverter:
    """Gemini to Twilio: PCM16 24 kHz -> mu-law 8 kHz."""

    def __init__(self) -> None:
        self._decimator = Decimator3x()

    @property
    def delay_ms(self) -> float:
        return self._decimator.delay_ms

    def convert(self, pcm24k: bytes) -> bytes:
        return pcm16_to_mulaw(self._decimator.process(pcm24k))

    def flush(self) -> bytes:
        return pcm16_to_mulaw(self._decimator.flush())

    def reset(self) -> None:
        self._decimator.reset()
