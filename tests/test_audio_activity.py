"""The router's audio work on real producers: levels summed per packet, decided per tick."""

from __future__ import annotations

import struct

import pytest

from townhall.config import Config
from townhall.sfu import rtp
from townhall.sfu.audio_activity import AudioActivity
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.speaker import TICK
from townhall.sfu.transport import Codec, IncomingTrack

OPUS = Codec("audio/opus", 48000, 111, 2)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _packet(sequence: int, level: int | None) -> tuple[bytes, rtp.RtpHeader]:
    extension = b"" if level is None else \
        struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x80 | level, 0, 0])
    first = 0x90 if level is not None else 0x80
    data = struct.pack("!BBHII", first, 111, sequence, sequence * 960, 7) + extension + b"op"
    return data, rtp.parse_header(data)


async def test_only_the_speaking_producers_and_those_without_levels_are_forwarded() -> None:
    clock = Clock()
    router = Router("room", clock=clock)
    try:
        transport = router.create_transport("owner")
        producers = []
        for n in range(6):
            level_id = None if n == 5 else 1
            track = IncomingTrack(mid=str(n), kind="audio", codec=OPUS, ssrcs=(100 + n,),
                                  mid_extension=None, audio_level_extension=level_id,
                                  rtcp_ssrc=1)
            producers.append(Producer(f"person {n}", "microphone", track, transport, clock))
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


def test_the_settings_come_from_the_environment_and_at_least_one_microphone_is_forwarded() -> None:
    config = Config.load(env={"TOWNHALL_LOUDEST_AUDIO": "5", "TOWNHALL_AUDIO_RED": "false"})
    assert (config.loudest_audio, config.audio_red) == (5, False)
    with pytest.raises(ValueError, match="loudest_audio"):
        Config.load(env={"TOWNHALL_LOUDEST_AUDIO": "0"})
