"""Dominant speaker and loudest-N audio from sequences of audio level scores, on a test clock."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest

from support import Clock
from townhall.sfu import rtp
from townhall.sfu.audio_selection import AudioSelection
from townhall.sfu.speaker import TICK, DominantSpeaker, Voices

LOUD = 25.0  # a speaking voice's score (about -25 dBov)
QUIET = 12.0  # someone speaking softly


class Meeting:
    """Feeds per-tick scores to a detector and records the dominant speaker after each tick."""

    def __init__(self, **options: float) -> None:
        self.clock = Clock(1000.0)
        self.detector = DominantSpeaker(self.clock, **options)
        self.history: list[str | None] = []

    def run(self, seconds: float, **scores: float) -> str | None:
        for _ in range(round(seconds / TICK)):
            self.clock.now += TICK
            self.history.append(self.detector.update(scores))
        return self.detector.dominant

    def changes(self) -> int:
        return sum(1 for a, b in zip(self.history, self.history[1:], strict=False) if a != b)


def test_nobody_is_dominant_in_silence() -> None:
    meeting = Meeting()
    assert meeting.run(3, a=0, b=0) is None


def test_the_first_speaker_becomes_dominant_within_the_onset() -> None:
    meeting = Meeting()
    meeting.run(1, a=0, b=0)
    meeting.run(0.2, a=LOUD, b=0)
    assert meeting.detector.dominant is None, "a 0.2 s sound is not yet speech"
    assert meeting.run(0.3, a=LOUD, b=0) == "a"


def test_a_new_speaker_takes_over_within_a_second_once_the_current_one_is_quiet() -> None:
    meeting = Meeting()
    meeting.run(3, a=LOUD, b=0)
    meeting.run(2, a=0, b=0)
    assert meeting.detector.dominant == "a", "the last speaker stays dominant in silence"
    start = len(meeting.history)
    meeting.run(2, a=0, b=LOUD)
    took = meeting.history.index("b", start) - start + 1
    assert took * TICK <= 0.5
    assert meeting.detector.dominant == "b"


def test_a_reply_waits_until_the_dominant_speaker_has_paused() -> None:
    meeting = Meeting()
    meeting.run(3, a=LOUD, b=0)
    meeting.run(0.3, a=0, b=LOUD)
    assert meeting.detector.dominant == "a", "0.3 s after a stops, b has not taken over"
    meeting.run(0.5, a=0, b=LOUD)
    assert meeting.detector.dominant == "b"


def test_talking_over_someone_quietly_does_not_take_the_place() -> None:
    meeting = Meeting()
    meeting.run(2, a=LOUD, b=0)
    assert meeting.run(5, a=LOUD, b=QUIET + 5) == "a"
    assert meeting.changes() == 1


def test_someone_clearly_louder_for_long_enough_takes_over_while_both_speak() -> None:
    meeting = Meeting()
    meeting.run(2, a=QUIET, b=0)
    assert meeting.run(0.8, a=QUIET, b=LOUD + 10) == "a", "not clearly louder for long enough"
    assert meeting.run(2, a=QUIET, b=LOUD + 10) == "b"


def test_alternating_short_words_do_not_flicker() -> None:
    meeting = Meeting()
    meeting.run(2, a=LOUD, b=0)
    for _ in range(10):  # "yes", "no", half a second each, over and over
        meeting.run(0.5, a=0, b=LOUD)
        meeting.run(0.5, a=LOUD, b=0)
    assert meeting.changes() <= 3, meeting.history


def test_word_gaps_inside_a_sentence_keep_a_run_of_speech() -> None:
    voices = Voices()
    now = 0.0
    pattern = [LOUD, LOUD, 0, LOUD, LOUD, LOUD, 0, 0, LOUD, LOUD]  # 0.1 s ticks
    for score in pattern:
        now += TICK
        voices.update({"a": score}, now)
    voice = voices.get("a")
    assert voice is not None and voice.speaking_for(now) == pytest.approx(0.9)


def test_a_dominant_speaker_who_leaves_is_replaced_or_cleared() -> None:
    meeting = Meeting()
    meeting.run(2, a=LOUD, b=0)
    assert meeting.run(0.2, b=0) is None, "a's microphone is gone and nobody speaks"
    assert meeting.run(1, b=LOUD) == "b"


# -- loudest-N audio ------------------------------------------------------------------------------


class Room:
    """Several producers' scores fed tick by tick to Voices and an AudioSelection of 3."""

    def __init__(self, size: int = 3) -> None:
        self.clock = Clock(1000.0)
        self.voices = Voices()
        self.selection = AudioSelection(size, self.clock)

    def run(self, seconds: float, scores: dict[str, float]) -> frozenset[str]:
        selected = self.selection.selected
        for _ in range(round(seconds / TICK)):
            self.clock.now += TICK
            self.voices.update(scores, self.clock.now)
            selected = self.selection.update(scores.keys(), self.voices)
        return selected


