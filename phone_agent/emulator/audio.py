"""PCM16 helpers: synthesising the emulator's audio and cutting it into chunks."""

from __future__ import annotations

import re

import numpy as np

OUTPUT_RATE = 24_000
"""The Live API always answers with 24 kHz 16-bit mono PCM."""

_FADE_MS = 5


def tone(
    frequency_hz: float, duration_ms: float, amplitude: float, rate: int = OUTPUT_RATE
) -> bytes:
    """A sine tone as int16 little-endian PCM; `amplitude` is the peak as a fraction of full scale.

    The first and last 5 ms are faded so the tone has no clicks.
    """
    n = round(rate * duration_ms / 1000)
    t = np.arange(n, dtype=np.float64) / rate
    wave = amplitude * np.sin(2 * np.pi * frequency_hz * t)
    fade = min(n // 2, rate * _FADE_MS // 1000)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    return (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def silence(duration_ms: float, rate: int = OUTPUT_RATE) -> bytes:
    """Digital silence as int16 PCM."""
    return bytes(2 * round(rate * duration_ms / 1000))


def duration_ms(pcm: bytes, rate: int) -> float:
    """Duration of int16 mono PCM in milliseconds."""
    return (len(pcm) // 2) * 1000.0 / rate


def chunks(pcm: bytes, chunk_ms: float, rate: int = OUTPUT_RATE) -> list[bytes]:
    """Cut PCM into chunks of `chunk_ms` (the last one may be shorter), on sample boundaries."""
    size = 2 * max(1, round(rate * chunk_ms / 1000))
    end = len(pcm) - len(pcm) % 2
    return [pcm[i : min(i + size, end)] for i in range(0, end, size)]


def split_text(text: str, pieces: int) -> list[str]:
    """Spread the words of `text` over `pieces` strings, in order, whose concatenation is `text`.

    Each word keeps its leading whitespace, so the pieces join back without a separator. Some pieces
    are empty when there are fewer words than pieces.
    """
    if pieces <= 0:
        return []
    words = re.findall(r"\s*\S+", text)
    if words:
        words[-1] += text[len("".join(words)) :]
    bounds = [round(i * len(words) / pieces) for i in range(pieces + 1)]
    return ["".join(words[bounds[i] : bounds[i + 1]]) for i in range(pieces)]
