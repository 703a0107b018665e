import numpy as np
import numpy.typing as npt
import pytest

from phone_agent.audio import (
    MULAW_SILENCE,
    Decimator3x,
    DownlinkConverter,
    UplinkConverter,
    Upsampler2x,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
)

Array = npt.NDArray[np.float64]
Converter = UplinkConverter | DownlinkConverter

LEVEL = 10 ** (-6 / 20)  # -6 dBFS
PASSBAND_HZ = [300, 500, 1000, 1500, 2000, 2500, 3000, 3300, 3400]
ALIAS_HZ = [4400, 4500, 4600, 4800, 5000, 6000, 7000, 7800, 8200, 9000, 10000, 11000, 11900]


def tone(freq: float, rate: int, n: int, delay_s: float = 0.0, level: float = LEVEL) -> Array:
    t = np.arange(n) / rate - delay_s
    return level * 32767 * np.sin(2 * np.pi * freq * t)


def to_pcm(x: Array) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def from_pcm(data: bytes) -> Array:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def db(power_ratio: float) -> float:
    return float(10 * np.log10(power_ratio))


def snr_db(out: Array, ideal: Array, skip: int) -> float:
    """Tone power against everything else: error versus the ideal (delayed) sinusoid."""
    out, ideal = out[skip:-skip], ideal[skip:-skip]
    return db(float(np.mean(ideal**2) / np.mean((out - ideal) ** 2)))