def _silent(names: Iterable[str]) -> dict[str, float]:
    return dict.fromkeys(names, 0.0)


def test_with_few_unmuted_every_producer_is_forwarded_even_in_silence() -> None:
    room = Room()
    assert room.run(2, _silent("abc")) == {"a", "b", "c"}


def test_with_many_unmuted_silent_producers_are_not_forwarded() -> None:
    room = Room()
    assert room.run(2, _silent("abcdefgh")) == set()


def test_a_producer_that_starts_speaking_is_forwarded_at_the_next_tick() -> None:
    room = Room()
    room.run(2, _silent("abcdefgh"))
    assert room.run(TICK, {**_silent("abcdefgh"), "e": LOUD}) == {"e"}


def test_a_pause_between_words_keeps_the_place_and_silence_gives_it_up() -> None:
    room = Room()
    room.run(1, {**_silent("abcdefgh"), "e": LOUD})
    assert room.run(0.6, _silent("abcdefgh")) == {"e"}
    assert room.run(1.0, _silent("abcdefgh")) == set()


def test_a_fourth_speaker_gets_in_only_by_being_clearly_louder_than_the_weakest() -> None:
    room = Room()
    three = {**_silent("abcdefgh"), "a": LOUD, "b": LOUD, "c": QUIET}
    assert room.run(2, three) == {"a", "b", "c"}
    assert room.run(2, {**three, "d": QUIET + 3}) == {"a", "b", "c"}, "not clearly louder"
    assert room.run(0.3, {**three, "d": LOUD}) == {"a", "b", "d"}, "replaces the quietest"


def test_a_selection_must_forward_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AudioSelection(0, Clock(1000.0))


# -- the audio level on the packet path --------------------------------------------------------


def _packet(block: bytes, profile: int = 0xBEDE) -> tuple[bytes, rtp.RtpHeader]:
    padded = block + b"\x00" * (-len(block) % 4)
    data = struct.pack("!BBHII", 0x90, 111, 1, 960, 5) + \
        struct.pack("!HH", profile, len(padded) // 4) + padded + b"opus"
    return data, rtp.parse_header(data)


@pytest.mark.parametrize(("block", "profile", "level"), [
    (bytes([0x10, 0x80 | 30]), 0xBEDE, 30),  # one-byte form, id 1, voice flag set
    (bytes([0x30, 0, 0, 0, 0x10, 42]), 0xBEDE, 42),  # after a 4-byte element of id 3
    (bytes([0, 0, 0x10, 7]), 0xBEDE, 7),  # after padding
    (bytes([0x30, 0, 0, 0]), 0xBEDE, -1),  # not there
    (bytes([0xF0, 0x10, 9]), 0xBEDE, -1),  # id 15 ends the block
    (bytes([0x1F]), 0xBEDE, -1),  # a truncated element
    (bytes([3, 2, 0, 0, 1, 1, 0x80 | 99]), 0x1000, 99),  # two-byte form
    (bytes([1, 0]), 0x1000, -1),  # two-byte form, empty value
    (bytes([0x10, 5]), 0x1234, -1),  # an unknown profile
])
def test_the_audio_level_is_read_in_place_from_either_extension_form(
    block: bytes, profile: int, level: int,
) -> None:
    data, header = _packet(block, profile)
    assert rtp.audio_level_at(data, header, 1) == level
