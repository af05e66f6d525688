"""Long garbage-collector pauses are reported, short ones are not; a meeting's own objects
stay few enough that full collections stay short."""

from __future__ import annotations

import gc
import logging

import pytest

from townhall.server.pauses import PauseWatch, watch
from townhall.sfu.transport import Codec, Transport

#: Video slots added to measure one's share of the objects.
SLOTS = 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_collection_longer_than_the_limit_is_logged_with_its_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pause_watch = PauseWatch(long=0.02, clock=clock)
    with caplog.at_level(logging.WARNING, logger="townhall.server.pauses"):
        pause_watch("start", {"generation": 0})
        clock.now += 0.005
        pause_watch("stop", {"generation": 0, "collected": 10, "uncollectable": 0})
        pause_watch("start", {"generation": 2})
        clock.now += 0.4
        pause_watch("stop", {"generation": 2, "collected": 1234, "uncollectable": 0})
    assert pause_watch.long_pauses == [(2, pytest.approx(0.4))]
    assert [r.getMessage() for r in caplog.records] == [
        "garbage collection (generation 2) held the server for 400 ms (1234 objects freed)"]


def test_watching_follows_real_collections() -> None:
    pause_watch = watch(long=0.0)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(pause_watch)
    assert any(generation == 2 for generation, _ in pause_watch.long_pauses)


class _NoMedia:
    def rtp_received(self, transport: Transport, data: bytes) -> None: ...

    def rtcp_received(self, transport: Transport, data: bytes) -> None: ...

    def transport_ready(self, transport: Transport) -> None: ...

    def transport_closed(self, transport: Transport) -> None: ...


async def test_each_video_consumer_leaves_few_objects_for_a_full_collection_to_walk() -> None:
    # A meeting has one such slot per pair of participants, and a full collection walks
    # every object they hold: 1,000 each would make a 50-person meeting's collections last
    # seconds.
    transport = Transport(_NoMedia(), name="objects")
    vp8 = Codec("video/VP8", 90000, 96)
    try:
        transport.add_outgoing(vp8)
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(SLOTS):
            transport.add_outgoing(vp8)
        gc.collect()
        per_slot = (len(gc.get_objects()) - before) / SLOTS
    finally:
        await transport.close()
    assert per_slot < 250, f"{per_slot:.0f} objects per video slot"
