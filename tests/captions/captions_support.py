"""Helpers for the captions tests: the Whisper model, the speech fixtures, word error rate.

Also usable by other tests (``from captions_support import ...`` with tests/captions on the path).
"""

from __future__ import annotations

import json
import os
import re
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from townhall.captions.pipeline import Caption, SpeakerPipeline

REPO = Path(__file__).resolve().parents[2]
SPEECH = REPO / "tests" / "fixtures" / "speech"
RATE = 16000


def asr_model() -> str:
    """The Whisper model for tests: $TOWNHALL_ASR_MODEL, else <repo>/../shared/models/whisper-base.

    Skips the test with the reason when the model is missing, except under CI, where it fails.
    """
    path = Path(os.environ.get("TOWNHALL_ASR_MODEL") or REPO.parent / "shared/models/whisper-base")
    if not (path / "model.bin").is_file():
        reason = f"no Whisper model at {path} (set TOWNHALL_ASR_MODEL)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(path)


def texts() -> dict[str, dict[str, str]]:
    """File name → {"language", "text"} of every speech fixture."""
    data: dict[str, dict[str, str]] = json.loads(
        (SPEECH / "texts.json").read_text(encoding="utf-8")
    )
    return data


def speech(name: str) -> npt.NDArray[np.float32]:
    """A speech fixture as float32 mono 16 kHz PCM."""
    with wave.open(str(SPEECH / name), "rb") as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (RATE, 1, 2), name
        raw = f.readframes(f.getnframes())
    return (np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768).astype(np.float32)


def silence(seconds: float) -> npt.NDArray[np.float32]:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


_NUMBERS = {"10": "ten", "5": "five"}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, ё as е, a few digits spelt out."""
    plain = re.sub(r"[^\w\s]", " ", text.lower().replace("ё", "е"))
    return [_NUMBERS.get(w, w) for w in plain.split()]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, number of reference words)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            diagonal, row[j] = row[j], min(
                row[j] + 1, row[j - 1] + 1, diagonal + (ref[i - 1] != hyp[j - 1])
            )
    return row[-1], len(ref)


def word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs."""
    errors = total = 0
    for reference, hypothesis in pairs:
        e, n = word_errors(reference, hypothesis)
        errors += e
        total += n
    return errors / max(total, 1)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LoudnessVad:
    """Speech probability 1.0 for windows louder than 0.05 RMS, else 0.0."""

    def probabilities(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
        return (rms > 0.05).astype(np.float32)


def synthetic_music(duration: float) -> npt.NDArray[np.float32]:
    """A melody of harmonic notes with vibrato and a chord under it."""
    t = np.arange(int(duration * RATE)) / RATE
    notes = np.array([262, 294, 330, 349, 392, 440, 494, 523])
    melody = notes[(t * 3).astype(int) % len(notes)] * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(melody) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    chord = sum(0.3 * np.sin(2 * np.pi * f * t) for f in (131, 165, 196))
    return (0.15 * (voice + chord)).astype(np.float32)


def play(
    pipeline: SpeakerPipeline,
    clock: FakeClock,
    audio: npt.NDArray[np.float32],
    languages: frozenset[str],
) -> list[Caption]:
    """Feed audio in 20 ms frames as if in real time (the fake clock follows), polling every
    200 ms; return the captions."""
    out: list[Caption] = []
    start = clock.now
    chunk = RATE // 50
    for n, i in enumerate(range(0, len(audio), chunk)):
        pipeline.feed(audio[i : i + chunk], start + i / RATE)
        clock.now = start + (i + chunk) / RATE
        if n % 10 == 9:
            out.extend(pipeline.poll(languages))
    return out
