"""Bandwidth estimates per consumer transport and the allocation of video layers to them."""

from __future__ import annotations

from townhall.sfu import bandwidth, rtcp
from townhall.sfu.bandwidth import Estimate, VideoDemand, allocate, video_budget

LAYERS = [150_000, 500_000, 1_500_000]


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_before_any_report_the_initial_estimate_holds_then_nothing_limits() -> None:
    clock = Clock()
    estimate = Estimate(clock)
    assert estimate.value() == bandwidth.INITIAL_BITRATE
    clock.now += bandwidth.FEEDBACK_WAIT + 0.1
    assert estimate.value() is None


def test_a_report_replaces_the_estimate_and_a_drop_asks_for_allocation_now() -> None:
    clock = Clock()
    estimate = Estimate(clock)
    assert estimate.update(2_000_000) is False  # a rise waits for the periodic allocation
    assert estimate.update(1_950_000) is False  # a small drop too
    assert estimate.update(600_000) is True
    assert estimate.value() == 600_000
    assert not estimate.may_raise()
    clock.now += bandwidth.UPGRADE_HOLD
    assert estimate.may_raise()


def test_when_reports_stop_the_estimate_is_raised_step_by_step() -> None:
    clock = Clock()
    estimate = Estimate(clock)
    estimate.update(100_000)
    clock.now += bandwidth.FEEDBACK_EXPIRY - 0.5
    assert estimate.value() == 100_000
    clock.now += 1
    assert estimate.value() == int(100_000 * bandwidth.RETRY_FACTOR)
    clock.now += 1
    assert estimate.value() == int(100_000 * bandwidth.RETRY_FACTOR)
    clock.now += bandwidth.FEEDBACK_EXPIRY + 0.1
    assert estimate.value() == int(int(100_000 * bandwidth.RETRY_FACTOR)
                                   * bandwidth.RETRY_FACTOR)


def test_audio_is_served_before_video() -> None:
    assert video_budget(1_000_000, [40_000, 0]) == 900_000 - 40_000 - bandwidth.AUDIO_BITRATE
    assert video_budget(50_000, [40_000, 40_000]) == 0
    assert video_budget(None, [40_000]) is None


def test_each_video_gets_the_highest_layer_that_fits_never_above_its_layout() -> None:
    demands = [VideoDemand(LAYERS, 2), VideoDemand(LAYERS, 1), VideoDemand(LAYERS, 0)]
    assert allocate(None, demands) == [2, 1, 0]
    assert allocate(10_000_000, demands) == [2, 1, 0]
    # 150k each first, then raised in turn: 450k + 350k (first to 500k) = 800k
    assert allocate(900_000, demands) == [1, 0, 0]
    assert allocate(1_300_000, demands) == [1, 1, 0]


def test_the_most_important_video_is_served_first_and_others_are_cut() -> None:
    demands = [VideoDemand(LAYERS, 2, priority=0), VideoDemand(LAYERS, 2, priority=1)]
    assert allocate(200_000, demands) == [-1, 0]
    assert allocate(100_000, demands) == [-1, -1]


def test_a_layer_the_producer_does_not_send_is_skipped() -> None:
    demand = VideoDemand([150_000, 0, 1_500_000], 2)
    assert allocate(10_000_000, [demand]) == [2]
    assert allocate(1_000_000, [demand]) == [0]
    assert allocate(None, [VideoDemand([150_000, 500_000, 0], 2)]) == [1]


def test_a_video_not_measured_yet_starts_on_its_lowest_layer() -> None:
    assert allocate(0, [VideoDemand([0, 0, 0], 2)]) == [0]
    assert allocate(0, [VideoDemand([0, 0, 0], -1)]) == [-1]


def test_raising_a_layer_needs_a_margin_but_keeping_it_does_not() -> None:
    exact = 150_000 + 500_000  # the second layer fits exactly
    assert allocate(exact, [VideoDemand(LAYERS, 2, current=0), VideoDemand(LAYERS, 0)]) == [
        0, 0]
    assert allocate(exact, [VideoDemand(LAYERS, 2, current=1), VideoDemand(LAYERS, 0)]) == [
        1, 0]
    assert allocate(10_000_000, [VideoDemand(LAYERS, 2, current=0)], may_raise=False) == [0]
    assert allocate(10_000_000, [VideoDemand(LAYERS, 2, current=2)], may_raise=False) == [2]


def test_remb_feedback_is_read_from_rtcp() -> None:
    data = rtcp.remb(0x1234, 750_000, [1, 2])
    assert rtcp.parse(data)[0] == rtcp.Feedback("remb", 1, bitrate=750_000)


def test_a_truncated_remb_raises_value_error() -> None:
    data = bytearray(rtcp.remb(0x1234, 750_000, [1]))
    data[3] -= 1  # one word shorter: the SSRC list is cut
    try:
        rtcp.parse(bytes(data[:-4]))
    except ValueError as exc:
        assert str(exc) == "RTCP REMB is truncated"
    else:
        raise AssertionError("no error")
