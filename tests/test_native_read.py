"""The shared UDP socket's native reader: SRTP from an address with a route goes to the fan-out
in C, everything else to Python, and a bad datagram drops only itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import aiohttp
import pytest
from pylibsrtp import Policy, Session

from support import Attendee, RunningServer, build_feedback, require_native_fanout
from townhall import beat
from townhall.sfu import fields, rtcp, twcc
from townhall.sfu import native as native_module
from townhall.sfu import producer as producer_module  # noqa: F401 (sets up ``receive``)
from townhall.sfu.allocation import VideoAllocation
from townhall.sfu.native import NativeSend
from townhall.sfu.router import Counters, Router
from townhall.sfu.simulcast import Layer


def _native() -> NativeSend:
    require_native_fanout()
    loaded = native_module.load()
    assert loaded is not None
    return loaded


def _sessions() -> tuple[Session, Session]:
    key = os.urandom(44)
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    return (Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)),
            Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)))


def _rtp(sequence: int, ssrc: int = 0x1234, size: int = 40) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, sequence, 960 * sequence, ssrc) + bytes(size)


class _Target:
    """Stands in for the ICE connection a route names."""

    def __init__(self) -> None:
        self.received = 0


class _FieldsTarget(fields.ReceivedFields):
    """The same with its count a C field, as the ICE connection's is (``ice._MuxProtocol``)."""

    def __init__(self) -> None:
        self.received = 0


class _Video:
    """Stands in for a transport's VideoAllocation: its transport-wide sequence numbers."""

    def __init__(self, sender: twcc.TwccSender | None) -> None:
        self.twcc = sender


class _Socket:
    """What the reader needs of the socket: the calls it makes, recorded."""

    def __init__(self, native: NativeSend, sock: socket.socket) -> None:
        self.native = native
        self.sock = sock
        self.routes: dict[bytes, tuple[Any, ...]] = {}
        self.by_address: dict[Any, Any] = {}
        self.delivered: list[tuple[bytes, Any]] = []
        self.failures: list[tuple[Any, BaseException | None]] = []
        self.held: list[Any] = []
        self.flushed = 0
        self._holding = False
        self.holding_seen: list[bool] = []
        self.plain: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.estimates: list[float] = []
        #: what estimated() says: False stands for an estimate that ignores reports for now
        self.estimates_taken = True
        self.fail_next_delivery = False
        self.fail_next_estimate = False
        self.interrupt_next_delivery = False

    def deliver(self, data: bytes, address: Any) -> None:
        self.holding_seen.append(self._holding)
        if self.fail_next_delivery:
            self.fail_next_delivery = False
            raise ValueError("this datagram breaks the handler")
        if self.interrupt_next_delivery:
            self.interrupt_next_delivery = False
            raise KeyboardInterrupt
        self.delivered.append((data, address))

    def estimated(self, bitrate: float) -> bool:
        self.estimates.append(bitrate)
        if self.fail_next_estimate:
            self.fail_next_estimate = False
            raise ValueError("this estimate breaks the handler")
        return self.estimates_taken

    def failed(self, address: Any, exc: BaseException | None) -> None:
        self.failures.append((address, exc))

    def flush(self) -> None:
        self.flushed += len(self.held)
        self.held.clear()

    def route(self, remote: socket.socket, rx: Session, target: _Target | _FieldsTarget,
              counters: Counters, video: Any = None,
              arrivals: twcc.TwccReceiver | None = None,
              clock: Callable[[], float] = lambda: 1.0,
              layers: dict[int, Layer] | None = None,
              feedback: native_module.FeedbackSender | None = None) -> None:
        address = remote.getsockname()
        key = self.native.sockaddr(address)
        assert key is not None
        receiver = object()  # the connection's media receiver, which the reader does not read
        self.by_address[address] = target
        self.routes[key] = (address, target, receiver, NativeSend.session(rx),
                            layers if layers is not None else {}, counters,
                            clock, self.plain.append, self.rtcp.append,
                            video if video is not None else _Video(None),
                            self.estimated,
                            (arrivals if arrivals is not None else twcc.TwccReceiver()).arrivals,
                            feedback)

    def read(self, wakeups: object = None) -> int:
        native = self.native
        return native.read(self.sock.fileno(), native.unprotect, native.unprotect_rtcp,
                           self.routes, self.by_address, self.deliver, self.failed, self.held,
                           self.flush, None, self, wakeups)


