"""Partial/final bookkeeping of SpeakerPipeline, around a fake recognizer and a loudness VAD.

The fake recognizer reads "words" out of the audio: every run of a constant sample value v > 0.05
lasting at least 0.1 s is the word ``w<k>`` with v = 0.1 + 0.01 k (negative values: the same words
in Russian). This checks the code around recognition; tests/captions/test_captions_recognition.py
runs the real model.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from captions_support import RATE, FakeClock, LoudnessVad, silence

from townhall.captions.busy import BusyMeter
from townhall.captions.pipeline import Caption, Engine, EngineOptions, SpeakerPipeline
from townhall.captions.recognizer import Decoded, DecodeOptions, Encoded
from townhall.captions.translate import Translations

START = 1_700_000_000.0


def said(words: list[int], language: str = "en", word: float = 0.5) -> npt.NDArray[np.float32]:
    sign = -1.0 if language == "ru" else 1.0
    return np.concatenate(
        [np.full(int(word * RATE), sign * (0.1 + 0.01 * k), dtype=np.float32) for k in words]
    )


class FakeRecognizer:
    multilingual = True

    def __init__(self) -> None:
        self.encoded: list[float] = []
        self.detections = 0
        self.no_speech_in_finals = False
        self.unsure_below = 0.0  # seconds of audio under which detection hesitates
        self.wrong_below = 0.0  # seconds of audio under which detection is sure of Polish

    def encode(self, audio: npt.NDArray[np.float32]) -> Encoded:
        self.encoded.append(len(audio) / RATE)
        return Encoded(audio.copy(), len(audio) / RATE)

    def detect_language(
        self, encoded: Encoded, allowed: frozenset[str] | None = None
    ) -> list[tuple[str, float]]:
        self.detections += 1
        if encoded.seconds < self.unsure_below:
            return [("el", 0.3), ("ru", 0.25), ("en", 0.2), ("ar", 0.1)]
        if encoded.seconds < self.wrong_below:
            return [("pl", 0.5), ("ru", 0.3), ("en", 0.1)]
        russian = bool((encoded.output < -0.05).sum() > (encoded.output > 0.05).sum())
        return [("ru", 0.9), ("en", 0.1)] if russian else [("en", 0.9), ("ru", 0.1)]

    def decode(
        self,
        encoded: Encoded,
        language: str,
        options: DecodeOptions,
        task: str = "transcribe",
        prompt: str = "",
    ) -> Decoded:
        values = np.round(np.abs(encoded.output), 4)
        words: list[str] = []
        run_start = 0
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i] != values[run_start]:
                if values[run_start] > 0.05 and i - run_start >= 0.1 * RATE:
                    k = round((values[run_start] - 0.1) / 0.01)
                    words.append(("W" if task == "translate" else "w") + str(k))
                run_start = i
        text = " ".join(words)
        speech = bool(text) and not (self.no_speech_in_finals and options.beam_size > 1)
        return Decoded(text, 0.0, -0.1, speech)


class Ukrainian:
    """A text engine for ru → uk that marks its output; fails on demand."""

    name = "fake"

    def __init__(self) -> None:
        self.fail = False

    def pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset({("ru", "uk")})

    def translate(self, text: str, source: str, target: str) -> str:
        if self.fail:
            raise RuntimeError("engine down")
        return text.replace("w", "у")

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, **options: object) -> None:
        self.recognizer = FakeRecognizer()
        self.ukrainian = Ukrainian()
        translations = Translations([self.ukrainian], speech_to_english=True)
        engine_options = replace(EngineOptions(), **options)  # type: ignore[arg-type]
        self.engine = Engine(self.recognizer, None, translations, engine_options)  # type: ignore[arg-type]
        self.clock = FakeClock(START)
        self.pipeline = SpeakerPipeline(self.engine, self.clock, vad=LoudnessVad())
        self.fed = 0
        self.captions: list[tuple[float, Caption]] = []  # (audio seconds when emitted, caption)

    def play(
        self,
        audio: npt.NDArray[np.float32],
        languages: frozenset[str] = frozenset(),
        poll_every: float = 0.1,
        poll: bool = True,
    ) -> None:
        chunk = RATE // 50
        every = max(1, round(poll_every * 50))
        for n, i in enumerate(range(0, len(audio), chunk)):
            piece = audio[i : i + chunk]
            self.pipeline.feed(piece, START + self.fed / RATE)
            self.fed += len(piece)
            self.clock.now = START + self.fed / RATE
            if poll and (n + 1) % every == 0:
                self.poll(languages)

    def poll(self, languages: frozenset[str] = frozenset()) -> list[Caption]:
        out = self.pipeline.poll(languages)
        self.captions.extend((self.fed / RATE, c) for c in out)
        return out

    def finals(self) -> list[Caption]:
        return [c for _, c in self.captions if c.final]


def test_partials_start_after_first_partial_then_follow_every_second_and_one_final_closes() -> None:
    h = Harness()
    h.play(np.concatenate([silence(1.0), said(list(range(8))), silence(1.0)]))
    ids = {c.utterance for _, c in h.captions}
    assert len(ids) == 1
    partials = [(t, c) for t, c in h.captions if not c.final]
    assert [c.final for _, c in h.captions].count(True) == 1 and h.captions[-1][1].final
    assert 1.0 + 0.5 <= partials[0][0] <= 1.0 + 0.7
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(partials)]
    assert gaps and all(0.95 <= g <= 1.15 for g in gaps)
    final = h.captions[-1][1]
    assert final.text == " ".join(f"w{k}" for k in range(8))
    for _, c in partials:
        assert final.text.startswith(c.text.rsplit(" ", 1)[0])
    assert final.start == pytest.approx(START + 1.0, abs=0.04)
    assert final.end == pytest.approx(START + 5.0, abs=0.04)
    assert final.language == "en" and final.translations == {}


def test_each_utterance_has_its_own_id_and_times_follow_the_feed_timestamps() -> None:
    h = Harness()
    h.play(np.concatenate([silence(0.5), said([1, 2]), silence(1.0)]))
    h.fed += 10 * RATE  # ten seconds without audio (muted), then the next utterance
    h.play(np.concatenate([said([3, 4]), silence(1.0)]))
    first, second = h.finals()
    assert first.utterance != second.utterance
    assert (first.text, second.text) == ("w1 w2", "w3 w4")
    assert first.start == pytest.approx(START + 0.5, abs=0.04)
    assert second.start == pytest.approx(START + 0.5 + 1.0 + 1.0 + 10.0, abs=0.04)


def test_a_poll_that_falls_behind_makes_one_partial_for_the_latest_audio() -> None:
    h = Harness()
    h.play(said(list(range(6))), poll=False)
    out = h.poll()
    assert [c.final for c in out] == [False]
    assert out[0].text == " ".join(f"w{k}" for k in range(6))
    assert h.poll() == []  # nothing new: nothing due


def test_a_long_utterance_commits_text_at_pauses_so_partials_retranscribe_only_the_rest() -> None:
    h = Harness()
    phrases = [said([3 * p, 3 * p + 1, 3 * p + 2]) for p in range(8)]  # 8 × 1.5 s
    speech = np.concatenate([np.concatenate([p, silence(0.3)]) for p in phrases])
    h.play(np.concatenate([speech, silence(1.0)]))
    (final,) = h.finals()
    assert final.text == " ".join(f"w{k}" for k in range(24))
    # 14 s of speech, but no transcription ever saw more than the unfinished part
    assert max(h.recognizer.encoded) <= 4.0 + 1.0 + 1.8 + 0.2
    partial_texts = [c.text for _, c in h.captions if not c.final]
    assert len(partial_texts) >= 12
    for text in partial_texts:
        words = text.split()
        assert words == [f"w{k}" for k in range(len(words))]


def test_the_language_is_detected_for_each_utterance() -> None:
    h = Harness()
    languages = frozenset({"en", "uk"})
    h.play(np.concatenate([said([1, 2, 3]), silence(1.0)]), languages)
    h.play(np.concatenate([said([4, 5, 6], "ru"), silence(1.0)]), languages)
    english, russian = h.finals()
    assert (english.language, english.translations) == ("en", {})  # no en → uk route here
    assert russian.language == "ru"
    assert russian.translations == {"en": "W4 W5 W6", "uk": "у4 у5 у6"}


def test_the_language_is_kept_within_an_utterance_once_two_seconds_were_heard() -> None:
    h = Harness()
    h.play(np.concatenate([said([1, 2, 3, 4, 5]), said([6, 7], "ru"), silence(1.0)]))
    assert {c.language for _, c in h.captions} == {"en"}
    detections = h.recognizer.detections
    h.play(np.concatenate([said([1, 2, 3, 4, 5, 6, 7]), silence(1.0)]))
    # partials at 0.5, 1.5 and 2.5 s detect; the later partial, the commit and the final do not
    assert h.recognizer.detections - detections == 3


def test_finish_closes_the_utterance_of_a_speaker_who_leaves_mid_word() -> None:
    h = Harness()
    h.play(np.concatenate([silence(0.3), said([1, 2]), said([3], word=0.2)]))
    out = h.pipeline.finish(frozenset({"uk"}))
    assert [c.final for c in out] == [True]
    assert out[0].text == "w1 w2 w3"
    assert h.pipeline.finish(frozenset()) == []


def test_an_utterance_whose_audio_stops_is_closed_when_the_clock_says_so() -> None:
    h = Harness()
    h.play(said([1, 2, 3]))
    assert h.finals() == []
    h.clock.now += 0.9
    assert all(not c.final for c in h.poll())
    h.clock.now += 0.2
    (final,) = h.poll()
    assert final.final and final.text == "w1 w2 w3"


def test_partials_that_turn_out_to_be_no_speech_are_closed_by_an_empty_final() -> None:
    h = Harness()
    h.recognizer.no_speech_in_finals = True
    h.play(np.concatenate([said([1, 2, 3]), silence(1.0)]))
    assert any(not c.final for _, c in h.captions)
    (final,) = h.finals()
    assert final.text == "" and final.utterance == h.captions[0][1].utterance


def test_a_click_shorter_than_the_minimum_speech_makes_no_caption() -> None:
    h = Harness()
    h.play(np.concatenate([silence(0.5), said([1], word=0.1), silence(2.0)]))
    assert h.captions == []


def test_languages_without_a_route_are_left_out_and_a_failing_engine_drops_only_its_own() -> None:
    h = Harness()
    h.ukrainian.fail = True
    h.play(np.concatenate([said([1, 2], "ru"), silence(1.0)]), frozenset({"en", "uk", "xx", "ru"}))
    (final,) = h.finals()
    assert final.language == "ru"
    assert final.translations == {"en": "W1 W2"}


def test_when_recognition_keeps_the_machine_busy_partials_are_spaced_out_but_not_finals() -> None:
    h = Harness()
    busy_clock = FakeClock(0.0)
    h.engine.busy = BusyMeter(clock=busy_clock)
    busy_clock.now = 100.0
    h.engine.busy.add(91.0, 100.0)  # 90 % of the last 10 s: partials every 4 s
    h.play(np.concatenate([said(list(range(14)), "ru"), silence(1.0)]), frozenset({"en", "uk"}))
    partials = [(t, c) for t, c in h.captions if not c.final]
    assert len(partials) == 2  # at 0.6 s, then 4 s later (7 s of speech)
    assert partials[1][0] - partials[0][0] == pytest.approx(4.0, abs=0.25)
    assert all("en" not in c.translations and "uk" in c.translations for _, c in partials)
    (final,) = h.finals()
    assert set(final.translations) == {"en", "uk"}


def test_the_busy_meter_counts_the_share_of_the_last_window_spent_working() -> None:
    clock = FakeClock(0.0)
    meter = BusyMeter(window=10.0, clock=clock)
    assert meter.fraction() == 0.0 and meter.partial_stretch() == 1.0
    clock.now = 20.0
    meter.add(8.0, 12.0)  # only 2 s of it in the window [10, 20]
    meter.add(14.0, 18.0)
    assert meter.fraction() == pytest.approx(0.6)
    assert meter.partial_stretch() == 1.0
    meter.add(18.0, 20.0)
    assert meter.fraction() == pytest.approx(0.8)
    assert meter.partial_stretch() == pytest.approx(3.0)
    meter.add(20.0, 40.0)  # several threads at once can pass 100 %
    clock.now = 40.0
    assert meter.fraction() == pytest.approx(1.0)
    assert meter.partial_stretch() == 5.0
    clock.now = 60.0
    assert meter.fraction() == 0.0


def test_a_partial_waits_while_the_language_is_unclear_unless_the_speaker_spoke_it_before() -> None:
    h = Harness()
    h.recognizer.unsure_below = 1.2  # pre-roll included: about 1 s of speech
    h.play(np.concatenate([silence(1.0), said([1, 2, 3, 4, 5], "ru"), silence(1.0)]))
    partials = [(t, c) for t, c in h.captions if not c.final]
    assert partials and partials[0][0] >= 1.0 + 0.95  # not at 0.5 s: Greek was a guess
    assert {c.language for _, c in h.captions} == {"ru"}
    h.captions.clear()
    # the same hesitation, but Russian is the speaker's language: the partial comes at 0.5 s
    h.play(np.concatenate([said([6, 7, 8, 9], "ru"), silence(1.0)]))
    start = h.fed / RATE - 3.0
    partials = [(t, c) for t, c in h.captions if not c.final]
    assert partials[0][0] - start <= 0.7
    assert {c.language for _, c in h.captions} == {"ru"}


def test_an_unsure_language_is_not_kept_and_the_final_is_in_the_language_heard_later() -> None:
    # Under load the first partial can come after ``language_after`` seconds of speech; a guess
    # made then on too little audio must not decide the language of the whole utterance.
    h = Harness(first_partial=2.5)
    h.recognizer.unsure_below = 3.0
    h.play(np.concatenate([silence(1.0), said(list(range(8)), "ru"), silence(1.0)]))
    partials = [c for _, c in h.captions if not c.final]
    assert partials and partials[0].language == "el"  # sent: 2.5 s is past SURE_AFTER
    assert [c.language for c in h.finals()] == ["ru"]
    assert h.finals()[0].text.startswith("w0 w1")


def test_the_final_detects_the_language_again_on_the_whole_utterance() -> None:
    # Whisper can be sure of the wrong language on the first two seconds of speech.
    h = Harness()
    h.recognizer.wrong_below = 3.2  # the partial after 2 s of speech is sure of Polish
    h.play(np.concatenate([silence(1.0), said(list(range(6)), "ru"), silence(1.0)]))
    assert "pl" in {c.language for _, c in h.captions if not c.final}
    assert [c.language for c in h.finals()] == ["ru"]


def test_audio_lost_on_the_way_is_put_back_as_silence_so_the_words_keep_their_timing() -> None:
    h = Harness()
    audio = np.concatenate([silence(0.5), said([1, 2, 3, 4]), silence(1.0)])
    chunk = RATE // 50
    lost = {40, 41, 42, 43, 44}  # 0.8-0.9 s: 100 ms in the middle of the first word
    for n, i in enumerate(range(0, len(audio), chunk)):
        h.clock.now = START + (i + chunk) / RATE
        if n not in lost:
            h.pipeline.feed(audio[i : i + chunk], START + i / RATE)
        if n % 5 == 4:
            h.poll()
    final = h.finals()[0]
    # the hole stays a hole (the fake recognizer hears w1 twice); joined up, it heard it once
    assert final.text == "w1 w1 w2 w3 w4"
    assert final.end - final.start == pytest.approx(2.0, abs=0.05)
