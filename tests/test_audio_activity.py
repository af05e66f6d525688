"""The router's audio work on real producers: levels summed per packet, decided per tick.

The tick's tests run on both paths: Python, and C (``_audio.c``) when the native piece is built;
a twin test runs both through the same random meetings and wants the same everything.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable, Iterable
from typing import Any, cast

import pytest

from support import Clock, skip_or_fail
from townhall.config import Config
from townhall.sfu import audio_activity, rtp, speaker
from townhall.sfu.audio_activity import Activity, AudioActivity
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.speaker import TICK, DominantSpeaker, Voices
from townhall.sfu.transport import Codec, IncomingTrack

OPUS = Codec("audio/opus", 48000, 111, 2)


def require_native_tick() -> None:
    """Skip (fail on CI) when the native piece is not built, or built without the tick."""
    if audio_activity.native_tick is None:
        skip_or_fail("the native audio tick is not built "
                     "(pip install -e ., or python -m townhall.sfu.native)")


@pytest.fixture(params=["python", "c"])
def native(request: pytest.FixtureRequest) -> bool:
    """Whether the tick runs in C."""
    if request.param == "c":
        require_native_tick()
    return bool(request.param == "c")


def _packet(sequence: int, level: int | None) -> tuple[bytes, rtp.RtpHeader]:
    extension = b"" if level is None else \
        struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x80 | level, 0, 0])
    first = 0x90 if level is not None else 0x80
    data = struct.pack("!BBHII", first, 111, sequence, sequence * 960, 7) + extension + b"op"
    return data, rtp.parse_header(data)


def _producers(transport: Any, clock: Clock, levels: list[bool]) -> list[Producer]:
    """An audio producer per entry, with the audio-level extension where it is True."""
    producers = []
    for n, with_levels in enumerate(levels):
        track = IncomingTrack(mid=str(n), kind="audio", codec=OPUS, ssrcs=(100 + n,),
                              mid_extension=None,
                              audio_level_extension=1 if with_levels else None, rtcp_ssrc=1)
        producers.append(Producer(f"person {n}", "microphone", track, transport, clock))
    return producers


async def test_only_the_speaking_producers_and_those_without_levels_are_forwarded(
        native: bool) -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [n != 5 for n in range(6)])
        activity = AudioActivity(clock, loudest=3, native=native)
        assert activity.native is native
        result = None
        for tick in range(6):
            clock.now += TICK
            for n, producer in enumerate(producers):
                for k in range(5):  # 20 ms packets
                    level = None if n == 5 else (20 if n == 2 else 127)
                    producer.forward(*_packet(tick * 5 + k, level))
            result = activity.tick(producers)
        assert result is not None
        assert result.forwarded == {producers[2].id}
        assert [p.selected for p in producers] == [False, False, True, False, False, True]
        assert result.speaking == {"person 2"}
        assert result.dominant == "person 2"
        assert producers[2].level_packets == 0, "the tick took the counters"
    finally:
        await router.close()


async def test_audio_only_listeners_get_the_loudest_of_those_forwarded_and_those_without_levels(
        native: bool) -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [n != 4 for n in range(5)])
        activity = AudioActivity(clock, loudest=3, audio_only=1, native=native)
        levels = [40, 20, 30, 127, None]  # -dBov: person 1 loudest, person 3 silent
        result = None
        for tick in range(8):
            clock.now += TICK
            for producer, level in zip(producers, levels, strict=True):
                for k in range(5):
                    producer.forward(*_packet(tick * 5 + k, level))
            result = activity.tick(producers)
        assert result is not None
        ids = [p.id for p in producers]
        assert result.forwarded == {ids[0], ids[1], ids[2]}
        # Someone receiving everyone: the loudest, and whoever cannot be judged.
        assert activity.for_audio_only(result, [ids[0], ids[1], ids[2], ids[4]]) == {
            ids[1], ids[4]}
        # The loudest speaker in audio-only mode: the next loudest (never their own voice).
        assert activity.for_audio_only(result, [ids[0], ids[2], ids[4]]) == {ids[2], ids[4]}
        # No more to hear than audio_only: all of it, speaking or not.
        assert activity.for_audio_only(result, [ids[3]]) == {ids[3]}
    finally:
        await router.close()


async def test_in_silence_an_audio_only_listener_keeps_the_last_one_heard(native: bool) -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [True] * 3)
        activity = AudioActivity(clock, loudest=3, audio_only=1, native=native)
        sequence = 0

        def tick(levels: list[int]) -> frozenset[str]:
            """What someone receiving all three in audio-only mode gets after this tick."""
            nonlocal sequence
            clock.now += TICK
            for producer, level in zip(producers, levels, strict=True):
                for _ in range(5):
                    sequence += 1
                    producer.forward(*_packet(sequence, level))
            return activity.for_audio_only(activity.tick(producers), [p.id for p in producers])

        assert tick([127, 127, 127]) == frozenset()  # nobody has spoken yet
        for _ in range(5):
            narrow = tick([127, 25, 127])
        assert narrow == {producers[1].id}
        for _ in range(30):  # three seconds of silence: all three stay forwarded (few unmuted)
            narrow = tick([127, 127, 127])
        assert narrow == {producers[1].id}
        for _ in range(5):
            narrow = tick([30, 127, 127])
        assert narrow == {producers[0].id}
    finally:
        await router.close()


def test_the_settings_come_from_the_environment_and_at_least_one_microphone_is_forwarded() -> None:
    config = Config.load(env={"TOWNHALL_LOUDEST_AUDIO": "5", "TOWNHALL_AUDIO_RED": "false",
                              "TOWNHALL_AUDIO_ONLY_LOUDEST": "2"})
    assert (config.loudest_audio, config.audio_red, config.audio_only_loudest) == (5, False, 2)
    assert Config().audio_only_loudest == 1
    with pytest.raises(ValueError, match="loudest_audio"):
        Config.load(env={"TOWNHALL_LOUDEST_AUDIO": "0"})
    with pytest.raises(ValueError, match="audio_only_loudest"):
        Config.load(env={"TOWNHALL_AUDIO_ONLY_LOUDEST": "0"})


class _Consumer:
    """Counts the restarts a producer's ``set_selected`` asks for."""

    def __init__(self) -> None:
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1