class _FieldsSocket(_Socket, fields.HoldingFields):
    """The same with ``_holding`` a C field, as the UDP socket's is (``ice._UdpSocket``)."""


@contextlib.contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The server's socket (non-blocking) and a remote one, UDP on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as remote:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        remote.bind(("127.0.0.1", 0))
        yield server, remote


def _send(remote: socket.socket, server: socket.socket, *datagrams: bytes) -> None:
    for datagram in datagrams:
        remote.sendto(datagram, server.getsockname())


def _read_all(reader: _Socket, expected: int) -> None:
    read = 0
    for _ in range(100):
        read += reader.read()
        if read >= expected:
            return
    raise AssertionError(f"read {read} datagrams of {expected}")


@pytest.mark.parametrize("in_fields", [True, False], ids=["c-fields", "attributes"])
def test_datagrams_from_an_address_without_a_route_go_to_python_with_their_address(
        in_fields: bool) -> None:
    native = _native()
    with _pair() as (server, remote):
        reader = (_FieldsSocket if in_fields else _Socket)(native, server)
        stun = b"\x00\x01\x00\x00" + bytes(16)
        rtcp = b"\x80\xc8\x00\x06" + bytes(24)
        _send(remote, server, stun, _rtp(1), rtcp)
        _read_all(reader, 3)
        assert reader.delivered == [(stun, remote.getsockname()), (_rtp(1), remote.getsockname()),
                                    (rtcp, remote.getsockname())]
        assert reader.holding_seen == [True, True, True]
        assert reader._holding is False


@pytest.mark.parametrize("in_fields", [True, False], ids=["c-fields", "attributes"])
def test_srtp_and_srtcp_from_a_routed_address_are_unprotected_for_the_router(
        in_fields: bool) -> None:
    native = _native()
    tx, rx = _sessions()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        target, counters = _FieldsTarget() if in_fields else _Target(), Counters()
        reader.route(remote, rx, target, counters)
        report = b"\x80\xc9\x00\x01" + struct.pack("!I", 0x1234)
        stun = b"\x00\x01\x00\x00" + bytes(16)
        _send(remote, server, tx.protect(_rtp(1)), tx.protect_rtcp(report), tx.protect(_rtp(2)),
              stun)
        _read_all(reader, 4)
        # an SSRC the (empty) layer table does not know: the router's Python path gets it
        assert reader.plain == [_rtp(1), _rtp(2)]
        assert reader.rtcp == [report]
        assert reader.delivered == [(stun, remote.getsockname())], "STUN: still Python's"
        assert target.received == 3
        assert counters.packets_received == 0, "what Python handles, Python counts"


def _numbered(sender: twcc.TwccSender, packets: int) -> list[int | None]:
    """Number ``packets`` sent by ``sender`` (ten a frame, frames 33 ms apart) and return when
    each arrived, 20 ms later (µs)."""
    arrivals: list[int | None] = []
    for index in range(packets):
        sent = 1.0 + (index // 10) * 0.033 + (index % 10) * 0.0005
        sender.block(1000, sent)
        arrivals.append(int((sent + 0.02) * 1e6))
    return arrivals


def test_transport_feedback_alone_is_read_in_c_and_only_the_estimate_goes_to_python() -> None:
    native = _native()
    tx, rx = _sessions()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        sender = twcc.TwccSender(5)
        twin = twcc.TwccSender(5)  # the same feedback, read by TwccSender.feedback
        reader.route(remote, rx, _Target(), Counters(), _Video(sender))
        arrivals = _numbered(sender, 90)
        _numbered(twin, 90)
        feedback = build_feedback(0, arrivals, 0)
        receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 1)
        _send(remote, server, tx.protect_rtcp(feedback),
              tx.protect_rtcp(receiver_report + feedback))
        _read_all(reader, 2)
        expected = twin.feedback(feedback)
        assert expected is not None
        assert [int(e) for e in reader.estimates] == [expected]
        # in a compound packet it is Python's (Router.rtcp_received finds it there)
        assert reader.rtcp == [receiver_report + feedback]


