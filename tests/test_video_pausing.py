"""Pausing video at the SFU: per consumer for several reasons, and for a whole transport."""

from __future__ import annotations

from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.transport import Codec, IncomingTrack, Transport

VP8 = Codec("video/VP8", 90000, 96)
OPUS = Codec("audio/opus", 48000, 111, 2)


class Events:
    def __init__(self) -> None:
        self.forwarding: list[str] = []

    def speaking_changed(self, router: Router, owners: frozenset[str]) -> None:
        pass

    def active_speaker_changed(self, router: Router, owner: str | None) -> None:
        pass

    def forwarding_changed(self, router: Router, owner: str) -> None:
        self.forwarding.append(owner)

    def transport_closed(self, router: Router, owner: str, transport: Transport) -> None:
        pass

    def sent_layers_changed(self, router: Router, producer: Producer) -> None:
        pass


def _producer(router: Router, owner: str, transport: Transport, codec: Codec,
              ssrc: int) -> Producer:
    kind = codec.kind
    track = IncomingTrack(mid=str(ssrc), kind=kind, codec=codec, ssrcs=(ssrc,),
                          mid_extension=None, audio_level_extension=None, rtcp_ssrc=1)
    producer = Producer(owner, "camera" if kind == "video" else "microphone", track,
                        transport, lambda: 0.0)
    router.producers[producer.id] = producer
    return producer


async def test_a_consumer_resumes_only_when_no_reason_holds_it_paused() -> None:
    router = Router("room")
    try:
        alice = router.create_transport("alice")
        bob = router.create_transport("bob")
        consumer = router.consume(bob, _producer(router, "alice", alice, VP8, 1000))
        consumer.set_paused(True, "last-n")
        consumer.set_paused(True, "bandwidth")
        consumer.set_paused(False, "last-n")
        assert consumer.paused and consumer.pauses == {"bandwidth"}
        consumer.set_paused(False, "bandwidth")
        assert not consumer.paused
    finally:
        await router.close()


async def test_pausing_a_transports_video_holds_its_video_consumers_now_and_later() -> None:
    events = Events()
    router = Router("room", events=events)
    try:
        alice = router.create_transport("alice")
        bob = router.create_transport("bob")
        camera = _producer(router, "alice", alice, VP8, 1000)
        microphone = _producer(router, "alice", alice, OPUS, 2000)
        video = router.consume(bob, camera)
        audio = router.consume(bob, microphone)

        router.set_video_paused(bob, "audio-only", True)
        assert video.paused and not audio.paused
        assert router.video_paused(bob) and not router.video_paused(alice)
        screen = router.consume(bob, _producer(router, "alice", alice, VP8, 3000))
        assert screen.paused, "a consumer added later starts paused"

        router.set_video_paused(bob, "bandwidth", True)
        router.set_video_paused(bob, "audio-only", False)
        assert video.paused and screen.paused, "the other reason still holds"
        router.set_video_paused(bob, "bandwidth", False)
        assert not video.paused and not screen.paused and not router.video_paused(bob)
        assert events.forwarding == ["bob", "bob"], "told once on pausing, once on resuming"
    finally:
        await router.close()
