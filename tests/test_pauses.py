"""Long garbage-collector pauses are reported, short ones are not; a held event loop is
caught whatever holds it; a meeting's own objects stay few enough that full collections stay
short."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from support import Clock, NoMedia
from townhall.beat import Beat
from townhall.server.pauses import LoopWatch, PauseWatch, watch
from townhall.sfu.transport import Codec, Transport

#: Video slots added to measure one's share of the objects.
SLOTS = 20


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


def test_a_wake_up_late_by_the_limit_or_more_is_a_stall_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop_watch = LoopWatch(long=0.1)
    with caplog.at_level(logging.WARNING, logger="townhall.server.pauses"):
        for late in (0.0, 0.099, 0.1, 0.02, 0.45):
            loop_watch.woke(late)
    assert loop_watch.stalls == 2
    assert loop_watch.stalled == pytest.approx(0.55)
    assert loop_watch.longest == pytest.approx(0.45)
    assert [r.getMessage() for r in caplog.records] == [
        "the event loop was held for 100 ms: media waited in the socket meanwhile",
        "the event loop was held for 450 ms: media waited in the socket meanwhile"]


async def test_holding_the_event_loop_is_caught_as_one_stall_of_about_the_hold() -> None:
    periodic = Beat(interval=0.02)
    stop_work = periodic.every(0.02, lambda: None)  # a meeting's periodic work
    loop_watch = LoopWatch(long=0.1, periodic=periodic)
    loop_watch.start()
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # what a long collection or a burst of renegotiations does
        await asyncio.sleep(0.1)
    finally:
        await loop_watch.stop()
        stop_work()
    assert loop_watch.stalls == 1
    assert 0.26 <= loop_watch.longest <= 0.4


async def test_a_hold_within_the_beats_own_work_is_caught_too() -> None:
    periodic = Beat(interval=0.02)
    holds = [0.3]
    stop_work = periodic.every(0.02, lambda: holds and time.sleep(holds.pop()))
    loop_watch = LoopWatch(long=0.1, periodic=periodic)
    loop_watch.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        await loop_watch.stop()
        stop_work()
    assert not holds, "the work ran"
    assert loop_watch.stalls == 1
    assert 0.26 <= loop_watch.longest <= 0.4


async def test_the_watch_wakes_rarely_on_its_own_and_with_every_beat_while_work_runs(
) -> None:
    periodic = Beat(interval=0.01)
    loop_watch = LoopWatch(long=0.1, idle_interval=0.25, periodic=periodic)
    wake_ups: list[float] = []
    loop_watch.woke = wake_ups.append  # type: ignore[method-assign]
    loop_watch.start()
    stop_work = None
    try:
        await asyncio.sleep(0.4)
        idle = len(wake_ups)
        assert not loop_watch.busy()
        stop_work = periodic.every(0.01, lambda: None)  # a meeting began
        assert loop_watch.busy()
        await asyncio.sleep(0.3)
        busy = len(wake_ups) - idle
    finally:
        await loop_watch.stop()
        if stop_work is not None:
            stop_work()
    assert 1 <= idle <= 2
    assert busy >= 10
    assert periodic.watch is None  # stopped: the beat no longer tells it


async def test_each_video_consumer_leaves_few_objects_for_a_full_collection_to_walk() -> None:
    # A meeting has one such slot per pair of participants, and a full collection walks
    # every object they hold: 1,000 each would make a 50-person meeting's collections last
    # seconds.
    transport = Transport(NoMedia(), name="objects")
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
