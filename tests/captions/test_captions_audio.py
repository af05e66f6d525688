"""Decoded audio frames → float32 mono 16 kHz PCM."""

from __future__ import annotations

import av
import numpy as np
import pytest

from townhall.captions.audio import resample, to_pcm16k


def tone(rate: int, seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * frequency * t)


def dominant_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_an_aiortc_opus_frame_of_stereo_s16_at_48_khz_becomes_320_mono_samples_per_20_ms() -> None:
    left = (tone(48000, 0.02) * 16000).astype(np.int16)
    right = np.zeros_like(left)
    frame = av.AudioFrame.from_ndarray(
        np.stack([left, right], axis=1).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48000
    pcm = to_pcm16k(frame)
    assert pcm.dtype == np.float32 and pcm.shape == (320,)
    # the two channels are averaged: half of the left channel's 16000/32768
    assert np.abs(pcm).max() == pytest.approx(0.5 * 16000 / 32768, rel=0.02)


def test_consecutive_frames_join_without_a_seam_and_keep_the_tone() -> None:
    signal = (tone(48000, 1.0, 1000.0) * 0.5).astype(np.float32)
    pieces = []
    for i in range(0, len(signal), 960):
        frame = av.AudioFrame.from_ndarray(signal[None, i : i + 960], format="flt", layout="mono")
        frame.sample_rate = 48000
        pieces.append(to_pcm16k(frame))
    pcm = np.concatenate(pieces)
    assert len(pcm) == 16000
    assert dominant_frequency(pcm) == pytest.approx(1000.0, abs=2.0)
    whole = resample(signal.astype(np.float64), 48000)
    np.testing.assert_allclose(pcm, whole, atol=1e-6)


@pytest.mark.parametrize(
    ("rate", "layout", "fmt"),
    [(44100, "mono", "s16"), (8000, "stereo", "fltp"), (16000, "mono", "s32"),
     (32000, "stereo", "s16p")],
)
def test_other_rates_layouts_and_sample_formats_are_converted(
    rate: int, layout: str, fmt: str
) -> None:
    seconds = 0.5
    wave_ = tone(rate, seconds, 300.0) * 0.4
    channels = 2 if layout == "stereo" else 1
    planar = fmt.endswith("p")
    if fmt.startswith("s16"):
        data = (wave_ * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        data = (wave_ * 2147483647).astype(np.int32)
    else:
        data = wave_.astype(np.float32)
    stacked = np.stack([data] * channels)
    array = stacked if planar else stacked.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(array, format=fmt, layout=layout)
    frame.sample_rate = rate
    pcm = to_pcm16k(frame)
    assert len(pcm) == pytest.approx(16000 * seconds, abs=1)
    assert np.abs(pcm).max() == pytest.approx(0.4, rel=0.05)
    assert dominant_frequency(pcm) == pytest.approx(300.0, abs=3.0)
