"""Simulcast units: VP8 descriptors, layer choice, switching at keyframes, SDP completion."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import RtcpPacket, RtpPacket

from support import Clock
from townhall.sfu import bandwidth, simulcast_sdp, vp8
from townhall.sfu import consumer as consumer_module
from townhall.sfu.consumer import Consumer
from townhall.sfu.producer import Producer
from townhall.sfu.rtp import parse_header
from townhall.sfu.simulcast import layer_for_size
from townhall.sfu.transport import Codec, IncomingTrack

FIXTURES = Path(__file__).parent / "fixtures" / "vp8"
#: First 48 bytes of the first RTP payload of a libvpx keyframe (320x180) and of the next frame.
KEYFRAME = (FIXTURES / "keyframe-320x180.bin").read_bytes()
INTERFRAME = (FIXTURES / "interframe.bin").read_bytes()


# -- VP8 payload descriptor ----------------------------------------------------------------


def test_a_libvpx_keyframe_is_recognised_with_its_size_and_15_bit_picture_id() -> None:
    descriptor = vp8.parse(KEYFRAME, 0)
    assert descriptor == vp8.Descriptor(size=4, start=True, keyframe=True, picture_id=0x3FAC,
                                        picture_id_bits=15, tl0picidx=-1, temporal_id=-1)
    assert vp8.keyframe_size(KEYFRAME, 0, descriptor) == (320, 180)
    following = vp8.parse(INTERFRAME, 0)
    assert following.start and not following.keyframe
    assert following.picture_id == 0x3FAD
    assert vp8.keyframe_size(INTERFRAME, 0, following) is None


def test_a_browser_descriptor_with_tl0picidx_and_temporal_layer_is_read() -> None:
    # X=1 S=1 PID=0 | I L T | M + 15-bit picture id 0x1234 | TL0PICIDX 200 | TID 2, Y
    data = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 200, (2 << 6) | 0x20]) + b"\x31\x02\x00"
    descriptor = vp8.parse(data, 0)
    assert (descriptor.size, descriptor.picture_id, descriptor.tl0picidx,
            descriptor.temporal_id) == (6, 0x1234, 200, 2)
    assert descriptor.start and not descriptor.keyframe  # frame tag's lowest bit is 1


def test_a_continuation_packet_is_not_a_frame_start() -> None:
    data = bytes([0x80, 0x80, 0x05]) + b"\x00" * 8  # X, I with 7-bit id 5, S=0
    descriptor = vp8.parse(data, 0)
    assert (descriptor.start, descriptor.keyframe, descriptor.picture_id,
            descriptor.picture_id_bits) == (False, False, 5, 7)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "VP8 payload is empty"),
        (b"\x90", "VP8 descriptor is truncated"),
        (b"\x90\x80", "VP8 descriptor is truncated"),
        (b"\x90\x80\x81", "VP8 descriptor is truncated"),
        (b"\x90\x40", "VP8 descriptor is truncated"),
    ],
)
def test_truncated_descriptors_raise_value_error_with_exact_messages(
    data: bytes, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        vp8.parse(data, 0)
    assert str(info.value) == message


def test_write_replaces_picture_id_and_tl0picidx_and_keeps_the_length() -> None:
    data = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 200, 0x40]) + b"\x30\x02\x00"
    descriptor = vp8.parse(data, 0)
    written = vp8.write(descriptor, data, 0, 0x7FFF, 7)
    again = vp8.parse(written + data[descriptor.size:], 0)
    assert len(written) == descriptor.size
    assert (again.picture_id, again.tl0picidx, again.temporal_id, again.keyframe) == (
        0x7FFF, 7, 1, True)


def test_picture_ids_continue_across_a_restart_and_wrap_at_15_bits() -> None:
    pictures = vp8.PictureRewriter()

    def frame(picture_id: int, tl0: int) -> vp8.Descriptor:
        return vp8.Descriptor(6, True, False, picture_id, 15, tl0, 0)

    assert pictures.rewrite(frame(0x7FFE, 255)) == (0x7FFE, 255)
    assert pictures.rewrite(frame(0x7FFF, 0)) == (0x7FFF, 0)
    assert not pictures.active
    pictures.restart()
    assert pictures.rewrite(frame(100, 17)) == (0, 1)
    assert pictures.active
    assert pictures.rewrite(frame(101, 17)) == (1, 1)
    assert pictures.output(frame(99, 16)) == (0x7FFF, 0)  # a retransmission changes nothing
    assert pictures.rewrite(frame(102, 18)) == (2, 2)


# -- layers and switching --------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.name = "fake"

    def send_rtp(self, data: bytes) -> bool:
        self.rtp.append(data)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        self.rtcp.append(data)
        return True


class FakeSlot:
    mid = "0"
    payload_type = 96
    ssrc = 0xC0C0
    abs_send_time: int | None = 3


VP8 = Codec("video/VP8", 90000, 97)


def simulcast_producer(clock: Clock) -> tuple[Producer, FakeTransport]:
    track = IncomingTrack(mid="1", kind="video", codec=VP8, ssrcs=(), mid_extension=1,
                          audio_level_extension=None, rtcp_ssrc=1, rids=("q", "h", "f"),
                          rid_extension=10)
    transport = FakeTransport()
    producer = Producer("alice", "camera", track, transport, clock)  # type: ignore[arg-type]
    for layer, ssrc in zip(producer.layers, (1000, 2000, 3000), strict=True):
        layer.ssrc = ssrc
    return producer, transport


class Layer:
    """A producer's layer as a test sends it: its own SSRC, sequence, timestamps, picture ids."""

    def __init__(self, index: int, ssrc: int, sequence: int, timestamp: int, picture_id: int,
                 width: int) -> None:
        self.index, self.ssrc = index, ssrc
        self.sequence, self.timestamp, self.picture_id, self.tl0 = (
            sequence, timestamp, picture_id, index * 50)
        self.width = width

    def frame(self, keyframe: bool, packets: int = 2) -> list[bytes]:
        out = []
        self.tl0 = (self.tl0 + 1) & 0xFF
        for n in range(packets):
            start = 0x10 if n == 0 else 0
            descriptor = bytes([0x80 | start, 0xE0, 0x80 | (self.picture_id >> 8),
                                self.picture_id & 0xFF, self.tl0, 0x00])
            if n == 0:
                tag = b"\x50\x02\x00" if keyframe else b"\x51\x02\x00"
                body = tag + (b"\x9d\x01\x2a" + struct.pack("<HH", self.width, self.width // 2)
                              if keyframe else b"\x00" * 7)
            else:
                body = b"\x00" * 10
            packet = RtpPacket(payload_type=97, sequence_number=self.sequence,
                               timestamp=self.timestamp, ssrc=self.ssrc,
                               marker=int(n == packets - 1))
            packet.payload = descriptor + body
            out.append(packet.serialize())
            self.sequence = (self.sequence + 1) & 0xFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.timestamp = (self.timestamp + 3000) & 0xFFFFFFFF
        return out


def consumed(clock: Clock) -> tuple[Producer, FakeTransport, FakeTransport, Consumer]:
    """A simulcast producer (and its publisher's transport), and one consumer of it."""
    producer, publisher = simulcast_producer(clock)
    out = FakeTransport()
    consumer = Consumer(producer, out, FakeSlot(), clock)  # type: ignore[arg-type]
    producer.consumers.append(consumer)
    return producer, publisher, out, consumer


def feed(producer: Producer, packets: list[bytes], index: int) -> None:
    for data in packets:
        producer.forward(data, parse_header(data), producer.layers[index])


def sent(transport: FakeTransport) -> list[tuple[RtpPacket, vp8.Descriptor]]:
    out = []
    for data in transport.rtp:
        packet = RtpPacket.parse(data)
        out.append((packet, vp8.parse(packet.payload, 0)))
    transport.rtp.clear()
    return out


def plis(transport: FakeTransport) -> list[int]:
    media = [p.media_ssrc for data in transport.rtcp for p in RtcpPacket.parse(data)
             if p.__class__.__name__ == "RtcpPsfbPacket" and p.fmt == 1]
    transport.rtcp.clear()
    return media


def test_a_consumer_starts_at_a_keyframe_of_its_target_layer_and_asks_for_one() -> None:
    clock = Clock(1000.0)
    producer, publisher, out, consumer = consumed(clock)
    layers = [Layer(0, 1000, 100, 5000, 10, 160), Layer(1, 2000, 9000, 777, 2000, 320),
              Layer(2, 3000, 60000, 4_000_000_000, 30000, 640)]
    consumer.set_target(2)
    assert plis(publisher) == [3000]
    feed(producer, layers[2].frame(keyframe=False), 2)
    feed(producer, layers[0].frame(keyframe=True), 0)
    assert sent(out) == []
    feed(producer, layers[2].frame(keyframe=True), 2)
    packets = sent(out)
    assert [p.ssrc for p, _ in packets] == [0xC0C0, 0xC0C0]
    assert consumer.layer == 2
    assert producer.layers[2].width == 640


def test_switching_layers_waits_for_a_keyframe_and_keeps_every_counter_continuous() -> None:
    clock = Clock(1000.0)
    producer, publisher, out, consumer = consumed(clock)
    high = Layer(2, 3000, 65534, 4_294_960_000, 0x7FFE, 640)
    low = Layer(0, 1000, 100, 5000, 10, 160)
    consumer.set_target(2)
    feed(producer, high.frame(keyframe=True), 2)
    feed(producer, high.frame(keyframe=False), 2)
    before = sent(out)
    last_packet, last_descriptor = before[-1]

    consumer.set_target(0)
    assert 1000 in plis(publisher)
    clock.now += 0.033
    feed(producer, low.frame(keyframe=False), 0)  # not a keyframe: still the high layer
    feed(producer, high.frame(keyframe=False), 2)
    still_high = sent(out)
    assert len(still_high) == 2 and consumer.layer == 2
    last_packet, last_descriptor = still_high[-1]
    feed(producer, low.frame(keyframe=True), 0)
    feed(producer, high.frame(keyframe=False), 2)  # the old layer is no longer forwarded
    feed(producer, low.frame(keyframe=False), 0)
    after = sent(out)
    assert consumer.layer == 0 and len(after) == 4
    sequences = [p.sequence_number for p, _ in after]
    assert sequences == [(last_packet.sequence_number + n) & 0xFFFF for n in range(1, 5)]
    assert after[0][1].keyframe
    assert after[0][1].picture_id == (last_descriptor.picture_id + 1) & 0x7FFF
    assert after[2][1].picture_id == (last_descriptor.picture_id + 2) & 0x7FFF
    assert after[0][1].tl0picidx == (last_descriptor.tl0picidx + 1) & 0xFF
    assert after[2][1].tl0picidx == (last_descriptor.tl0picidx + 2) & 0xFF
    first_ts = after[0][0].timestamp
    assert 0 < (first_ts - last_packet.timestamp) & 0xFFFFFFFF < 9000
    assert (after[2][0].timestamp - first_ts) & 0xFFFFFFFF == 3000


def test_retransmissions_after_a_switch_carry_the_rewritten_picture_id() -> None:
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    high, low = Layer(2, 3000, 10, 0, 500, 640), Layer(0, 1000, 7000, 0, 9000, 160)
    consumer.set_target(2)
    feed(producer, high.frame(keyframe=True), 2)
    consumer.set_target(0)
    feed(producer, low.frame(keyframe=True), 0)
    original = sent(out)[-1]
    missing = consumer.retransmit((original[0].sequence_number,))
    assert missing == []
    again = sent(out)[0]
    assert again[0].sequence_number == original[0].sequence_number
    assert again[1].picture_id == original[1].picture_id == 501
    assert again[0].payload == original[0].payload


def test_packets_sent_before_a_switch_are_not_resent_from_the_new_layer() -> None:
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    high, low = Layer(2, 3000, 10, 0, 500, 640), Layer(0, 1000, 7000, 0, 9000, 160)
    consumer.set_target(2)
    feed(producer, high.frame(keyframe=True, packets=3), 2)
    before = [p.sequence_number for p, _ in sent(out)]
    consumer.set_target(0)
    feed(producer, low.frame(keyframe=True), 0)
    feed(producer, low.frame(keyframe=False), 0)
    sent(out)
    assert consumer.retransmit(tuple(before)) == []
    assert out.rtp == [], "a packet of the new layer went out under an old layer's number"


def keyframe_sent(clock: Clock) -> tuple[FakeTransport, Consumer, list[int]]:
    """A consumer that sent a keyframe of three packets: its transport, itself and the
    packets' sequence numbers."""
    producer, _, out, consumer = consumed(clock)
    layer = Layer(0, 1000, 7000, 0, 9000, 160)
    consumer.set_target(0)
    feed(producer, layer.frame(keyframe=True, packets=3), 0)
    return out, consumer, [p.sequence_number for p, _ in sent(out)]


def test_a_packet_asked_for_again_at_once_is_not_resent_twice() -> None:
    clock = Clock(1000.0)
    out, consumer, [first, second, _] = keyframe_sent(clock)
    consumer.retransmit((first, second))
    clock.now += 0.05  # asked again before the copies could have arrived
    consumer.retransmit((first, second))
    assert [p.sequence_number for p, _ in sent(out)] == [first, second]
    clock.now += consumer_module.RESEND_INTERVAL
    consumer.retransmit((second,))
    assert [p.sequence_number for p, _ in sent(out)] == [second]
    assert consumer.resent == 3


def test_a_packet_is_resent_again_once_the_interval_asked_for_has_gone_by() -> None:
    clock = Clock(1000.0)
    out, consumer, [first, _, _] = keyframe_sent(clock)
    consumer.retransmit((first,), interval=0.4)  # a round trip of 400 ms
    clock.now += consumer_module.RESEND_INTERVAL + 0.05
    consumer.retransmit((first,), interval=0.4)  # asked again within it: on its way still
    clock.now += 0.25
    consumer.retransmit((first,), interval=0.4)  # and after it
    assert [p.sequence_number for p, _ in sent(out)] == [first, first]


def test_retransmissions_stop_where_the_transports_budget_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bandwidth, "RESEND_MIN_BURST", 0)  # the test's packets are small
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    layer = Layer(0, 1000, 7000, 0, 9000, 160)
    consumer.set_target(0)
    feed(producer, layer.frame(keyframe=True, packets=4), 0)
    sequences = tuple(p.sequence_number for p, _ in sent(out)[:4])
    size = len(producer.layers[0].cache.get(7000) or b"")
    budget = bandwidth.ResendBudget(clock)
    budget.set_estimate(int(size * 2.5 / bandwidth.RESEND_BURST / bandwidth.RESEND_SHARE * 8))
    clock.now += 1  # the bucket full: two and a half packets
    assert consumer.retransmit(sequences, budget) == []  # not missing: held back
    assert [p.sequence_number for p, _ in sent(out)] == list(sequences[:2])


