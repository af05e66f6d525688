"""Layers nobody can use are switched off at their producer (``send-layers``), and back on as
soon as someone can use them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from support import Clock
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.simulcast import LAYER_IDLE, SentLayers, needed_layers
from townhall.sfu.transport import Codec, IncomingTrack, Transport

VP8 = Codec("video/VP8", 90000, 96)


class Events:
    def __init__(self) -> None:
        #: (owner, source, layers) of every send-layers change
        self.sent_layers: list[tuple[str, str, int]] = []

    def speaking_changed(self, router: Router, owners: frozenset[str]) -> None:
        pass

    def active_speaker_changed(self, router: Router, owner: str | None) -> None:
        pass

    def forwarding_changed(self, router: Router, owner: str) -> None:
        pass

    def transport_closed(self, router: Router, owner: str, transport: Transport) -> None:
        pass

    def sent_layers_changed(self, router: Router, producer: Producer) -> None:
        self.sent_layers.append((producer.owner, producer.source, producer.sent_layers.count))


def _camera(router: Router, owner: str, transport: Transport, clock: Clock,
            rids: tuple[str, ...] = ("q", "h", "f")) -> Producer:
    track = IncomingTrack(mid="0", kind="video", codec=VP8, ssrcs=(), mid_extension=1,
                          audio_level_extension=None, rtcp_ssrc=1, rids=rids)
    producer = Producer(owner, "camera", track, transport, clock)
    router.producers[producer.id] = producer
    return producer


@contextlib.asynccontextmanager
async def _room() -> AsyncIterator[tuple[Router, Clock, Events]]:
    """A router on a clock the test moves, with its events recorded; closed afterwards."""
    clock, events = Clock(1000.0), Events()
    router = Router("room", events=events, clock=clock)
    try:
        yield router, clock, events
    finally:
        await router.close()


def _pass_idle_time(router: Router, clock: Clock) -> None:
    """Allocation runs, then again once ``LAYER_IDLE`` has passed: long enough for a layer
    nobody wants to be switched off."""
    router.allocate()
    clock.now += LAYER_IDLE
    router.allocate()


def test_more_layers_are_asked_for_at_once_and_fewer_only_after_they_went_unused() -> None:
    layers = SentLayers(3)
    assert not layers.update(3, 0.0)
    assert not layers.update(1, 1.0), "not at the first moment nobody needs the top layers"
    assert not layers.update(1, 1.0 + LAYER_IDLE - 0.1)
    assert layers.update(1, 1.0 + LAYER_IDLE) and layers.count == 1
    assert layers.update(3, 7.0) and layers.count == 3, "someone needs them again: at once"


def test_a_layer_still_wanted_during_the_idle_time_is_kept() -> None:
    layers = SentLayers(3)
    layers.update(1, 0.0)
    layers.update(2, 2.0)  # someone looked at a middle-sized video for a moment
    assert layers.update(1, LAYER_IDLE) and layers.count == 2
    assert not layers.update(1, LAYER_IDLE + 1)  # the middle layer's own idle time starts
    assert not layers.update(1, 2 * LAYER_IDLE)
    assert layers.update(1, 2 * LAYER_IDLE + 1) and layers.count == 1


async def test_the_layers_needed_follow_the_largest_display_of_a_consumer_not_paused() -> None:
    async with _room() as (router, clock, _):
        alice = router.create_transport("alice")
        camera = _camera(router, "alice", alice, clock)
        assert needed_layers(camera) == 1, "nobody watching: the lowest layer stays ready"
        bob = router.consume(router.create_transport("bob"), camera)
        carol = router.consume(router.create_transport("carol"), camera)
        assert needed_layers(camera) == 3, "no layout hint: any layer may be shown"
        bob.max_layer, carol.max_layer = 1, 0
        assert needed_layers(camera) == 2
        bob.set_paused(True, "last-n")
        assert needed_layers(camera) == 1
        carol.max_layer = -1  # hidden
        assert needed_layers(camera) == 1
        bob.set_paused(False, "last-n")
        bob.max_layer = 2
        assert needed_layers(camera) == 3


async def test_the_router_tells_a_producer_to_send_fewer_layers_and_more_again() -> None:
    async with _room() as (router, clock, events):
        alice = router.create_transport("alice")
        camera = _camera(router, "alice", alice, clock)
        viewer = router.consume(router.create_transport("bob"), camera)
        viewer.max_layer = 0  # bob shows alice small
        router.allocate()
        clock.now += LAYER_IDLE / 2
        router.allocate()
        assert events.sent_layers == []
        clock.now += LAYER_IDLE / 2
        router.allocate()
        assert events.sent_layers == [("alice", "camera", 1)]
        assert camera.sent_layers.count == 1

        viewer.max_layer = 2  # bob enlarges it
        router.allocate()
        assert events.sent_layers[-1] == ("alice", "camera", 3)
        router.allocate()
        assert len(events.sent_layers) == 2, "told once per change"


async def test_a_producer_without_simulcast_is_never_told_to_send_fewer_layers() -> None:
    async with _room() as (router, clock, events):
        alice = router.create_transport("alice")
        track = IncomingTrack(mid="0", kind="video", codec=VP8, ssrcs=(1000,),
                              mid_extension=None, audio_level_extension=None, rtcp_ssrc=1)
        camera = Producer("alice", "camera", track, alice, clock)
        router.producers[camera.id] = camera
        router.consume(router.create_transport("bob"), camera).set_paused(True, "last-n")
        for _ in range(3):
            router.allocate()
            clock.now += LAYER_IDLE
        assert events.sent_layers == []


async def test_a_consumer_resumed_or_shown_larger_gets_the_layers_back_without_waiting() -> None:
    async with _room() as (router, clock, events):
        alice = router.create_transport("alice")
        camera = _camera(router, "alice", alice, clock)
        bob = router.create_transport("bob")
        viewer = router.consume(bob, camera)
        viewer.set_paused(True, "last-n")
        _pass_idle_time(router, clock)
        assert camera.sent_layers.count == 1

        viewer.set_paused(False, "last-n")  # alice came into bob's last-N (the room's doing)
        router.check_sent_layers()
        assert events.sent_layers[-1] == ("alice", "camera", 3)

        router.set_layout(viewer, 0, 0)  # hidden
        clock.now += LAYER_IDLE
        _pass_idle_time(router, clock)
        assert camera.sent_layers.count == 1
        router.set_layout(viewer, 1280, 720)  # no layer size known yet: any layer may be shown
        assert events.sent_layers[-1] == ("alice", "camera", 3)

        router.set_video_paused(bob, "audio-only", True)
        clock.now += LAYER_IDLE
        _pass_idle_time(router, clock)
        assert camera.sent_layers.count == 1
        router.set_video_paused(bob, "audio-only", False)
        assert events.sent_layers[-1] == ("alice", "camera", 3)