def _twins(count: int) -> tuple[twcc.TwccSender, twcc.TwccSender, list[int | None]]:
    """Two senders that numbered the same ``count`` packets (one for the reader, one to read
    the same feedback in Python) and the packets' arrivals."""
    sender, twin = twcc.TwccSender(5), twcc.TwccSender(5)
    arrivals = _numbered(sender, count)
    _numbered(twin, count)
    return sender, twin, arrivals


def test_an_estimate_goes_to_python_when_it_falls_rises_a_twentieth_or_a_second_passed() -> None:
    native = _native()
    tx, rx = _sessions()
    sender, twin, arrivals = _twins(3060)
    for index in range(1800, 3060):  # from the 60th feedback, a queue builds for two seconds
        delay = min(index - 1800, 600) * 200
        arrivals[index] = cast(int, arrivals[index]) + delay
    now = [10.0]
    estimates: list[int | None] = []  # what the reader's estimate gives, feedback by feedback
    handed_at: list[int] = []  # which feedback's estimate went to Python
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), _Video(sender), clock=lambda: now[0])
        for k in range(100):  # eight a second
            # from the 96th, Python does not take them (it ignores reports after a retry)
            reader.estimates_taken = k < 95
            feedback = build_feedback(30 * k, arrivals[30 * k:30 * k + 30], k)
            estimates.append(twin.feedback(feedback))
            before = len(reader.estimates)
            _send(remote, server, tx.protect_rtcp(feedback))
            _read_all(reader, 1)
            handed_at += [k] * (len(reader.estimates) - before)
            now[0] += 0.125
        handed = [int(e) for e in reader.estimates]
        # feedback Python reads (in a compound packet) gives Python the estimate itself: the
        # reader's next is news, though a small rise on it and soon after
        reader.estimates_taken = True
        now[0] = 10.0 + (handed_at[-1] + 1) * 0.125  # soon after the reader last handed one
        in_python = cast(int, sender.feedback(build_feedback(3000, arrivals[3000:3030], 100)))
        _send(remote, server, tx.protect_rtcp(build_feedback(3030, arrivals[3030:3060], 101)))
        _read_all(reader, 1)
        assert len(reader.estimates) == len(handed_at) + 1
        assert in_python <= int(reader.estimates[-1]) < in_python * 1.05
    assert handed == [estimates[k] for k in handed_at]
    # the estimate rose in small steps, held, fell by nearly half as the queue built, then
    # held and rose again
    falls = [k for k in range(1, 100) if (estimates[k] or 0) < (estimates[k - 1] or 0)]
    assert falls and estimates[falls[0]] < 0.6 * cast(int, estimates[falls[0] - 1]), estimates
    last, last_at = 0, -1  # the estimate Python has, and the feedback it came with
    small_rises_held = 0
    for k, estimate in enumerate(estimates):
        if estimate is None:
            assert k not in handed_at
            continue
        if k in handed_at:
            last, last_at = estimate, k
            continue
        # not handed: the same as what Python has or a rise of under a twentieth on it, and
        # Python had that for under a second (eight feedbacks)
        assert last <= estimate < last * 1.05 and k - last_at < 8, (k, estimates, handed_at)
        small_rises_held += estimate > last
    assert set(falls) <= set(handed_at)  # every fall went to Python at once
    assert small_rises_held > 20  # not every step of a rise went
    # while the estimate held after the fall, Python heard it again once in the next nine
    # feedbacks (after a second), not eight times a second
    held = range(falls[0] + 1, falls[0] + 10)
    assert {estimates[k] for k in held} == {estimates[falls[0]]}
    assert [k for k in handed_at if k in held] == [falls[0] + 8]
    # once Python did not take one, each after it went too, though the same and soon after
    refused = min(k for k in handed_at if k >= 95)
    assert refused < 99 and set(range(refused, 100)) <= set(handed_at)