def test_a_target_of_minus_one_stops_forwarding_at_once() -> None:
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    layer = Layer(1, 2000, 1, 0, 1, 320)
    consumer.set_target(1)
    feed(producer, layer.frame(keyframe=True), 1)
    assert len(sent(out)) == 2
    consumer.set_target(-1)
    feed(producer, layer.frame(keyframe=True), 1)
    assert sent(out) == [] and not consumer.forwarding


def test_forwarded_video_carries_abs_send_time_for_the_receivers_estimate() -> None:
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    consumer.set_target(0)
    feed(producer, Layer(0, 1000, 1, 0, 1, 160).frame(keyframe=True), 0)
    data = out.rtp[0]
    header = parse_header(data)
    assert data[header.extension_offset:header.extension_offset + 5] == bytes(
        [0xBE, 0xDE, 0, 1, (3 << 4) | 2])
    value = int.from_bytes(data[header.extension_offset + 5:header.extension_offset + 8], "big")
    assert value == int(clock.now * 262144) & 0xFFFFFF


def test_probe_padding_follows_the_end_of_a_frame_and_never_splits_one() -> None:
    clock = Clock(1000.0)
    producer, _, out, consumer = consumed(clock)
    layer = Layer(0, 1000, 500, 0, 1, 160)
    consumer.set_target(0)
    consumer.padding = 600
    feed(producer, layer.frame(keyframe=True, packets=3), 0)
    packets = [RtpPacket.parse(data) for data in out.rtp]
    assert all(p.payload for p in packets[:3]) and packets[2].marker
    padding = packets[3:]
    assert len(padding) == 3 and all(not p.payload and p.padding_size for p in padding)
    assert [p.sequence_number for p in packets] == list(range(500, 506))
    assert {p.timestamp for p in padding} == {packets[2].timestamp}
    assert consumer.padding == 0
    out.rtp.clear()
    feed(producer, layer.frame(keyframe=False), 0)
    assert [RtpPacket.parse(d).sequence_number for d in out.rtp] == [506, 507]
    assert consumer.retransmit((504, 506)) == []
    again = [RtpPacket.parse(d) for d in out.rtp[2:]]
    assert [p.sequence_number for p in again] == [506]  # the padding is not resent