def peak_hz(x: Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def chunked(data: bytes, rng: np.random.Generator, max_size: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = int(rng.integers(0, max_size + 1))  # includes empty and odd-sized chunks
        chunks.append(data[i : i + size])
        i += size
    return chunks


# Passband quality, measured on PCM (no mu-law).


@pytest.mark.parametrize("freq", PASSBAND_HZ)
def test_upsampler_passband_snr(freq: int) -> None:
    up = Upsampler2x()
    out = from_pcm(up.process(to_pcm(tone(freq, 8000, 4000))))
    ideal = tone(freq, 16000, len(out), delay_s=up.delay_ms / 1000)
    assert snr_db(out, ideal, skip=200) >= 60


@pytest.mark.parametrize("freq", PASSBAND_HZ)
def test_decimator_passband_snr(freq: int) -> None:
    dec = Decimator3x()
    out = from_pcm(dec.process(to_pcm(tone(freq, 24000, 12000))))
    ideal = tone(freq, 8000, len(out), delay_s=dec.delay_ms / 1000)
    assert snr_db(out, ideal, skip=100) >= 60


@pytest.mark.parametrize("freq", ALIAS_HZ)
def test_decimator_aliasing(freq: int) -> None:
    x = tone(freq, 24000, 12000, level=1.0)
    out = from_pcm(Decimator3x().process(to_pcm(x)))[100:-100]
    assert np.mean(out**2) <= np.mean(x**2) * 10 ** (-60 / 10)


def test_upsampler_rejects_images() -> None:
    # An 8 kHz tone at 3400 Hz has its image at 4600 Hz in the 16 kHz output.
    out = from_pcm(Upsampler2x().process(to_pcm(tone(3400, 8000, 4000, level=1.0))))[200:-200]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    image = spectrum[freqs > 4200].max()
    assert 20 * np.log10(image / spectrum.max()) <= -60


# Delay and streaming.


def test_delay_is_small() -> None:
    assert 0 < Upsampler2x().delay_ms <= 3
    assert 0 < Decimator3x().delay_ms <= 3
    assert UplinkConverter().delay_ms == Upsampler2x().delay_ms <= 5
    assert DownlinkConverter().delay_ms == Decimator3x().delay_ms <= 5


def test_uplink_no_block_buffering() -> None:
    conv = UplinkConverter()
    mulaw = pcm16_to_mulaw(to_pcm(tone(1000, 8000, 8000)))
    for i in range(0, len(mulaw), 160):  # 20 ms frames: 160 bytes in, 20 ms (640 bytes) out
        assert len(conv.convert(mulaw[i : i + 160])) == 640


def test_downlink_no_block_buffering() -> None:
    conv = DownlinkConverter()
    pcm = to_pcm(tone(1000, 24000, 24000))
    for i in range(0, len(pcm), 960):  # 20 ms frames: 960 bytes in, 160 bytes out
        assert len(conv.convert(pcm[i : i + 960])) == 160


def test_output_follows_input_for_any_chunking() -> None:
    rng = np.random.default_rng(7)
    pcm = to_pcm(tone(1000, 24000, 6000))
    up, dec = Upsampler2x(), Decimator3x()
    fed = up_out = dec_out = 0
    for chunk in chunked(pcm, rng, 999):
        fed += len(chunk)
        up_out += len(up.process(chunk))
        dec_out += len(dec.process(chunk))
        samples_in = fed // 2
        assert up_out // 2 == 2 * samples_in
        assert abs(dec_out // 2 - samples_in / 3) <= 1


@pytest.mark.parametrize("seed", range(4))
def test_chunking_is_bit_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = tone(1000, 24000, 6000) + rng.normal(0, 4000, 6000)
    pcm = to_pcm(x)
    mulaw = pcm16_to_mulaw(pcm)
    for make in (Upsampler2x, Decimator3x):
        whole = make()
        expected = whole.process(pcm) + whole.flush()
        streamed = make()
        got = b"".join(streamed.process(c) for c in chunked(pcm, rng, 301)) + streamed.flush()
        assert got == expected
    converters: list[tuple[type[Converter], bytes]] = [
        (UplinkConverter, mulaw),
        (DownlinkConverter, pcm),
    ]
    for conv, data in converters:
        whole_conv = conv()
        expected = whole_conv.convert(data) + whole_conv.flush()
        streamed_conv = conv()
        got = b"".join(streamed_conv.convert(c) for c in chunked(data, rng, 301))
        assert got + streamed_conv.flush() == expected


def test_decimator_carries_odd_byte() -> None:
    pcm = to_pcm(tone(1000, 24000, 300))
    dec = Decimator3x()
    out = b"".join(dec.process(pcm[i : i + 1]) for i in range(len(pcm)))
    assert out == Decimator3x().process(pcm)
    assert len(out) == 2 * 100


# Clipping.


@pytest.mark.parametrize(("make", "rate"), [(Upsampler2x, 8000), (Decimator3x, 24000)])
def test_full_scale_clips_without_wraparound(
    make: type[Upsampler2x | Decimator3x], rate: int
) -> None:
    # A full-scale square wave: the filters' Gibbs overshoot goes past int16 range.
    n, half_period = rate // 10, rate // 200
    square = np.where((np.arange(n) // half_period) % 2 == 0, 32767.0, -32768.0)
    conv = make()
    out = from_pcm(conv.process(to_pcm(square)) + conv.flush())
    out_rate = 16000 if make is Upsampler2x else 8000
    delay = round(conv.delay_ms * out_rate / 1000)
    expected_sign = np.sign(np.repeat(square, 2) if make is Upsampler2x else square[::3])
    aligned = out[delay : delay + len(expected_sign)]
    edges = np.flatnonzero(np.diff(expected_sign)) + 1
    near_edge = np.zeros(len(expected_sign), dtype=bool)
    for e in edges:
        near_edge[max(0, e - 1) : e + 1] = True
    assert out.max() == 32767 and out.min() == -32768
    assert np.all(np.sign(aligned[~near_edge]) == expected_sign[~near_edge])


# Round trips.


def test_mulaw_silence() -> None:
    assert mulaw_to_pcm16(MULAW_SILENCE * 4) == bytes(8)
    assert pcm16_to_mulaw(bytes(8)) == MULAW_SILENCE * 4


def test_mulaw_round_trip_preserves_tone() -> None:
    x = tone(1000, 8000, 8000)
    back = from_pcm(mulaw_to_pcm16(pcm16_to_mulaw(to_pcm(x))))
    assert snr_db(back, x, skip=1) >= 30  # G.711 at -6 dBFS: ~34 dB


def test_pcm16_to_mulaw_rejects_odd_bytes() -> None:
    with pytest.raises(ValueError):
        pcm16_to_mulaw(b"\x00\x00\x00")


@pytest.mark.parametrize("freq", [440, 1000, 3000])
def test_uplink_preserves_tone(freq: int) -> None:
    conv = UplinkConverter()
    out = from_pcm(conv.convert(pcm16_to_mulaw(to_pcm(tone(freq, 8000, 8000)))) + conv.flush())
    assert abs(peak_hz(out, 16000) - freq) <= 2
    ideal = tone(freq, 16000, len(out), delay_s=conv.delay_ms / 1000)
    assert snr_db(out, ideal, skip=200) >= 30  # limited by mu-law


@pytest.mark.parametrize("freq", [440, 1000, 3000])
def test_downlink_preserves_tone(freq: int) -> None:
    conv = DownlinkConverter()
    out = from_pcm(mulaw_to_pcm16(conv.convert(to_pcm(tone(freq, 24000, 24000))) + conv.flush()))
    assert abs(peak_hz(out, 8000) - freq) <= 2
    ideal = tone(freq, 8000, len(out), delay_s=conv.delay_ms / 1000)
    assert snr_db(out, ideal, skip=100) >= 30  # limited by mu-law


# Flush and reset.


@pytest.mark.parametrize(
    ("make", "rate", "ratio"), [(Upsampler2x, 8000, 2), (Decimator3x, 24000, 1 / 3)]
)
def test_flush_emits_tail(make: type[Upsampler2x | Decimator3x], rate: int, ratio: float) -> None:
    x = tone(1000, rate, rate // 50)  # one 20 ms frame
    conv = make()
    body = from_pcm(conv.process(to_pcm(x)))
    tail = from_pcm(conv.flush())
    delay = round(conv.delay_ms * rate * ratio / 1000)  # in output samples
    assert len(body) == len(x) * ratio
    assert len(tail) == 2 * delay  # the look-ahead plus the filter's ring-out
    # The tail is what pushing silence through would give: the last delay_ms of the tone first.
    padded = make().process(to_pcm(np.concatenate((x, np.zeros(rate // 50)))))
    assert to_pcm(tail) == padded[2 * len(body) :][: 2 * len(tail)]
    assert np.max(np.abs(tail[:delay])) > 0.4 * 32767
    # Nothing is lost: the energy of the whole frame comes out (without the tail: -0.5 dB).
    out = np.concatenate((body, tail))
    assert db(np.sum(out**2) / (ratio * np.sum(x**2))) == pytest.approx(0, abs=0.02)


def test_flush_resets() -> None:
    pcm = to_pcm(tone(1000, 24000, 960))
    for make in (Upsampler2x, Decimator3x):
        conv = make()
        first = conv.process(pcm) + conv.flush()
        assert conv.flush() == b""  # nothing fed since the last flush
        assert conv.process(pcm) + conv.flush() == first
    converters: list[tuple[type[Converter], bytes]] = [
        (UplinkConverter, pcm16_to_mulaw(pcm)),
        (DownlinkConverter, pcm),
    ]
    for conv_type, data in converters:
        converter = conv_type()
        first = converter.convert(data) + converter.flush()
        assert converter.convert(data) + converter.flush() == first


def test_reset_drops_state() -> None:
    loud = to_pcm(tone(1000, 24000, 960, level=1.0))
    silence = bytes(960)
    for make in (Upsampler2x, Decimator3x):
        conv = make()
        conv.process(loud + b"\x01")  # leaves history and a carried odd byte
        conv.reset()
        out = conv.process(silence) + conv.flush()
        assert out == bytes(len(out))
        fresh = make()
        assert len(out) == len(fresh.process(silence) + fresh.flush()) > 0
    uplink, downlink = UplinkConverter(), DownlinkConverter()
    uplink.convert(pcm16_to_mulaw(loud))
    downlink.convert(loud)
    uplink.reset()
    downlink.reset()
    assert uplink.convert(MULAW_SILENCE * 160) == bytes(640)
    assert downlink.convert(silence) == MULAW_SILENCE * 160