class FakeProducer:
    """What the tick reads and calls of a ``Producer``, with Producer's own methods (so the twin
    test compares the paths against the real ``take_levels``, ``speaking`` and
    ``set_selected``), noting the ``set_selected`` calls that changed nothing. Its attributes
    are in a ``__dict__``; ``SlottedProducer``'s in slots, as ``Producer``'s are."""

    take_levels = Producer.take_levels
    speaking = Producer.speaking

    def __init__(self, id: str, owner: str, clock: Callable[[], float], *, kind: str = "audio",
                 levels: bool = True) -> None:
        self.id = id
        self.owner = owner
        self._clock = clock
        self.kind = kind
        self.level_extension = 1 if levels else None
        self.level_packets = 0
        self.loudness = 0
        self.loud_until = 0.0
        self.paused = False
        self.selected = True
        self.consumers = [_Consumer()]
        self.idle_calls = 0

    def set_selected(self, selected: bool) -> None:
        if selected == self.selected:
            self.idle_calls += 1
        Producer.set_selected(self, selected)  # type: ignore[arg-type]

    def state(self) -> tuple[Any, ...]:
        return (self.selected, self.loud_until, self.level_packets, self.loudness,
                self.consumers[0].restarts)


class SlottedProducer(FakeProducer):
    __slots__ = ("_clock", "consumers", "id", "idle_calls", "kind", "level_extension",
                 "level_packets", "loud_until", "loudness", "owner", "paused", "selected")