def _layers(sizes: list[tuple[int, int]]) -> list[Any]:
    clock = Clock(1000.0)
    producer, _ = simulcast_producer(clock)
    for layer, (width, height) in zip(producer.layers, sizes, strict=True):
        layer.width, layer.height = width, height
    return producer.layers


def test_the_smallest_layer_covering_the_shown_size_is_the_most_forwarded() -> None:
    layers = _layers([(160, 90), (320, 180), (640, 360)])
    assert layer_for_size(layers, 150, 84) == 0
    assert layer_for_size(layers, 180, 101) == 0  # within the tolerance
    assert layer_for_size(layers, 300, 300) == 1  # either dimension suffices
    assert layer_for_size(layers, 640, 360) == 2
    assert layer_for_size(layers, 1920, 1080) == 2
    assert layer_for_size(layers, 0, 0) == -1
    assert layer_for_size(_layers([(0, 0), (0, 0), (0, 0)]), 100, 100) == 2  # sizes unknown


# -- SDP -------------------------------------------------------------------------------------

CHROMIUM_OFFER_VIDEO = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", "a=sendonly",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=rid:q send", "a=rid:h send", "a=rid:f send",
    "a=simulcast:send q;h;~f",
    "",
])


def test_a_browser_simulcast_offer_lists_its_layers_lowest_first() -> None:
    sections = simulcast_sdp.offered(CHROMIUM_OFFER_VIDEO)
    assert sections == [None, simulcast_sdp.OfferedSimulcast(("q", "h", "f"), 10, 11)]


