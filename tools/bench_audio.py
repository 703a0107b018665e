"""Benchmark phone_agent.audio's resamplers against soxr and audioop.ratecv.

Run: .venv/bin/python tools/bench_audio.py  (a few seconds)

Every resampler is fed 20 ms chunks of PCM16, as the bridge does. Columns:

* cost: process CPU time per 20 ms frame, best of 3 runs of 10,000 frames.
* delay: after each chunk, input time fed minus output time emitted (what the resampler holds
  back), plus the group delay of what it emits (the lag of a band-limited pulse). Average and
  maximum over the chunks of a 2 s stream.
* SNR: tones at -6 dBFS from 300 to 3400 Hz; tone power against the residual after a
  least-squares fit of the tone, on PCM (no mu-law). Worst case.
* alias (downlink): tones at -6 dBFS from 4.4 to 12 kHz at 24 kHz; output power relative to
  the input tone. Worst case.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from phone_agent.audio import (
    Decimator3x,
    DownlinkConverter,
    UplinkConverter,
    Upsampler2x,
    pcm16_to_mulaw,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Array = npt.NDArray[np.float64]
LEVEL = 0.5  # -6 dBFS
PASSBAND_HZ = [300, 500, 1000, 1500, 2000, 2500, 3000, 3300, 3400]
ALIAS_HZ = [4400, 4500, 4600, 4800, 5000, *range(5500, 12000, 500), 11900]
COST_FRAMES = 10_000
MAX_ALIAS_DB = -120.0  # quieter than int16 can show


class Resampler:
    """A streaming PCM16 resampler: process() takes and returns bytes; flush() ends it."""

    def process(self, pcm: bytes) -> bytes:
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""


class Ours(Resampler):
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._impl = Upsampler2x() if out_rate > in_rate else Decimator3x()

    def process(self, pcm: bytes) -> bytes:
        return self._impl.process(pcm)

    def flush(self) -> bytes:
        return self._impl.flush()


class Soxr(Resampler):
    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: bytes) -> bytes:
        out: npt.NDArray[np.int16] = self._stream.resample_chunk(np.frombuffer(pcm, "<i2"))
        return out.tobytes()

    def flush(self) -> bytes:
        empty = np.zeros(0, dtype=np.int16)
        out: npt.NDArray[np.int16] = self._stream.resample_chunk(empty, last=True)
        return out.tobytes()


class Ratecv(Resampler):
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._rates = (in_rate, out_rate)
        self._state: Any = None  # audioop's opaque filter state

    def process(self, pcm: bytes) -> bytes:
        out, self._state = audioop.ratecv(pcm, 2, 1, *self._rates, self._state)
        return bytes(out)


@dataclass
class Direction:
    name: str
    in_rate: int
    out_rate: int
    converter: Callable[[], Callable[[bytes], bytes]]  # the full converter, with mu-law
    converter_input: Callable[[bytes], bytes]


@dataclass
class Row:
    name: str
    cost_us: float
    delay_avg_ms: float
    delay_max_ms: float
    snr_db: float
    alias_db: float | None


def candidates(in_rate: int, out_rate: int) -> dict[str, Callable[[], Resampler]]:
    ours = "Upsampler2x (FIR)" if out_rate > in_rate else "Decimator3x (FIR)"
    return {
        ours: lambda: Ours(in_rate, out_rate),
        "soxr HQ": lambda: Soxr(in_rate, out_rate, "HQ"),
        "soxr VHQ": lambda: Soxr(in_rate, out_rate, "VHQ"),
        "audioop.ratecv": lambda: Ratecv(in_rate, out_rate),
    }


def to_pcm(x: Array) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def from_pcm(data: bytes) -> Array:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float) -> Array:
    return LEVEL * 32767 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def frames(pcm: bytes, rate: int) -> list[bytes]:
    size = 2 * rate // 50
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def stream(make: Callable[[], Resampler], pcm: bytes, rate: int) -> bytes:
    r = make()
    return b"".join(r.process(f) for f in frames(pcm, rate)) + r.flush()


def cost_us(feed: Callable[[bytes], bytes], frame: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(COST_FRAMES):
            feed(frame)
        best = min(best, time.process_time() - start)
    return 1e6 * best / COST_FRAMES


def group_delay_s(make: Callable[[], Resampler], in_rate: int, out_rate: int) -> float:
    # A Gaussian pulse (sigma 0.25 ms: nothing above 3.4 kHz) at 100 ms.
    t0, sigma = 0.1, 0.00025
    t = np.arange(int(0.2 * in_rate)) / in_rate
    out = from_pcm(stream(make, to_pcm(20000 * np.exp(-(((t - t0) / sigma) ** 2) / 2)), in_rate))
    k = int(np.argmax(out))
    a, b, c = out[k - 1 : k + 2]
    peak = k + 0.5 * (a - c) / (a - 2 * b + c)  # parabolic interpolation
    return float(peak / out_rate - t0)


def delay_ms(make: Callable[[], Resampler], in_rate: int, out_rate: int) -> tuple[float, float]:
    r = make()
    fed = emitted = 0
    held = []
    for frame in frames(to_pcm(tone(1000, in_rate, 2.0)), in_rate):
        emitted += len(r.process(frame)) // 2
        fed += len(frame) // 2
        held.append(fed / in_rate - emitted / out_rate)
    lag = 1000 * (np.array(held) + group_delay_s(make, in_rate, out_rate))
    return float(np.mean(lag)), float(np.max(lag))


def snr_db(out: Array, freq: float, rate: int) -> float:
    """Tone power against the residual after a least-squares fit of the tone."""
    out = out[rate // 20 : -rate // 20]
    t = np.arange(len(out)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis.T, out, rcond=None)
    fit = coef @ basis
    return float(10 * np.log10(np.sum(fit**2) / np.sum((out - fit) ** 2)))


def worst_snr_db(make: Callable[[], Resampler], in_rate: int, out_rate: int) -> float:
    return min(
        snr_db(from_pcm(stream(make, to_pcm(tone(f, in_rate, 0.5)), in_rate)), f, out_rate)
        for f in PASSBAND_HZ
    )


def worst_alias_db(make: Callable[[], Resampler], in_rate: int, out_rate: int) -> float:
    worst = MAX_ALIAS_DB
    for f in ALIAS_HZ:
        x = tone(f, in_rate, 0.5)
        out = from_pcm(stream(make, to_pcm(x), in_rate))[out_rate // 20 : -out_rate // 20]
        power = np.mean(out**2) / np.mean(x**2)
        if power > 0:
            worst = max(worst, float(10 * np.log10(power)))
    return worst


def measure(direction: Direction) -> tuple[list[Row], float]:
    rng = np.random.default_rng(0)
    in_rate, out_rate = direction.in_rate, direction.out_rate
    frame = to_pcm(rng.normal(0, 4000, in_rate // 50))
    rows = []
    for name, make in candidates(in_rate, out_rate).items():
        avg, worst = delay_ms(make, in_rate, out_rate)
        rows.append(
            Row(
                name=name,
                cost_us=cost_us(make().process, frame),
                delay_avg_ms=avg,
                delay_max_ms=worst,
                snr_db=worst_snr_db(make, in_rate, out_rate),
                alias_db=worst_alias_db(make, in_rate, out_rate) if out_rate < in_rate else None,
            )
        )
    return rows, cost_us(direction.converter(), direction.converter_input(frame))


def main() -> None:
    directions = [
        Direction(
            "UplinkConverter", 8000, 16000, lambda: UplinkConverter().convert, pcm16_to_mulaw
        ),
        Direction("DownlinkConverter", 24000, 8000, lambda: DownlinkConverter().convert, bytes),
    ]
    print(f"numpy {np.__version__}, soxr {soxr.__version__}, Python {sys.version.split()[0]}")
    for direction in directions:
        rows, full_cost = measure(direction)
        baseline = next(r.cost_us for r in rows if r.name == "soxr HQ")
        print()
        rates = f"{direction.in_rate} Hz -> {direction.out_rate} Hz"
        print(f"{direction.name} resampling stage: PCM16 {rates}, fed 20 ms chunks")
        print(
            f"| {'resampler':<30} | {'µs/frame':>8} | {'× soxr HQ':>9} | {'delay avg ms':>12} "
            f"| {'delay max ms':>12} | {'SNR dB':>6} | {'alias dB':>8} |"
        )
        print(f"|{'-' * 32}|{'-' * 9}:|{'-' * 10}:|{'-' * 13}:|{'-' * 13}:|{'-' * 7}:|{'-' * 9}:|")
        for r in rows:
            alias = "" if r.alias_db is None else f"{r.alias_db:.1f}"
            if r.alias_db == MAX_ALIAS_DB:
                alias = f"<{MAX_ALIAS_DB:.0f}"
            print(
                f"| {r.name:<30} | {r.cost_us:>8.1f} | {r.cost_us / baseline:>9.2f} "
                f"| {r.delay_avg_ms:>12.2f} | {r.delay_max_ms:>12.2f} | {r.snr_db:>6.1f} "
                f"| {alias:>8} |"
            )
        print(f"{direction.name} (with the mu-law step): {full_cost:.1f} µs/frame")


if __name__ == "__main__":
    main()