class _Voice:
    """Level counters for one or more producers (several: their scores tie exactly)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.talking = False
        self.level = rng.randint(15, 48)  # -dBov while talking: louder or quieter voices

    def counters(self) -> tuple[int, int]:
        """(level_packets, loudness) for one tick."""
        rng = self.rng
        if rng.random() < (0.1 if self.talking else 0.06):
            self.talking = not self.talking
        if not self.talking:
            if rng.random() < 0.5:  # Opus DTX: a packet now and then, or none
                return rng.choice([0, 0, 1]), 0
            return 5, 0
        packets = rng.choice([4, 5, 5, 6])
        levels = [self.level + rng.randint(-12, 12) for _ in range(packets)]
        return packets, sum(51 - level for level in levels if level <= 50)


def _tick(activity: AudioActivity, producers: Iterable[FakeProducer]) -> Activity:
    """``activity.tick`` of fakes standing in for producers."""
    return activity.tick(cast("list[Producer]", list(producers)))


def _state(activity: AudioActivity) -> tuple[Any, ...]:
    """Everything the tick keeps, as ``AudioTick.state()`` gives it: the voices by producer
    and by owner, the dominant speaker, since when, who has been ahead of it since when, the
    two selections and the last ranked, each in its dict's order."""
    if activity.native:
        state: tuple[Any, ...] = activity._native.state()
        return state

    def voices(of: Voices) -> tuple[tuple[Any, ...], ...]:
        return tuple((key, v.fast, v.slow, v.active_at, v.since) for key, v in of.voices.items())

    speaker = activity.speaker
    return (voices(activity.voices), voices(speaker.voices), speaker.dominant,
            speaker._dominant_since, dict(speaker._ahead_since),
            tuple(activity.selection._selected.items()), tuple(activity.narrow._selected.items()),
            activity._last_ranked)


class _TwinMeeting:
    """One random meeting, its producers in pairs: one for each path, fed alike."""

    def __init__(self, seed: int) -> None:
        rng = self.rng = random.Random(seed)
        self.seed = seed
        # The router's steps of 0.1 s from anywhere, or from where tests start (some
        # differences come out exactly at a bound there); or steps of exact binary fractions,
        # with bounds that are too (see run), so that every "at least" and "longer than" is
        # met exactly now and then.
        clocks = rng.choice(["anywhere", "from 0", "exact"])
        self.exact = clocks == "exact"
        self.clock = Clock({"anywhere": rng.uniform(-5.0, 1000.0),
                            "from 0": rng.choice([0.0, 50.0]),
                            "exact": float(rng.randint(-5, 1000))}[clocks])
        self.step = rng.choice([0.125, 0.25]) if self.exact else TICK
        self.loudest, self.audio_only = rng.choice([1, 2, 3, 3, 4, 6, 9]), rng.randint(1, 3)
        self.owners = [f"person {n}" for n in range(rng.randint(1, 8))]
        self.pairs: list[tuple[FakeProducer, FakeProducer]] = []
        self.voices: dict[str, _Voice] = {}
        self.serial = 0

    def run(self, ticks: int) -> None:
        with pytest.MonkeyPatch.context() as patch:
            if self.exact:  # both paths take these from Python (the C one when it is made)
                patch.setattr(speaker, "WORD_GAP", 0.5)
                patch.setattr(audio_activity, "DominantSpeaker",
                              functools.partial(DominantSpeaker, onset=0.25, handover=0.5))
            python = AudioActivity(self.clock, self.loudest, self.audio_only, native=False)
            c = AudioActivity(self.clock, self.loudest, self.audio_only, native=True)
            assert (python.native, c.native) == (False, True)
            for _ in range(self.rng.randint(0, 6)):
                self.join(_Voice(self.rng))
            for tick in range(ticks):
                order = self.change()
                expected = _tick(python, [p for p, _ in order])
                got = _tick(c, [q for _, q in order])
                self.compare(expected, got, python, c, f"seed {self.seed}, tick {tick}")

    def join(self, voice: _Voice) -> None:
        rng = self.rng
        self.serial += 1
        owner = rng.choice(self.owners)
        kind = "video" if rng.random() < 0.1 else "audio"
        levels = rng.random() > 0.15
        # the two kinds mixed (the C path reads slots itself, anything else through Python)
        made = rng.choice([SlottedProducer, SlottedProducer, FakeProducer])
        # equal but not the same objects: keys must be matched as a dict matches them
        p, q = (made(f"p{self.serial}", (owner + ".")[:-1], self.clock, kind=kind,
                     levels=levels) for _ in range(2))
        self.pairs.append((p, q))
        self.voices[p.id] = voice

    def change(self) -> list[tuple[FakeProducer, FakeProducer]]:
        """One tick's comings and goings, mutings, levels and time; the producers to tick, in
        order."""
        rng, pairs = self.rng, self.pairs
        if len(pairs) < 14 and rng.random() < 0.08:
            voice = _Voice(rng)
            for _ in range(2 if rng.random() < 0.3 else 1):  # two joining together: ties
                self.join(voice)
        if pairs and rng.random() < 0.04:
            del self.voices[pairs.pop(rng.randrange(len(pairs)))[0].id]
        if pairs and rng.random() < 0.05:
            for producer in rng.choice(pairs):
                producer.paused = not producer.paused
        if rng.random() < 0.02:
            rng.shuffle(pairs)
        drawn: dict[int, tuple[int, int]] = {}
        for p, q in pairs:
            voice = self.voices[p.id]
            if id(voice) not in drawn:
                drawn[id(voice)] = voice.counters()
            if p.kind == "audio" and p.level_extension is not None:
                p.level_packets, p.loudness = q.level_packets, q.loudness = drawn[id(voice)]
        self.clock.now += self.step if rng.random() < 0.85 else rng.choice(
            [0.0, 0.5, 2.5] if self.exact else [0.0, 0.05, 0.099, 0.13, 0.25, 0.7, 2.5])
        order = list(pairs)
        if order and rng.random() < 0.01:
            order.append(rng.choice(order))  # the same producer twice
        return order

    def compare(self, expected: Activity, got: Activity, python: AudioActivity,
                c: AudioActivity, where: str) -> None:
        assert got == expected, where
        # the same frozensets, laid out alike (the narrow selection iterates `forwarded`)
        assert list(got.forwarded) == list(expected.forwarded), where
        assert list(got.speaking) == list(expected.speaking), where
        assert [p.state() for p, _ in self.pairs] == [q.state() for _, q in self.pairs], where
        assert all(q.idle_calls == 0 for _, q in self.pairs), f"{where}: set_selected, no change"
        assert _state(c) == _state(python), where


