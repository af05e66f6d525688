"""The round trip to a receiver, from its reports on the sender reports sent to it."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest

from support import Clock
from townhall.sfu import round_trip, rtcp
from townhall.sfu.consumer import RESEND_INTERVAL
from townhall.sfu.round_trip import RoundTrip
from townhall.sfu.router import Router
from townhall.sfu.rtcp import last_sr

NTP = 0x1234_5678_9ABC_DEF0


def test_a_report_on_a_sender_report_gives_the_time_since_it_was_sent_less_the_hold() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=10.0)
    # the receiver held the report 0.25 s (16,384 / 65,536) before reporting on it
    assert trip.reported(last_sr(NTP), 16_384, now=10.33) == pytest.approx(0.08)
    assert trip.rtt == pytest.approx(0.08)
    assert last_sr(NTP) == 0x5678_9ABC  # the middle 32 bits


def test_reports_on_no_or_an_unknown_sender_report_or_out_of_range_give_no_round_trip() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=10.0)
    assert trip.reported(0, 0, now=10.1) is None  # no sender report received yet
    assert trip.reported(last_sr(NTP) + 1, 0, now=10.1) is None  # not one the SFU sent
    assert trip.reported(last_sr(NTP), 65_536, now=10.5) is None  # held longer than it took
    assert trip.reported(last_sr(NTP), 0, now=20.0) is None  # a mismatch, not a round trip
    assert trip.rtt is None
    assert trip.resend_interval() == RESEND_INTERVAL  # until one is measured


def test_the_round_trip_is_smoothed_and_a_resend_waits_one_within_bounds() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=0.0)
    trip.reported(last_sr(NTP), 0, now=0.4)
    assert trip.resend_interval() == pytest.approx(0.4)
    trip.sent(NTP + (1 << 16), now=1.4)
    trip.reported(last_sr(NTP) + 1, 0, now=1.48)  # a window after the first sample
    assert trip.rtt == pytest.approx(0.4)  # taken in once its window is over
    trip.sent(NTP + (2 << 16), now=2.4)
    trip.reported(last_sr(NTP) + 2, 0, now=2.5)
    assert trip.rtt == pytest.approx(0.4 + round_trip.SMOOTHING * (0.08 - 0.4))
    loopback = RoundTrip()
    loopback.sent(NTP, now=0.0)
    loopback.reported(last_sr(NTP), 0, now=0.0002)
    assert loopback.resend_interval() == RESEND_INTERVAL  # never sooner than before
    slow = RoundTrip()
    slow.sent(NTP, now=0.0)
    slow.reported(last_sr(NTP), 0, now=3.0)
    assert slow.resend_interval() == round_trip.RESEND_LONGEST


def test_a_report_answers_the_latest_copy_of_a_sender_report_it_could_have_had() -> None:
    trip = RoundTrip()
    for second in range(3):  # the producer's timestamp, sent again each second
        trip.sent(NTP, now=10.0 + second)
    # reported 0.05 s after the copy of 11.0 reached it, before the copy of 12.0 could have
    assert trip.reported(last_sr(NTP), 3_277, now=12.01) == pytest.approx(0.96, abs=1e-3)
    # and once the last copy came
    assert trip.reported(last_sr(NTP), 3_277, now=12.09) == pytest.approx(0.04, abs=1e-3)


def test_sender_reports_sent_long_ago_are_forgotten() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=0.0)
    for n in range(1, 40):  # a meeting's consumers: many timestamps a second, for seconds
        trip.sent(NTP + (n << 16), now=n * 0.3)
    # the last went at 11.7 s: those of 10 s before it are forgotten
    assert trip.reported(last_sr(NTP), 0, now=11.8) is None
    assert trip.reported(last_sr(NTP) + 5, 0, now=11.8) is None  # sent at 1.5 s
    assert trip.reported(last_sr(NTP) + 30, 0, now=11.8) == pytest.approx(2.8)
    assert trip.reported(last_sr(NTP) + 39, 0, now=11.8) == pytest.approx(0.1)


def test_reports_read_late_together_do_not_lengthen_the_round_trip() -> None:
    trip = RoundTrip()

    def report(ntp: int, sent: float, stream: int, read: float | None = None) -> None:
        """The receiver reports on its stream ``stream`` 0.02 s after the one before, 0.05 s
        after it got the sender report of ``sent``; the SFU reads it at ``read``."""
        hold = 0.02 * stream
        arrived = sent + 0.05 + hold
        trip.reported(last_sr(ntp), round(hold * 65536), now=arrived if read is None else read)

    # a receiver of 38 streams reports on each of them once a second, 0.05 s away
    for second in range(5):
        ntp = NTP + (second << 32)
        trip.sent(ntp, now=float(second))
        for stream in range(38):
            report(ntp, second, stream)
    assert trip.rtt == pytest.approx(0.05, abs=1e-4)
    # then the event loop is held 0.35 s: the reports that came meanwhile are read together
    ntp = NTP + (5 << 32)
    trip.sent(ntp, now=5.0)
    for stream in range(15):
        report(ntp, 5.0, stream, read=5.35)
    for stream in range(15, 38):
        report(ntp, 5.0, stream)
    trip.sent(ntp + (1 << 32), now=6.0)
    report(ntp + (1 << 32), 6.0, 0)  # the next window: the one of the hold is taken in
    assert trip.rtt == pytest.approx(0.05, abs=1e-4)
    assert trip.resend_interval() == RESEND_INTERVAL


def test_the_first_round_trip_is_the_shortest_of_the_first_second() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=0.0)
    trip.reported(last_sr(NTP), 0, now=0.3)  # read after a hold
    assert trip.rtt == pytest.approx(0.3)
    trip.reported(last_sr(NTP), 0, now=0.06)
    assert trip.rtt == pytest.approx(0.06)


def test_a_report_a_unit_over_the_time_since_the_sender_report_counts_as_no_time() -> None:
    trip = RoundTrip()
    trip.sent(NTP, now=10.0)
    trip.sent(NTP, now=11.0)  # the producer's timestamp again
    # held 5 ms by the receiver's account, 1/65536 s more than the time since the last copy
    assert trip.reported(last_sr(NTP), 328, now=11.0 + 327 / 65536) == 0.0


async def test_the_router_times_its_sender_reports_and_paces_resends_by_the_reports_on_them(
) -> None:
    clock = Clock(100.0)
    router = Router("round trip", clock=clock)
    transport = router.create_transport("viewer")
    state = router._transports[transport]
    sent: list[bytes] = []
    transport.send_rtcp = sent.append  # type: ignore[assignment,method-assign]
    asked: list[float] = []

    def retransmit(lost: Any, budget: Any, interval: float) -> list[int]:
        asked.append(interval)
        return []

    consumer = SimpleNamespace(
        producer=SimpleNamespace(kind="video", request_retransmission=lambda *_: None),
        packets=0, packets_at_receiver_report=0, layer=0, resent=0, retransmit=retransmit,
        sender_report=lambda: rtcp.sender_report(11, NTP, 0, 0, 0))
    state.consumers_by_ssrc[11] = consumer  # type: ignore[assignment]
    try:
        for _ in router._send_reports():
            pass
        assert sent and rtcp.sender_report_ntp(sent[0]) == NTP
        router.rtcp_received(transport, rtcp.nack(1, 11, [5]))
        assert asked == [RESEND_INTERVAL]  # no round trip measured yet
        clock.now += 0.35
        block = struct.pack("!IB3xIIII", 11, 0, 0, 0, last_sr(NTP), 3_277)  # held 0.05 s
        router.rtcp_received(transport, struct.pack("!BBHI", 0x81, 201, 7, 1) + block)
        assert router.round_trip(transport) == pytest.approx(0.3, abs=1e-3)
        router.rtcp_received(transport, rtcp.nack(1, 11, [5]))
        assert asked[1] == pytest.approx(0.3, abs=1e-3)
    finally:
        state.consumers_by_ssrc.clear()
        await router.close()
