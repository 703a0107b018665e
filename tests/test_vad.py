from __future__ import annotations

import math

import numpy as np
import pytest

from phone_agent.emulator import audio
from phone_agent.vad import EnergyVad, SpeechEnded, SpeechStarted, VadEvent, rms_dbfs

RATE = 16_000


def speech(ms: int, dbfs: float = -12.0, rate: int = RATE) -> bytes:
    return audio.tone(300.0, ms, 10 ** (dbfs / 20), rate)


def feed_in_chunks(
    vad: EnergyVad, pcm: bytes, chunk_bytes: int, rate: int = RATE
) -> list[VadEvent]:
    events: list[VadEvent] = []
    for i in range(0, len(pcm), chunk_bytes):
        events += vad.feed(pcm[i : i + chunk_bytes], RATE)
    return events


def test_silence_never_starts_speech() -> None:
    assert EnergyVad().feed(audio.silence(2000, RATE), RATE) == []


def test_speech_starts_after_60_ms_and_ends_after_the_silence_duration() -> None:
    vad = EnergyVad()
    events = vad.feed(speech(1000) + audio.silence(700, RATE), RATE)
    assert events == [SpeechStarted(60.0), SpeechEnded(1500.0)]
    assert not vad.speaking


def test_silence_duration_is_configurable() -> None:
    events = EnergyVad(silence_ms=300).feed(speech(400) + audio.silence(400, RATE), RATE)
    assert events == [SpeechStarted(60.0), SpeechEnded(700.0)]


def test_blips_shorter_than_60_ms_are_not_speech() -> None:
    blip = speech(40) + audio.silence(100, RATE)
    assert EnergyVad().feed(blip * 10, RATE) == []


def test_a_short_pause_does_not_end_speech() -> None:
    pcm = speech(300) + audio.silence(200, RATE) + speech(300) + audio.silence(600, RATE)
    assert EnergyVad().feed(pcm, RATE) == [SpeechStarted(60.0), SpeechEnded(1300.0)]


def test_events_do_not_depend_on_chunking() -> None:
    pcm = speech(500) + audio.silence(600, RATE) + speech(200) + audio.silence(600, RATE)
    whole = EnergyVad().feed(pcm, RATE)
    for chunk_bytes in (2, 7 * 2 + 1, 640, 999, 3200):
        assert feed_in_chunks(EnergyVad(), pcm, chunk_bytes) == whole
    assert len(whole) == 4


def test_threshold_is_configurable() -> None:
    quiet = speech(500, dbfs=-45.0) + audio.silence(600, RATE)
    assert EnergyVad().feed(quiet, RATE) == []
    assert EnergyVad(threshold_dbfs=-55.0).feed(quiet, RATE) == [
        SpeechStarted(60.0),
        SpeechEnded(1000.0),
    ]


@pytest.mark.parametrize("rate", [8_000, 24_000, 44_100])
def test_other_sample_rates_measure_audio_time(rate: int) -> None:
    events = EnergyVad().feed(speech(1000, rate=rate) + audio.silence(700, rate), rate)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == pytest.approx(60.0, abs=1)
    assert events[1].at_ms == pytest.approx(1500.0, abs=12)


def test_flush_ends_speech_in_progress() -> None:
    vad = EnergyVad()
    assert vad.feed(speech(300), RATE) == [SpeechStarted(60.0)]
    assert vad.flush() == [SpeechEnded(300.0)]
    assert vad.flush() == []


def test_audio_ms_counts_complete_windows() -> None:
    vad = EnergyVad()
    vad.feed(audio.silence(50, RATE), RATE)
    assert vad.audio_ms == 40.0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        EnergyVad(silence_ms=0)
    with pytest.raises(ValueError):
        EnergyVad().feed(b"\0\0", 0)


def test_rms_dbfs() -> None:
    full_square = np.full(160, 32767, dtype=np.int16)
    assert rms_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    sine = np.frombuffer(audio.tone(300.0, 1000, 10 ** (-12 / 20), RATE), dtype="<i2")
    assert rms_dbfs(sine) == pytest.approx(-15.0, abs=0.1)  # a sine's RMS is 3 dB below its peak
    assert rms_dbfs(np.zeros(10, dtype=np.int16)) == -math.inf