def test_an_estimate_whose_handling_failed_is_handed_again_with_the_next_feedback() -> None:
    native = _native()
    tx, rx = _sessions()
    sender, twin, arrivals = _twins(3000)
    feedbacks = [build_feedback(30 * k, arrivals[30 * k:30 * k + 30], k) for k in range(100)]
    estimates = [twin.feedback(feedback) for feedback in feedbacks]
    # the first feedback that gives an estimate (so it is handed), and the next one's a small
    # rise on it, which would not be handed soon after one Python took
    fails = next(k for k in range(99) if estimates[k] is not None)
    assert estimates[fails] < cast(int, estimates[fails + 1]) < cast(int, estimates[fails]) * 1.05
    now = [10.0]
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), _Video(sender), clock=lambda: now[0])
        for k in range(fails + 2):
            reader.fail_next_estimate = k == fails
            before = len(reader.estimates)
            _send(remote, server, tx.protect_rtcp(feedbacks[k]))
            _read_all(reader, 1)
            now[0] += 0.01  # far sooner than the second an unchanged one waits
            if k == fails:
                assert len(reader.estimates) == before + 1
                assert len(reader.failures) == 1  # reported as the datagram's failure
        # a small rise, soon after: handed all the same, as the last was not taken
        assert len(reader.estimates) == before + 1
        assert int(reader.estimates[-1]) == estimates[fails + 1]


def test_feedback_the_reader_cannot_take_goes_to_python_as_it_came() -> None:
    native = _native()
    tx, rx = _sessions()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), _Video(None))
        early = build_feedback(0, [1_000_000, 1_000_500], 0)
        _send(remote, server, tx.protect_rtcp(early))  # nothing numbered yet
        _read_all(reader, 1)
        python = twcc.TwccSender(5, native=False)  # the estimate runs in Python
        reader.route(remote, rx, _Target(), Counters(), _Video(python))
        in_python = build_feedback(0, _numbered(python, 20), 1)
        _send(remote, server, tx.protect_rtcp(in_python))
        _read_all(reader, 1)
        sender = twcc.TwccSender(5)
        reader.route(remote, rx, _Target(), Counters(), _Video(sender))
        malformed = build_feedback(0, _numbered(sender, 20), 2)
        malformed = malformed[:2] + struct.pack("!H", 4) + malformed[4:20]  # ends in its chunks
        _send(remote, server, tx.protect_rtcp(malformed))
        _read_all(reader, 1)
        assert reader.rtcp == [early, in_python, malformed]
        assert reader.estimates == [] and reader.failures == []


def test_a_remb_alone_is_ignored_in_c_once_transport_feedback_is_used_as_python_ignores_it(
) -> None:
    native = _native()
    tx, rx = _sessions()
    remb = rtcp.remb(7, 2_500_000, [11])
    too_many = remb[:16] + bytes([2]) + remb[17:]  # counts two SSRCs and holds one
    padded = bytes([remb[0] | 0x20]) + remb[1:3] + bytes([remb[3] + 1]) + remb[4:] \
        + bytes([0, 0, 0, 4])
    with pytest.raises(ValueError):
        rtcp.parse(too_many)  # Python refuses it, and counts it
    assert [item.bitrate for item in rtcp.parse(padded)] == [2_500_000]
    allocation = VideoAllocation("t", lambda: 1.0)
    allocation.twcc = twcc.TwccSender(5)
    estimate = allocation.estimate.value()
    assert not allocation.remb(100_000) and allocation.estimate.value() == estimate
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), _Video(twcc.TwccSender(5)))
        _send(remote, server, *[tx.protect_rtcp(p) for p in (remb, too_many, padded)])
        _read_all(reader, 3)
        assert reader.rtcp == [too_many, padded]  # left to Python: one it refuses, a padded one
        reader.rtcp.clear()
        reader.route(remote, rx, _Target(), Counters(), _Video(None))  # REMB is its estimate
        _send(remote, server, tx.protect_rtcp(remb))
        _read_all(reader, 1)
        assert reader.rtcp == [remb]
    assert reader.failures == [] and reader.estimates == []


def _layers(*ssrcs: int) -> dict[int, Layer]:
    return {ssrc: Layer(Any, 0, None, ssrc, True) for ssrc in ssrcs}


def _sender_report(ssrc: int, ntp: int, sent: int = 0, blocks: int = 0) -> bytes:
    report = struct.pack("!BBHIQIII", 0x80 | blocks, 200, 6 + 6 * blocks, ssrc, ntp,
                         90 * sent, 100 + sent, 1000 + sent)
    return report + bytes(24 * blocks)


