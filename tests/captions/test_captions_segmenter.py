"""Utterance segmentation: a scripted VAD for the rules, the real Silero VAD on real audio."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from captions_support import RATE, LoudnessVad, silence, speech, synthetic_music

from townhall.captions.segmenter import (
    WINDOW,
    Segmenter,
    SegmenterConfig,
    SileroModel,
    Utterance,
)


def loud(seconds: float) -> npt.NDArray[np.float32]:
    return np.full(int(seconds * RATE), 0.3, dtype=np.float32)


def run(segmenter: Segmenter, audio: npt.NDArray[np.float32], chunk: int = 320) -> list[Utterance]:
    closed: list[Utterance] = []
    for i in range(0, len(audio), chunk):
        closed.extend(segmenter.push(audio[i : i + chunk]))
    return closed


def seconds(position: int) -> float:
    return position / RATE


def test_an_utterance_starts_at_speech_and_ends_after_the_end_silence() -> None:
    segmenter = Segmenter(LoudnessVad())
    closed = run(segmenter, np.concatenate([silence(1.0), loud(2.0), silence(1.0)]))
    assert len(closed) == 1
    u = closed[0]
    assert seconds(u.speech_start) == pytest.approx(1.0, abs=WINDOW / RATE)
    assert seconds(u.speech_end) == pytest.approx(3.0, abs=WINDOW / RATE)
    assert seconds(u.start) == pytest.approx(1.0 - 0.2, abs=WINDOW / RATE)  # pre-roll
    assert seconds(u.end) == pytest.approx(3.0 + 0.15, abs=WINDOW / RATE)  # post-roll
    assert len(u.samples()) == u.end - u.start
    assert segmenter.current is None


def test_a_pause_shorter_than_the_end_silence_keeps_the_utterance_open_and_is_recorded() -> None:
    segmenter = Segmenter(LoudnessVad())
    closed = run(segmenter, np.concatenate([loud(1.0), silence(0.3), loud(1.0)]))
    assert closed == []
    current = segmenter.current
    assert current is not None
    assert len(current.pauses) == 1
    assert 1.0 < seconds(current.pauses[0]) < 1.3


def test_the_segmentation_does_not_depend_on_how_the_audio_is_chunked() -> None:
    audio = np.concatenate([silence(0.5), loud(1.0), silence(0.8), loud(0.7), silence(1.0)])
    small = run(Segmenter(LoudnessVad()), audio, chunk=160)
    large = run(Segmenter(LoudnessVad()), audio, chunk=RATE * 3)
    assert [(u.start, u.end) for u in small] == [(u.start, u.end) for u in large]
    assert len(small) == 2


def test_a_very_long_utterance_is_cut_at_its_latest_pause_before_the_maximum() -> None:
    config = SegmenterConfig(max_utterance=5.0, cut_window=3.0)
    segmenter = Segmenter(LoudnessVad(), config)
    audio = np.concatenate([loud(3.5), silence(0.3), loud(10.0)])
    closed = run(segmenter, audio)
    assert len(closed) >= 2
    first = closed[0]
    assert seconds(first.end) == pytest.approx(3.5 + 0.1, abs=2 * WINDOW / RATE)
    for u in closed:
        assert len(u.samples()) <= config.max_utterance * RATE
    # the cut loses no audio: each piece starts where the previous one ended
    for before, after in itertools.pairwise(closed):
        assert after.start == before.end
    assert segmenter.current is not None  # speech still going on


def test_without_a_pause_a_long_utterance_is_cut_hard_at_the_maximum() -> None:
    segmenter = Segmenter(LoudnessVad(), SegmenterConfig(max_utterance=4.0))
    closed = run(segmenter, loud(9.0))
    assert [round(seconds(len(u.samples())), 1) for u in closed] == [4.0, 4.0]


def test_close_ends_the_open_utterance_mid_word() -> None:
    segmenter = Segmenter(LoudnessVad())
    run(segmenter, np.concatenate([silence(0.5), loud(0.7)]))
    u = segmenter.close()
    assert u is not None and u.closed
    assert seconds(u.speech_end - u.speech_start) == pytest.approx(0.7, abs=WINDOW / RATE)
    assert segmenter.current is None
    assert segmenter.close() is None


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def test_silero_finds_each_sentence_of_real_speech(silero: SileroModel) -> None:
    names = ["en-01.wav", "ru-02.wav", "en-03.wav"]
    parts = [np.concatenate([speech(n), silence(1.0)]) for n in names]
    audio = np.concatenate([silence(1.0), *parts])
    closed = run(Segmenter(silero.stream()), audio)
    assert len(closed) == 3
    offset = RATE
    for name, u in zip(names, closed, strict=True):
        length = len(speech(name))
        assert offset <= u.speech_start < offset + int(0.4 * RATE)
        assert offset + length - int(0.5 * RATE) < u.speech_end <= offset + length
        offset += length + RATE


def test_silero_in_one_batch_equals_silero_window_by_window(silero: SileroModel) -> None:
    audio = speech("en-05.wav")[: 40 * WINDOW].reshape(-1, WINDOW)
    together = silero.stream().probabilities(audio)
    stream = silero.stream()
    apart = np.concatenate([stream.probabilities(audio[i : i + 1]) for i in range(len(audio))])
    np.testing.assert_allclose(together, apart, atol=1e-5)
    assert together.max() > 0.5


@pytest.mark.parametrize(
    "kind",
    ["silence", "white noise", "loud noise", "hum", "music"],
)
def test_silero_finds_no_speech_in_sound_that_is_not_speech(silero: SileroModel, kind: str) -> None:
    rng = np.random.default_rng(7)
    t = np.arange(6 * RATE) / RATE
    audio = {
        "silence": silence(6.0),
        "white noise": (0.05 * rng.standard_normal(6 * RATE)).astype(np.float32),
        "loud noise": (0.5 * rng.standard_normal(6 * RATE)).astype(np.float32),
        "hum": (0.3 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)).astype(
            np.float32
        ),
        "music": synthetic_music(6.0),
    }[kind]
    segmenter = Segmenter(silero.stream())
    closed = run(segmenter, audio)
    assert closed == [] and segmenter.current is None