def test_the_tick_in_c_decides_exactly_as_the_python_one_in_random_meetings() -> None:
    require_native_tick()
    for seed in range(150):
        _TwinMeeting(seed).run(ticks=300)


@pytest.mark.parametrize("missing", ["kind", "level_packets", "loudness", "paused",
                                     "level_extension", "id", "owner", "selected",
                                     "loud_until"])
@pytest.mark.parametrize("made", [SlottedProducer, FakeProducer], ids=["slots", "dict"])
def test_a_producer_lacking_an_attribute_raises_and_the_next_tick_still_decides(
        native: bool, missing: str, made: type[FakeProducer]) -> None:
    clock = Clock(10.0)
    activity = AudioActivity(clock, loudest=2, native=native)
    good, broken = made("p1", "ann", clock), made("p2", "bob", clock)
    delattr(broken, missing)
    clock.now += TICK
    with pytest.raises(AttributeError, match=missing):
        _tick(activity, [good, broken])
    clock.now += TICK
    good.level_packets, good.loudness = 5, 100
    assert _tick(activity, [good]) == Activity(
        speaking=frozenset({"ann"}), dominant=None, forwarded=frozenset({"p1"}),
        ranked=("p1",), unlevelled=frozenset())


def test_an_exception_from_set_selected_comes_out_of_the_tick(native: bool) -> None:
    class Refusing(SlottedProducer):
        __slots__ = ()

        def set_selected(self, selected: bool) -> None:
            raise RuntimeError("refused")

    clock = Clock(10.0)
    activity = AudioActivity(clock, loudest=1, native=native)
    producers = [Refusing(f"p{n}", f"person {n}", clock) for n in range(3)]
    clock.now += TICK
    with pytest.raises(RuntimeError, match="refused"):
        _tick(activity, producers)