def _description(*ssrcs: int) -> bytes:
    """A source description (SDES) with each source's CNAME, as senders send it."""
    chunks = b"".join(struct.pack("!IBB", ssrc, 1, 6) + b"camera" + bytes(4) for ssrc in ssrcs)
    return struct.pack("!BBHI", 0x80 | len(ssrcs), 202, len(chunks) // 4, 0)[:4] + chunks


def test_a_publishers_sender_reports_are_noted_on_its_layers_in_c_as_python_notes_them() -> None:
    native = _native()
    tx, rx = _sessions()
    in_c, in_python = _layers(11, 12, 13), _layers(11, 12, 13)
    packets = [_sender_report(11, 0x1122334455667788, 1) + _description(11),
               _sender_report(12, 0x99AABBCCDDEEFF00, 2) + _sender_report(13, 5 << 32, 3)
               + _description(12, 13),
               _sender_report(11, 0xFFFFFFFFFFFFFFFF, 4) + _description(11)]  # a later one
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), clock=lambda: 7.5, layers=in_c)
        _send(remote, server, *[tx.protect_rtcp(p) for p in packets])
        _read_all(reader, 3)
    assert reader.rtcp == []  # not one of them went to Python
    for packet in packets:
        for item in rtcp.parse(packet):
            if item.kind == "sender-report":
                in_python[item.media_ssrc].sender_reported(item.ntp_timestamp,
                                                           item.rtp_timestamp, 7.5)
    for ssrc, layer in in_c.items():
        twin = in_python[ssrc]
        assert layer.sender_report is not None and layer.sender_report == twin.sender_report
        assert (layer.reception.last_sr, layer.reception.last_sr_at) == \
            (twin.reception.last_sr, twin.reception.last_sr_at)


def test_rtcp_from_a_publisher_the_reader_cannot_note_whole_goes_to_python_as_it_came() -> None:
    native = _native()
    tx, rx = _sessions()
    layers = _layers(11)
    report = _sender_report(11, 1 << 40)
    padded = bytes([report[0] | 0x20]) + report[1:3] + bytes([report[3] + 1]) + report[4:] \
        + bytes([0, 0, 0, 4])
    packets = [
        _sender_report(99, 1 << 40) + _description(99),  # a stream it does not know
        _sender_report(11, 1 << 40, blocks=1),  # what the publisher receives: Python's
        report + struct.pack("!BBHI", 0x80, 201, 1, 11),  # with a receiver report
        report + rtcp.pli(11, 11),  # with a keyframe request
        padded,
        report[:-4],  # cut short
    ]
    with pytest.raises(ValueError):
        rtcp.parse(report[:-4])  # Python refuses it whole, and counts it
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), layers=layers)
        _send(remote, server, *[tx.protect_rtcp(p) for p in packets])
        _read_all(reader, len(packets))
    assert reader.rtcp == packets
    assert layers[11].sender_report is None and layers[11].reception.last_sr == 0


def test_the_reader_notes_when_a_publishers_numbered_packets_arrived_as_python_does() -> None:
    native = _native()
    tx, rx = _sessions()
    in_c, in_python = twcc.TwccReceiver(), twcc.TwccReceiver()
    in_c.extension_id = in_python.extension_id = 3
    packets = [struct.pack("!BBHII", 0x90, 96, n, 960 * n, 0x1234)
               + struct.pack("!HHBHB", 0xBEDE, 1, 0x31, 500 + n, 0) + bytes(40)
               for n in (1, 2, 4)]
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), arrivals=in_c)
        _send(remote, server, *[tx.protect(p) for p in packets])
        _read_all(reader, 3)
    assert reader.plain == packets  # no layer has the SSRC: left to Python, after the note
    for packet in packets:
        in_python.record(packet, 1.0)  # the route's clock says 1.0
    assert in_c.arrivals == in_python.arrivals
    [feedback] = in_c.feedback(1.05, 1, 2)
    parsed = twcc.parse_feedback(feedback)
    assert parsed.base_sequence == 501
    assert [a is not None for _, a in parsed.packets] == [True, True, False, True]


