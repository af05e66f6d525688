"""The round trip to a receiver, from its reports on the sender reports sent to it."""

from __future__ import annotations

import pytest

from townhall.sfu import round_trip
from townhall.sfu.consumer import RESEND_INTERVAL
from townhall.sfu.round_trip import RoundTrip
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
    trip.sent(NTP + (1 << 16), now=1.0)
    trip.reported(last_sr(NTP) + 1, 0, now=1.08)
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
