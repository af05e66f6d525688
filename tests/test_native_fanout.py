"""The native fan-out sends the very copies the Python path makes and leaves the same state.

One producer, two consumers with the same negotiated slot: one on a transport with a native
route (a real UDP socket and a real libsrtp session; the C fan-out protects and sends its
copies), one on a transport without (every copy through ``Consumer.send`` in Python). Whatever
the producer sends — layer switches, padding, a late packet, pauses, RED, audio levels — both
receivers must get byte-identical packets, and both consumers must end in the same state.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from support import Clock, require_native_fanout
from townhall import beat
from townhall.sfu import fields, ice, native
from townhall.sfu.consumer import Consumer
from townhall.sfu.producer import SPEAKING_LEVEL, Producer
from townhall.sfu.router import Counters
from townhall.sfu.rtp import parse_header
from townhall.sfu.sequence import SequenceRewriter
from townhall.sfu.transport import Codec, IncomingTrack
from townhall.sfu.twcc import TwccSender
from townhall.sfu.vp8 import PictureRewriter

OPUS = Codec("audio/opus", 48000, 111, 2)
VP8 = Codec("video/VP8", 90000, 97)


@pytest.fixture(autouse=True)
def _needs_native() -> None:
    require_native_fanout()


class Slot:
    mid = "0"

    def __init__(self, payload_type: int, abs_send_time: int | None,
                 red_payload_type: int | None = None) -> None:
        self.payload_type: int | None = payload_type
        self.ssrc = 0xC0C0
        self.abs_send_time = abs_send_time
        self.red_payload_type = red_payload_type


class PlainTransport:
    """No native route: the Python path, which keeps what it sends."""

    name = "python"

    def __init__(self) -> None:
        self.route = None
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, data: bytes) -> bool:
        self.rtp.append(data)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        self.rtcp.append(data)
        return True


class RoutedTransport(PlainTransport):
    """A native route to a UDP socket on loopback; what Python sends goes the same way."""

    name = "native"

    def __init__(self) -> None:
        super().__init__()
        key = os.urandom(30)
        self._tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self._rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.settimeout(2)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = native.NativeSend.sockaddr(self.receiver.getsockname())
        assert address is not None
        self.route = native.NativeSend.route(self._tx, self.sender.fileno(), address)

    def send_rtp(self, data: bytes) -> bool:
        self.sender.sendto(self._tx.protect(data), self.receiver.getsockname())
        return True

    def received(self, count: int) -> list[bytes]:
        return [self._rx.unprotect(self.receiver.recv(2048)) for _ in range(count)]

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


class Pair:
    """The producer and its two consumers."""

    def __init__(self, simulcast: bool, twcc: bool, red: bool = False) -> None:
        self.clock = Clock(5000.0)
        if simulcast:
            track = IncomingTrack(mid="1", kind="video", codec=VP8, ssrcs=(), mid_extension=1,
                                  audio_level_extension=None, rtcp_ssrc=1, rids=("q", "h", "f"),
                                  rid_extension=10)
        else:
            track = IncomingTrack(mid="1", kind="audio", codec=OPUS, ssrcs=(7,),
                                  mid_extension=None, audio_level_extension=1, rtcp_ssrc=1,
                                  red_payload_type=63 if red else None)
        self.producer = Producer("alice", "camera" if simulcast else "microphone", track,
                                 PlainTransport(), self.clock)  # type: ignore[arg-type]
        for layer, ssrc in zip(self.producer.layers, (1000, 2000, 3000), strict=False):
            layer.ssrc = ssrc
        self.routed = RoutedTransport()
        self.plain = PlainTransport()
        payload_type = 96 if simulcast else 109
        self.consumers: list[Consumer] = []
        for transport in (self.routed, self.plain):
            slot = Slot(payload_type, None if twcc else 3, 64 if red else None)
            consumer = Consumer(self.producer, transport, slot,  # type: ignore[arg-type]
                                self.clock)
            if twcc:
                consumer.twcc = TwccSender(5)
            self.producer.consumers.append(consumer)
            self.consumers.append(consumer)

    def feed(self, packets: list[bytes], index: int = 0) -> None:
        """Forward ``packets``; both receivers got the same copies, the native ones in C."""
        native_piece = native.load()
        assert native_piece is not None
        native_piece.take_sent()
        for data in packets:
            self.clock.now += 0.01
            self.producer.forward(data, parse_header(data), self.producer.layers[index])
        expected, self.plain.rtp = self.plain.rtp, []
        assert self.routed.received(len(expected)) == expected
        self.routed.receiver.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.routed.receiver.recv(2048)
        self.routed.receiver.settimeout(2)
        self.same_state()

    def same_state(self) -> None:
        a, b = self.consumers
        for name in ("packets", "octets", "layer", "padding"):
            assert getattr(a, name) == getattr(b, name), name
        for name in a.rewriter.__slots__:
            if name != "_clock":
                assert getattr(a.rewriter, name) == getattr(b.rewriter, name), name
        if a.pictures is not None and b.pictures is not None:
            for name in a.pictures.__slots__:
                assert getattr(a.pictures, name) == getattr(b.pictures, name), name
        if a.twcc is not None and b.twcc is not None:
            for name in ("_sequence", "history"):
                assert getattr(a.twcc, name) == getattr(b.twcc, name), name

    def close(self) -> None:
        self.routed.close()


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for pair in made:
        pair.close()


class Layer:
    """One simulcast layer as a browser sends it (VP8, 15-bit picture id, TL0PICIDX)."""

    def __init__(self, ssrc: int, sequence: int, timestamp: int, picture_id: int) -> None:
        self.ssrc, self.sequence, self.timestamp = ssrc, sequence, timestamp
        self.picture_id, self.tl0 = picture_id, 0

    def frame(self, keyframe: bool, packets: int = 3) -> list[bytes]:
        out = []
        self.tl0 = (self.tl0 + 1) & 0xFF
        for n in range(packets):
            descriptor = bytes([0x80 | (0x10 if n == 0 else 0), 0xE0,
                                0x80 | (self.picture_id >> 8), self.picture_id & 0xFF,
                                self.tl0, 0x00])
            tag = (b"\x50\x02\x00\x9d\x01\x2a" + struct.pack("<HH", 640, 360)) if keyframe \
                else b"\x51\x02\x00" + bytes(7)
            body = tag if n == 0 else bytes(range(40))
            packet = RtpPacket(payload_type=97, sequence_number=self.sequence,
                               timestamp=self.timestamp, ssrc=self.ssrc,
                               marker=int(n == packets - 1))
            packet.payload = descriptor + body
            out.append(packet.serialize())
            self.sequence = (self.sequence + 1) & 0xFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.timestamp = (self.timestamp + 3000) & 0xFFFFFFFF
        return out


@pytest.mark.parametrize("twcc", [True, False], ids=["twcc", "abs-send-time"])
def test_simulcast_copies_through_switches_padding_and_late_packets_are_the_same_in_c(
    pairs: list[Pair], twcc: bool
) -> None:
    pair = Pair(simulcast=True, twcc=twcc)
    pairs.append(pair)
    high, low = Layer(3000, 65530, 4_294_960_000, 0x7FF0), Layer(1000, 100, 5000, 10)
    for consumer in pair.consumers:
        consumer.set_target(2)
    pair.feed(high.frame(keyframe=True), 2)
    for _ in range(3):
        pair.feed(high.frame(keyframe=False), 2)  # sequence and picture id wrap here
    for consumer in pair.consumers:
        consumer.set_target(0)
    pair.feed(low.frame(keyframe=False), 0)  # not yet: no keyframe on the new layer
    pair.feed(high.frame(keyframe=False), 2)
    pair.feed(low.frame(keyframe=True), 0)  # the switch, picture id rewritten from here on
    late = low.frame(keyframe=False)
    for consumer in pair.consumers:
        consumer.padding = 700
    pair.feed(late[:1], 0)
    pair.feed(late[2:], 0)  # the end of a frame, before its middle: padding follows
    pair.feed(late[1:2], 0)  # late, behind the padding
    for _ in range(3):
        pair.feed(low.frame(keyframe=False), 0)
    for consumer in pair.consumers:
        consumer.set_paused(True, "last-n")
    pair.feed(low.frame(keyframe=False), 0)
    pair.clock.now += 2
    for consumer in pair.consumers:
        consumer.set_paused(False, "last-n")
    pair.feed(low.frame(keyframe=True), 0)
    pair.feed(low.frame(keyframe=False), 0)
    assert pair.consumers[0].packets > 30


def test_c_sends_the_steady_copies_itself_and_counts_them(pairs: list[Pair]) -> None:
    pair = Pair(simulcast=True, twcc=True)
    pairs.append(pair)
    layer = Layer(1000, 1, 0, 1)
    for consumer in pair.consumers:
        consumer.set_target(0)
    pair.feed(layer.frame(keyframe=True), 0)  # the first packet of a run goes through Python
    native_piece = native.load()
    assert native_piece is not None
    assert native_piece.take_sent() == 2  # its other two packets went through C
    for data in layer.frame(keyframe=False, packets=4):
        pair.clock.now += 0.01
        assert pair.producer.forward(data, parse_header(data), pair.producer.layers[0]) == 2
    assert native_piece.take_sent() == 4  # the routed consumer's copies; the other's in Python
    assert len(pair.plain.rtp) == 4
    assert [parse_header(d).sequence for d in pair.routed.received(4)] == \
        [parse_header(d).sequence for d in pair.plain.rtp]


def test_the_numbers_c_reads_per_copy_are_fields_of_its_own_types_named_as_in_python() -> None:
    assert fields.in_c()
    for owner, c_type, python_type in (
            (SequenceRewriter, fields.SequenceFields, fields._SequenceFields),
            (PictureRewriter, fields.PictureFields, fields._PictureFields),
            (TwccSender, fields.TwccFields, fields._TwccFields),
            (Consumer, fields.ConsumerFields, fields._ConsumerFields),
            (Counters, fields.CountersFields, fields._CountersFields)):
        members = {name for name, value in vars(c_type).items()
                   if type(value).__name__ == "member_descriptor"}
        assert members == set(python_type.__slots__)
        assert owner.__bases__ == (c_type,)
        # a slot of the same name in the class would hide the field from C
        assert not members & set(owner.__slots__)
    # the socket's reader's: the connection's count, the socket's flag and the beat's due time
    # (a __dict__ cannot hide a field: a member is a data descriptor)
    for owner, c_type, python_type in (
            (ice._MuxProtocol, fields.ReceivedFields, fields._ReceivedFields),
            (ice._UdpSocket, fields.HoldingFields, fields._HoldingFields),
            (beat.Wakeups, fields.WakeupsFields, fields._WakeupsFields)):
        members = {name for name, value in vars(c_type).items()
                   if type(value).__name__ == "member_descriptor"}
        assert members == set(python_type.__slots__)
        assert c_type in owner.__bases__
    with pytest.raises(TypeError):
        SequenceRewriter(90000, Clock())._seq_offset = None  # type: ignore[assignment]
    rewriter = SequenceRewriter(90000, Clock())
    assert rewriter.rewrite(7, 100) == (7, 100) and rewriter._last_in_seq == 7


def _audio(sequence: int, level: int, payload_type: int = 111,
           payload: bytes = b"\xfc" + bytes(60)) -> bytes:
    packet = RtpPacket(payload_type=payload_type, sequence_number=sequence & 0xFFFF,
                       timestamp=(sequence * 960) & 0xFFFFFFFF, ssrc=7)
    packet.extensions.audio_level = (True, level)
    packet.payload = payload
    return bytes(packet.serialize())


def test_audio_copies_with_and_without_red_are_the_same_in_c(pairs: list[Pair]) -> None:
    pair = Pair(simulcast=False, twcc=False, red=True)
    pairs.append(pair)
    pair.feed([_audio(n, 30) for n in range(65500, 65536)])
    red = bytes([0x80 | 111, 0, 0x3C, 10]) + bytes(10) + bytes([111]) + b"\xfc" + bytes(30)
    pair.feed([_audio(n, 40, 63, red) for n in range(5)])  # RED: Python for both
    pair.feed([_audio(n, 127) for n in range(5, 30)])
    pair.consumers[0].slot.payload_type = pair.consumers[1].slot.payload_type = None
    pair.feed([_audio(n, 127) for n in range(30, 33)])  # not negotiated: nothing sent
    assert pair.consumers[0].packets == 36 + 5 + 25


class Twins:
    """Two identical producers with their consumers: one takes packets through ``receive`` in C
    (header, layer bookkeeping and fan-out), the other through ``Producer.forward`` after
    ``parse_header`` in Python."""

    def __init__(self, simulcast: bool, pairs: list[Pair]) -> None:
        self.c, self.python = Pair(simulcast=simulcast, twcc=True), Pair(simulcast, twcc=True)
        pairs.extend((self.c, self.python))
        receive = native.receive(SPEAKING_LEVEL)
        assert receive is not None
        self.receive = receive
        if simulcast:
            self.table = {layer.ssrc: layer for layer in self.c.producer.layers}
        else:
            self.table = {7: self.c.producer.layers[0]}  # the audio packets' SSRC

    def feed(self, packets: list[bytes]) -> None:
        for data in packets:
            self.c.clock.now += 0.01
            self.python.clock.now += 0.01
            header = parse_header(data)
            layer = next(x for x in self.python.producer.layers
                         if x.ssrc == header.ssrc or not self.python.producer.simulcast)
            sent = self.python.producer.forward(data, header, layer)
            assert self.receive(data, self.table, self.c.clock()) == sent
        copies = self.python.plain.rtp
        assert self.c.plain.rtp == copies
        assert self.c.routed.received(len(copies)) == self.python.routed.received(len(copies))
        self.c.plain.rtp, self.python.plain.rtp = [], []
        self.same_state()

    def same_state(self) -> None:
        a, b = self.c.producer, self.python.producer
        # not the descriptor: C sets it only for a copy made in Python, whose bytes (the
        # picture ids it rewrites from it) ``feed`` compares
        assert (a.level_packets, a.loudness) == (b.level_packets, b.loudness)
        for x, y in zip(a.layers, b.layers, strict=True):
            assert (x.octets, x.width, x.height) == (y.octets, y.width, y.height)
            for name in x.reception.__slots__:
                assert getattr(x.reception, name) == getattr(y.reception, name), name
            assert (x.cache._packets, x.cache._sequences) == \
                (y.cache._packets, y.cache._sequences)
        for x, y in zip(self.c.consumers, self.python.consumers, strict=True):
            assert (x.packets, x.octets, x.layer) == (y.packets, y.octets, y.layer)


def test_receiving_in_c_keeps_the_layers_books_and_sends_what_python_sends(
    pairs: list[Pair],
) -> None:
    twins = Twins(simulcast=True, pairs=pairs)
    high, low = Layer(3000, 65533, 0, 0x7FFE), Layer(1000, 7, 0, 3)
    for consumer in twins.c.consumers + twins.python.consumers:
        consumer.set_target(2)
    twins.feed(low.frame(keyframe=True) + high.frame(keyframe=False))  # not yet: no keyframe
    twins.feed(high.frame(keyframe=True))  # the switch, with the keyframe's size
    twins.feed(high.frame(keyframe=False) + low.frame(keyframe=False))  # sequence wraps
    late = high.frame(keyframe=False)
    twins.feed([late[0], late[2], late[1]])  # out of order: reception counts no new cycle
    for producer in (twins.c.producer, twins.python.producer):
        producer.set_paused(True)
    twins.feed(high.frame(keyframe=False))  # paused: books kept, nothing sent
    assert twins.c.producer.layers[2].width == 640
    assert twins.c.producer.layers[2].reception.extended_highest == 0x10000 + high.sequence - 1
    assert twins.c.consumers[0].packets == 9


def _levelled(sequence: int, level: int) -> bytes:
    """Opus with the audio level in a one-byte extension of id 1, as the tracks negotiate."""
    fixed = struct.pack("!BBHII", 0x90, 111, sequence, sequence * 960, 7)
    return fixed + b"\xbe\xde\x00\x01" + bytes([0x10, 0x80 | level, 0, 0]) + b"\xfc" + bytes(60)


def test_receiving_audio_in_c_scores_the_level_as_python_does(pairs: list[Pair]) -> None:
    twins = Twins(simulcast=False, pairs=pairs)
    twins.feed([_levelled(n, 20) for n in range(10)] + [_levelled(n, 90) for n in range(10, 15)])
    assert twins.c.producer.level_packets == 15
    assert twins.c.producer.loudness == 10 * (SPEAKING_LEVEL + 1 - 20)


def test_receiving_in_c_leaves_what_it_cannot_read_to_python_untouched(
    pairs: list[Pair],
) -> None:
    twins = Twins(simulcast=True, pairs=pairs)
    layer = Layer(1000, 1, 0, 1)
    packet = layer.frame(keyframe=True, packets=1)[0]
    unknown = bytearray(packet)
    unknown[8:12] = (99).to_bytes(4, "big")
    header = parse_header(packet)
    for data in (packet[:10],  # shorter than a header
                 bytes([0x40]) + packet[1:],  # version 1
                 bytes(unknown),  # an SSRC the table does not have
                 packet[:header.payload_offset]):  # no VP8 payload to read
        assert twins.receive(data, twins.table, 1.0) == -1
    books = twins.c.producer.layers[0]
    assert (books.octets, books.reception._received, books.cache.get(header.sequence)) == \
        (0, 0, None)
    assert twins.receive(packet, twins.table, 1.0) == 2  # a keyframe of layer 0: both start
    assert books.cache.get(header.sequence) == packet