def _numbered_packet(sequence: int) -> bytes:
    return struct.pack("!BBHII", 0x90, 96, sequence, 960 * sequence, 0x1234) + \
        struct.pack("!HHBHB", 0xBEDE, 1, 0x31, sequence, 0) + bytes(40)


def _feedback_to(remote: socket.socket, rx: Session) -> list[twcc.Feedback]:
    """The transport feedback the remote has received so far, unprotected and read."""
    received = []
    remote.settimeout(0.2)
    with contextlib.suppress(TimeoutError):
        while True:
            received.append(twcc.parse_feedback(rx.unprotect_rtcp(remote.recv(2048))))
    return received


def test_the_reader_sends_a_publisher_its_feedback_itself_at_most_every_interval() -> None:
    native = _native()
    tx, rx = _sessions()  # the publisher's packets
    feedback_tx, feedback_rx = _sessions()  # the feedback the server protects, as it is read
    arrivals = twcc.TwccReceiver()
    arrivals.extension_id = 3
    now = [10.0]
    sent_before = native.read_counts()[2]
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), arrivals=arrivals,
                     clock=lambda: now[0], feedback=NativeSend.feedback_sender(feedback_tx))
        _send(remote, server, tx.protect(_numbered_packet(1)))
        _read_all(reader, 1)
        assert _feedback_to(remote, feedback_rx) == [], "not before the tick notes the SSRCs"
        assert arrivals.feedback(now[0], 11, 22) == [], "the reader sends it, not the tick"

        _send(remote, server, tx.protect(_numbered_packet(2)))
        _read_all(reader, 1)
        [first] = _feedback_to(remote, feedback_rx)
        assert (first.base_sequence, first.count) == (1, 2)
        assert all(arrival is not None for _, arrival in first.packets)

        now[0] += twcc.FEEDBACK_INTERVAL / 2  # too soon for the next one
        _send(remote, server, tx.protect(_numbered_packet(3)))
        _read_all(reader, 1)
        assert _feedback_to(remote, feedback_rx) == []

        now[0] += twcc.FEEDBACK_INTERVAL / 2
        _send(remote, server, tx.protect(_numbered_packet(5)))  # 4 is lost
        _read_all(reader, 1)
        [second] = _feedback_to(remote, feedback_rx)
        assert (second.base_sequence, second.count) == (3, 3)
        assert [arrival is not None for _, arrival in second.packets] == [True, False, True]
        assert arrivals.feedback(now[0] + 1, 11, 22) == []
    assert native.read_counts()[2] == sent_before + 2
    assert arrivals.count == 2


def test_feedback_goes_back_to_the_tick_when_python_records_the_arrivals() -> None:
    native = _native()
    tx, rx = _sessions()
    feedback_tx, feedback_rx = _sessions()
    arrivals = twcc.TwccReceiver()
    arrivals.extension_id = 3
    arrivals.feedback(1.0, 11, 22)
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), arrivals=arrivals,
                     feedback=NativeSend.feedback_sender(feedback_tx))
        _send(remote, server, tx.protect(_numbered_packet(1)))
        _read_all(reader, 1)
        assert len(_feedback_to(remote, feedback_rx)) == 1 and arrivals.by_reader
    # the transport moved to a path the reader does not read (ICE over TCP): Python records
    arrivals.record(_numbered_packet(2), 1.5)
    assert not arrivals.by_reader
    [packet] = arrivals.feedback(1.6, 11, 22)
    assert twcc.parse_feedback(packet).base_sequence == 2


def test_an_arrival_is_when_the_kernel_received_the_packet_not_when_the_loop_got_to_it() -> None:
    native = _native()
    tx, rx = _sessions()
    arrivals = twcc.TwccReceiver()
    arrivals.extension_id = 3
    packets = [struct.pack("!BBHII", 0x90, 96, n, 960 * n, 0x1234)
               + struct.pack("!HHBHB", 0xBEDE, 1, 0x31, n, 0) + bytes(40) for n in (1, 2)]
    with _pair() as (server, remote):
        server.setsockopt(socket.SOL_SOCKET, native.so_timestampns, 1)  # as the server's
        time.sleep(0.1)  # where no socket had it on, the kernel turns it on in deferred work
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters(), arrivals=arrivals, clock=time.monotonic)
        sent = time.monotonic()
        _send(remote, server, *[tx.protect(p) for p in packets])
        time.sleep(0.3)  # the event loop held up
        _read_all(reader, 2)
        read = time.monotonic()
    assert read - sent >= 0.3
    for n in (1, 2):
        _, at_us = struct.unpack_from("=iq", arrivals.arrivals,
                                      twcc._ARRIVALS_HEADER.size + 12 * n)
        assert sent - 0.01 <= at_us / 1e6 <= sent + 0.1, (at_us / 1e6 - sent, read - sent)


