"""The router's audio work on real producers: levels summed per packet, decided per tick."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from support import Clock
from townhall.config import Config
from townhall.sfu import rtp
from townhall.sfu.audio_activity import AudioActivity
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.speaker import TICK
from townhall.sfu.transport import Codec, IncomingTrack

OPUS = Codec("audio/opus", 48000, 111, 2)


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


async def test_only_the_speaking_producers_and_those_without_levels_are_forwarded() -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [n != 5 for n in range(6)])
        activity = AudioActivity(clock, loudest=3)
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
) -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [n != 4 for n in range(5)])
        activity = AudioActivity(clock, loudest=3, audio_only=1)
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


async def test_in_silence_an_audio_only_listener_keeps_the_last_one_heard() -> None:
    clock = Clock(50.0)
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = _producers(transport, clock, [True] * 3)
        activity = AudioActivity(clock, loudest=3, audio_only=1)
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
