"""Simulcast over loopback: a producer with three layers, consumers with different bandwidths.

The bandwidth each consumer reports is controlled by the test (REMB sent from the consumer's
receiving transport, as a receiver's estimator would), so the layer each one gets is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from av import VideoFrame

from support import Attendee, RunningServer, SimulcastPublisher, send_remb
from townhall.sfu import bandwidth

SIZES = {0: (160, 90), 1: (320, 180), 2: (640, 360)}


class Watch:
    """Every decoded frame of one consumer: when, how wide, and whether it shows the
    publisher's picture (a bright bar over dark noise) rather than a frame decoded from the
    wrong reference."""

    def __init__(self, attendee: Attendee) -> None:
        self.frames: list[tuple[float, int, bool]] = []
        attendee.on_video = self._frame

    def _frame(self, key: tuple[str, str], frame: VideoFrame) -> None:
        columns = frame.to_ndarray(format="gray").mean(axis=0)
        looks_right = bool(columns.max() > 150 and np.median(columns) < 90)
        self.frames.append((time.monotonic(), frame.width, looks_right))

    def since(self, moment: float) -> list[tuple[float, int, bool]]:
        """The frames decoded from ``moment`` on."""
        return [f for f in self.frames if f[0] >= moment]

    def longest_gap(self, start: float, end: float) -> float:
        times = [start] + [t for t, _, _ in self.frames if start <= t <= end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


class Meeting:
    def __init__(self, server: RunningServer, room: str) -> None:
        self.server, self.room = server, room
        self.people: list[Attendee] = []
        self.reported: dict[Attendee, int] = {}
        self.publisher: Attendee | None = None
        self.simulcast: SimulcastPublisher | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self, role: str, name: str) -> Attendee:
        attendee = Attendee(self.server.ws_url, self.server.token(self.room, role), name)
        await attendee.join()
        self.people.append(attendee)
        return attendee

    def report(self, attendee: Attendee, bitrate: int) -> None:
        """From now on ``attendee`` reports ``bitrate`` every 0.5 s, like a receiver."""
        first = attendee not in self.reported
        self.reported[attendee] = bitrate
        if first:
            self._tasks.append(asyncio.ensure_future(self._report(attendee)))

    async def report_now(self, attendee: Attendee, bitrate: int) -> None:
        self.reported[attendee] = bitrate
        await send_remb(attendee, bitrate)

    async def _report(self, attendee: Attendee) -> None:
        while True:
            if attendee.subscribe_pc is not None:
                with contextlib.suppress(Exception):
                    await send_remb(attendee, self.reported[attendee])
            await asyncio.sleep(0.5)

    def producer(self) -> Any:
        room = self.server.running.services.registry.find(self.room)
        assert room is not None
        return next(p for p in room.router.producers.values() if p.simulcast)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.simulcast is not None:
            await self.simulcast.close()
        for person in self.people:
            await person.close()


@pytest.fixture
async def meeting(server: RunningServer) -> AsyncIterator[Meeting]:
    m = Meeting(server, await server.create_room("simulcast"))
    try:
        yield m
    finally:
        await m.close()


async def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held; fails with ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def start(meeting: Meeting, names: list[str]) -> tuple[Attendee, list[Attendee], Any]:
    consumers = [await meeting.join("listener", name) for name in names]
    publisher = await meeting.join("speaker", "camera")
    meeting.publisher = publisher
    meeting.simulcast = SimulcastPublisher(publisher)
    await meeting.simulcast.publish()
    key = (publisher.id, "camera")
    for person in consumers:
        await person.wait_frames(key, 3, timeout=20)
    producer = meeting.producer()

    def measured() -> bool:
        rates = [layer.bitrate for layer in producer.layers]
        return all(layer.width for layer in producer.layers) and \
            0 < 1.5 * rates[0] < rates[1] and 1.5 * rates[1] < rates[2]

    # The encoders take a moment to reach their bitrates (q < h < f, well apart).
    await wait_until("all three layers measured at the SFU", measured, timeout=15)
    return publisher, consumers, producer


def remb_for(producer: Any, layer: int) -> int:
    """A REMB under which ``layer`` is the highest that fits, with margins both ways."""
    rates = [x.bitrate for x in producer.layers]
    if layer == 2:
        return int(rates[2] * 1.5 * bandwidth.UPGRADE_MARGIN)
    return int(math.sqrt(rates[layer] * rates[layer + 1]))


async def test_consumers_with_different_bandwidths_get_different_layers_and_follow_a_drop(
    meeting: Meeting,
) -> None:
    publisher, (wide, middle, narrow), producer = await start(
        meeting, ["wide", "middle", "narrow"])
    assert [x.rid for x in producer.layers] == ["q", "h", "f"]
    assert [(x.width, x.height) for x in producer.layers] == list(SIZES.values())
    key = (publisher.id, "camera")
    meeting.report(wide, 20_000_000)
    meeting.report(middle, remb_for(producer, 1))
    meeting.report(narrow, remb_for(producer, 0))
    for person, layer in ((wide, 2), (middle, 1), (narrow, 0)):
        await wait_until(f"{person.name} decoding layer {layer}",
                         lambda p=person, s=SIZES[layer]: p.frame_sizes.get(key) == s,  # type: ignore[misc]
                         timeout=10)

    # The middle consumer's bandwidth drops: within 2 s it decodes the lowest layer, and every
    # frame around the switch decodes to the right picture with no freeze.
    watch = Watch(middle)
    await asyncio.sleep(2)
    dropped_at = time.monotonic()
    usual_gap = watch.longest_gap(dropped_at - 2, dropped_at)  # what this machine does now
    await meeting.report_now(middle, remb_for(producer, 0))
    took = await wait_until("the middle consumer on the lowest layer",
                            lambda: middle.frame_sizes.get(key) == SIZES[0], timeout=2.0)
    decoded = middle.frames[key]
    await asyncio.sleep(1.0)
    assert middle.frames[key] >= decoded + 5, (
        f"only {middle.frames[key] - decoded} frames decoded in the second after the switch "
        f"(switched in {took:.2f} s)")
    frames = watch.since(dropped_at)
    assert {width for _, width, _ in frames} <= {320, 160} and frames[-1][1] == 160
    assert all(ok for _, _, ok in frames), "a frame around the switch decoded wrongly"
    gap = watch.longest_gap(dropped_at, time.monotonic())
    print(f"drop: switched in {took:.2f} s, longest gap {gap:.2f} s (usual {usual_gap:.2f} s)")
    assert gap < max(0.6, 2 * usual_gap), f"the video froze for {gap:.2f} s"
    assert wide.frame_sizes[key] == SIZES[2] and narrow.frame_sizes[key] == SIZES[0]


async def test_a_layout_hint_caps_the_layer_and_a_hidden_video_is_not_forwarded(
    meeting: Meeting,
) -> None:
    publisher, (viewer,), _ = await start(meeting, ["viewer"])
    key = (publisher.id, "camera")
    meeting.report(viewer, 20_000_000)
    await wait_until("the top layer", lambda: viewer.frame_sizes.get(key) == SIZES[2], 10)
    mid = next(m for m, c in viewer.consumers.items() if c["source"] == "camera")

    watch = Watch(viewer)
    await asyncio.sleep(2)
    hinted_at = time.monotonic()
    usual_gap = watch.longest_gap(hinted_at - 2, hinted_at)
    await viewer.send({"type": "layout", "consumers": {mid: {"width": 300, "height": 170}}})
    await wait_until("the middle layer", lambda: viewer.frame_sizes.get(key) == SIZES[1], 3)
    decoded = viewer.frames[key]
    await asyncio.sleep(1.0)
    assert viewer.frames[key] >= decoded + 5
    assert viewer.frame_sizes[key] == SIZES[1]
    assert all(ok for _, _, ok in watch.since(hinted_at))
    gap = watch.longest_gap(hinted_at, time.monotonic())
    print(f"layout: longest gap {gap:.2f} s (usual {usual_gap:.2f} s)")
    assert gap < max(0.6, 2 * usual_gap), f"the video froze for {gap:.2f} s"

    await viewer.send({"type": "layout", "consumers": {mid: {"width": 0, "height": 0}}})
    await viewer.wait_for("forwarding", where=lambda m: m["video"] == [], timeout=3)
    await asyncio.sleep(0.3)
    frozen = viewer.frames[key]
    await asyncio.sleep(1.0)
    assert viewer.frames[key] <= frozen + 1, "a hidden video is still forwarded"

    await viewer.send({"type": "layout", "consumers": {mid: {"width": 1280, "height": 720}}})
    await viewer.wait_for("forwarding", where=lambda m: m["video"] == [publisher.id]
                          and m is viewer.messages[-1], timeout=3)
    await wait_until("the top layer again", lambda: viewer.frame_sizes.get(key) == SIZES[2]
                     and viewer.frames[key] > frozen + 5, 5)


async def test_without_bandwidth_for_the_lowest_layer_video_is_cut_and_the_page_is_told(
    meeting: Meeting,
) -> None:
    publisher, (poor,), producer = await start(meeting, ["poor"])
    key = (publisher.id, "camera")
    meeting.report(poor, 20_000_000)
    await wait_until("video", lambda: poor.frames[key] > 10, 5)
    await meeting.report_now(poor, producer.layers[0].bitrate // 3)
    cut = await poor.wait_for("forwarding", where=lambda m: m["low_bandwidth"], timeout=3)
    assert cut["video"] == []
    meeting.report(poor, 20_000_000)
    back = await poor.wait_for("forwarding", where=lambda m: not m["low_bandwidth"]
                               and m["video"] == [publisher.id], timeout=5)
    assert back["video"] == [publisher.id]
    decoded = poor.frames[key]
    await wait_until("video again", lambda: poor.frames[key] > decoded + 5, 5)