class _Wakeups:
    """Stands in for ``beat.Wakeups``: when the next beat is due, and the rides."""

    def __init__(self, due: float) -> None:
        self.due = due
        self.rides = 0

    def ride(self) -> None:
        self.rides += 1
        self.due = float("inf")  # as beat.Wakeups: nobody sleeps until a later beat


class _FieldsWakeups(_Wakeups, fields.WakeupsFields):
    """The same with ``due`` a C field, as ``beat.Wakeups`` has it."""


@pytest.mark.parametrize("in_fields", [True, False], ids=["c-fields", "attributes"])
def test_a_read_after_a_beat_was_due_rides_it_and_one_before_does_not(in_fields: bool) -> None:
    native = _native()
    wakeups = _FieldsWakeups if in_fields else _Wakeups
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        early = wakeups(time.monotonic() + 60)
        _send(remote, server, _rtp(1))
        _read_all(reader, 1)
        reader.read(early)
        assert early.rides == 0
        late = wakeups(time.monotonic() - 0.001)
        _send(remote, server, _rtp(2))
        for _ in range(100):
            if reader.read(late):
                break
        assert late.rides == 1
        assert reader.failures == []


async def test_periodic_work_runs_in_the_wake_up_of_a_datagram_read_after_its_beat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    native = _native()
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    loop = asyncio.get_running_loop()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        wakeups = beat.Wakeups(loop)
        wakeups.readers = 1
        loop.add_reader(server.fileno(), reader.read, wakeups)
        try:
            due = loop.time() + 0.05
            sleeper = wakeups.until(due)
            await asyncio.sleep(0.1)
            assert not sleeper.done()  # its timer waits the slack
            _send(remote, server, _rtp(1))
            await asyncio.wait_for(sleeper, 2.0)
            assert [data for data, _ in reader.delivered] == [_rtp(1)]
        finally:
            loop.remove_reader(server.fileno())


async def test_a_packet_the_reader_leaves_to_the_router_has_its_arrival_noted_once() -> None:
    native = _native()
    tx, rx = _sessions()
    router = Router("noted once")
    transport = router.create_transport("publisher")
    arrivals = router._transports[transport].arrivals
    arrivals.extension_id = 3
    to_router = router.native_receive(transport)
    assert to_router is not None
    packets = [struct.pack("!BBHII", 0x90, 96, n, 960 * n, 0x1234)
               + struct.pack("!HHBHB", 0xBEDE, 1, 0x31, n, 0) + bytes(40) for n in (1, 2, 3)]
    try:
        with _pair() as (server, remote):
            reader = _Socket(native, server)
            reader.route(remote, rx, _Target(), Counters())
            key, route = next(iter(reader.routes.items()))
            reader.routes[key] = (*route[:4], *to_router, None)  # the router's own handlers
            _send(remote, server, *[tx.protect(p) for p in packets])
            _read_all(reader, 3)
        # no layer has the SSRC: each packet went on to Router.rtp_received after the note
        assert router.counters.packets_received == 3
        header = twcc._ARRIVALS_HEADER.unpack_from(arrivals.arrivals)
        assert header[1:3] == (1, 3)
        assert header[4] == 3, "noted twice"
    finally:
        await router.close()


def test_datagrams_libsrtp_refuses_are_dropped_and_counted_and_the_next_ones_arrive() -> None:
    native = _native()
    tx, rx = _sessions()
    refused = native.read_counts()[1]
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.route(remote, rx, _Target(), Counters())
        report = b"\x80\xc9\x00\x01" + struct.pack("!I", 0x1234)
        _send(remote, server, _rtp(1) + bytes(16), report + bytes(20), tx.protect(_rtp(2)),
              tx.protect_rtcp(report))
        _read_all(reader, 4)
        assert reader.plain == [_rtp(2)] and reader.rtcp == [report]
        assert reader.delivered == [] and reader.failures == []
    assert native.read_counts()[1] == refused + 2


