"""Decoded audio frames → the engine's PCM: float32, mono, 16 kHz, in [-1, 1].

aiortc's Opus decoder hands out 20 ms frames of packed signed 16-bit stereo at 48 kHz; PyAV frames
of other formats, layouts and rates (planar, float, 8/32/44.1 kHz) are converted too.

The conversion is stateless, so one function serves every participant: 48 kHz (and 32 kHz) audio
is decimated by averaging each group of 3 (or 2) samples — a boxcar low-pass with its first zero at
16 kHz, exact at every frame boundary because 20 ms frames hold a whole number of groups. Whisper's
features stop at 8 kHz, so this is all the filtering recognition needs. Rates that are not a
multiple of 16 kHz are interpolated linearly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

RATE = 16000

_SCALE = {
    np.dtype(np.int16): 1 / 32768,
    np.dtype(np.int32): 1 / 2147483648,
    np.dtype(np.uint8): 1 / 128,
}


def to_pcm16k(frame: Any) -> npt.NDArray[np.float32]:
    """Turn one decoded ``av.AudioFrame`` into float32 mono 16 kHz samples."""
    planes = frame.to_ndarray()
    channels = len(frame.layout.channels)
    # planar: (channels, n); packed: interleaved (1, n * channels) → (channels, n)
    samples = planes if frame.format.is_planar else planes.reshape(-1, channels).T
    mono = _to_float(samples).mean(axis=0, dtype=np.float64)
    return resample(mono, int(frame.sample_rate))


def resample(samples: npt.NDArray[Any], rate: int) -> npt.NDArray[np.float32]:
    """Resample mono samples at ``rate`` Hz to 16 kHz (see the module docstring for how)."""
    if rate <= 0:
        raise ValueError(f"invalid sample rate {rate}")
    if rate == RATE:
        return samples.astype(np.float32, copy=False)
    if rate % RATE == 0:
        factor = rate // RATE
        whole = len(samples) - len(samples) % factor
        grouped: npt.NDArray[np.float32] = (
            samples[:whole].reshape(-1, factor).mean(axis=1).astype(np.float32)
        )
        return grouped
    count = round(len(samples) * RATE / rate)
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    positions = np.arange(count, dtype=np.float64) * (rate / RATE)
    out: npt.NDArray[np.float32] = np.interp(
        positions, np.arange(len(samples)), samples
    ).astype(np.float32)
    return out


def _to_float(samples: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    if samples.dtype.kind == "f":
        return samples.astype(np.float64, copy=False)
    scale = _SCALE.get(samples.dtype)
    if scale is None:
        raise ValueError(f"unsupported sample type {samples.dtype}")
    if samples.dtype == np.uint8:
        return (samples.astype(np.float64) - 128) * scale
    return samples.astype(np.float64) * scale