def test_the_answer_is_completed_with_rid_lines_and_simulcast_recv() -> None:
    answer = "\r\n".join(["v=0", "s=-", "m=audio 9 X 111", "a=mid:0",
                          "m=video 9 X 96", "a=mid:1", "a=recvonly", ""])
    completed = simulcast_sdp.complete_answer(answer, simulcast_sdp.offered(CHROMIUM_OFFER_VIDEO))
    video = completed.split("m=video")[1]
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n" in video
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n" in video
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in video
    assert "a=rid" not in completed.split("m=video")[0]


@pytest.mark.parametrize(
    "lines",
    [
        ["a=rid:q send", "a=rid:h send", "a=simulcast:send q;h"],  # no rid extension
        ["a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "a=rid:q send",
         "a=simulcast:send q"],  # one layer is no simulcast
        ["a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "a=rid:q send",
         "a=rid:h send", "a=simulcast:send q;h;q"],  # a layer twice
        ["a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "a=rid:q send",
         "a=rid:h<x send", "a=simulcast:send q;h<x"],  # not a rid
    ],
)
def test_malformed_simulcast_offers_are_taken_as_one_stream(lines: list[str]) -> None:
    offer = "\r\n".join(["v=0", "m=video 9 X 96", "a=mid:0", *lines, ""])
    assert simulcast_sdp.offered(offer) == [None]