def test_a_route_whose_connection_has_moved_on_or_that_was_dropped_leaves_it_to_python() -> None:
    native = _native()
    tx, rx = _sessions()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        target = _Target()
        reader.route(remote, rx, target, Counters())
        address = remote.getsockname()
        key = native.sockaddr(address)
        assert key is not None
        packets = [tx.protect(_rtp(n)) for n in range(5)]

        def arrives(n: int) -> None:
            _send(remote, server, packets[n])
            _read_all(reader, 1)

        arrives(0)  # the router's
        reader.by_address[address] = _Target()  # another connection took the address
        arrives(1)
        reader.by_address[address] = target
        arrives(2)
        route = reader.routes.pop(key)  # the transport closed its media path
        arrives(3)
        reader.routes[key] = (*route[:7], reader.rtcp.append, *route[8:])  # another handler
        arrives(4)
        assert reader.plain == [_rtp(0), _rtp(2)]
        assert reader.delivered == [(packets[1], address), (packets[3], address)]
        assert reader.rtcp == [_rtp(4)]


def test_an_exception_handling_one_datagram_drops_only_that_one_and_queued_copies_go() -> None:
    native = _native()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.fail_next_delivery = True
        reader.held.append(("a copy Python queued",))
        _send(remote, server, b"\x00\x01first", b"\x00\x01second")
        _read_all(reader, 2)
        assert [data for data, _ in reader.delivered] == [b"\x00\x01second"]
        assert len(reader.failures) == 1
        address, exc = reader.failures[0]
        assert address == remote.getsockname() and isinstance(exc, ValueError)
        assert reader.flushed == 1 and reader.held == []


def test_an_interrupt_while_handling_a_datagram_is_raised_once_the_batch_is_handled() -> None:
    native = _native()
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        reader.interrupt_next_delivery = True
        _send(remote, server, b"\x00\x01first", b"\x00\x01second")
        time.sleep(0.05)  # both queued: one batch
        with pytest.raises(KeyboardInterrupt):
            reader.read()
        assert [data for data, _ in reader.delivered] == [b"\x00\x01second"]
        assert reader.failures == []  # not reported as the datagram's failure
        assert reader.read() == 0  # and raised once


def test_a_datagram_longer_than_the_read_buffer_is_dropped_and_counted() -> None:
    native = _native()
    truncated = native.read_counts()[0]
    with _pair() as (server, remote):
        reader = _Socket(native, server)
        _send(remote, server, b"\x17" + bytes(5000), b"\x17short")
        _read_all(reader, 2)
        assert reader.delivered == [(b"\x17short", remote.getsockname())]
    assert native.read_counts()[0] == truncated + 1


async def test_in_a_meeting_the_router_python_sees_few_of_the_rtp_packets_it_forwards(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_native_fanout()
    seen = 0
    python_path = Router.rtp_received

    def counted(self: Router, transport: Any, data: bytes) -> None:
        nonlocal seen
        seen += 1
        python_path(self, transport, data)

    monkeypatch.setattr(Router, "rtp_received", counted)
    room = await server.create_room("reader")
    sender = Attendee(server.ws_url, server.token(room, "speaker"), "sender")
    receiver = Attendee(server.ws_url, server.token(room, "listener"), "receiver")
    await sender.join()
    await receiver.join()
    try:
        await sender.publish()
        await receiver.wait_frames((sender.id, "camera"), 60)
        await receiver.wait_frames((sender.id, "microphone"), 50)
        async with aiohttp.ClientSession() as http, \
                http.get(f"{server.base_url}/metrics") as response:
            text = await response.text()
        values = {line.split()[0]: float(line.split()[1])
                  for line in text.splitlines() if not line.startswith("#")}
        forwarded = values["townhall_packets_forwarded_total"]
        assert forwarded >= 100
        # before the route: the first packets, until the transport is linked
        assert seen < forwarded / 4, f"Python saw {seen} of {forwarded} packets"
    finally:
        await sender.close()
        await receiver.close()
        await asyncio.sleep(0)
