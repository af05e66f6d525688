"""Bandwidth estimates per consumer transport and the allocation of video layers to them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from support import Clock
from townhall.sfu import bandwidth, rtcp
from townhall.sfu.allocation import VideoAllocation
from townhall.sfu.bandwidth import Estimate, VideoDemand, allocate

LAYERS = [150_000, 500_000, 1_500_000]


def test_before_any_report_the_initial_estimate_holds_then_nothing_limits() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    assert estimate.value() == bandwidth.INITIAL_BITRATE
    clock.now += bandwidth.FEEDBACK_WAIT + 0.1
    assert estimate.value() is None


def test_a_report_replaces_the_estimate_and_a_drop_asks_for_allocation_now() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    assert estimate.update(2_000_000) is False  # a rise waits for the periodic allocation
    assert estimate.update(1_950_000) is False  # a small drop too
    assert estimate.may_raise()
    assert estimate.update(600_000) is True
    assert estimate.value() == 600_000
    assert not estimate.may_raise()
    clock.now += bandwidth.UPGRADE_HOLD
    assert estimate.may_raise()


def test_each_further_drop_within_a_minute_doubles_the_hold_before_going_up() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    holds = []
    for bitrate in (1_000_000, 500_000, 250_000):
        estimate.update(bitrate * 2)
        estimate.update(bitrate)
        held = 0.0
        while not estimate.may_raise():
            clock.now += 0.5
            held += 0.5
        holds.append(held)
    assert holds == [bandwidth.UPGRADE_HOLD, 2 * bandwidth.UPGRADE_HOLD,
                     4 * bandwidth.UPGRADE_HOLD]
    clock.now += bandwidth.DROP_MEMORY
    estimate.update(100_000)
    clock.now += bandwidth.UPGRADE_HOLD
    assert estimate.may_raise()


def test_drops_during_a_hold_start_it_again_without_doubling_it() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(2_000_000)
    estimate.update(1_000_000)
    for _ in range(8):  # heavy loss, reported every half second for 4 s
        clock.now += 0.5
        assert estimate.lost(0.3)
    clock.now += bandwidth.UPGRADE_HOLD - 0.5
    assert not estimate.may_raise()
    clock.now += 0.5
    assert estimate.may_raise()  # one hold after the last drop, not eight doublings of it


def test_when_reports_stop_the_estimate_is_raised_step_by_step() -> None:
    clock = Clock(50.0)
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


def targets(budget: int | None, demands: list[VideoDemand], may_raise: bool = True) -> list[int]:
    return allocate(budget, demands, may_raise).targets


def test_each_video_gets_the_highest_layer_that_fits_never_above_its_layout() -> None:
    demands = [VideoDemand(LAYERS, 2), VideoDemand(LAYERS, 1), VideoDemand(LAYERS, 0)]
    assert targets(None, demands) == [2, 1, 0]
    assert targets(10_000_000, demands) == [2, 1, 0]
    # 150k each first, then raised in turn while the new total x 1.15 fits
    assert targets(1_000_000, demands) == [1, 0, 0]  # 800k
    assert targets(1_350_000, demands) == [1, 1, 0]  # 1150k
    allocation = allocate(1_000_000, demands)
    assert (allocation.total, allocation.wanted) == (800_000, 1_150_000)
    assert allocate(10_000_000, demands).wanted == 0


def test_the_most_important_video_is_served_first_and_others_are_cut() -> None:
    demands = [VideoDemand(LAYERS, 2, priority=0), VideoDemand(LAYERS, 2, priority=1)]
    assert targets(200_000, demands) == [-1, 0]
    assert targets(100_000, demands) == [-1, -1]


def test_a_layer_the_producer_does_not_send_is_skipped() -> None:
    demand = VideoDemand([150_000, 0, 1_500_000], 2)
    assert targets(10_000_000, [demand]) == [2]
    assert targets(1_000_000, [demand]) == [0]
    assert targets(None, [VideoDemand([150_000, 500_000, 0], 2)]) == [1]


def test_a_video_not_measured_yet_starts_on_its_lowest_layer() -> None:
    assert targets(0, [VideoDemand([0, 0, 0], 2)]) == [0]
    assert targets(0, [VideoDemand([0, 0, 0], -1)]) == [-1]


def test_what_is_forwarded_is_kept_near_the_estimate_but_going_up_needs_a_margin() -> None:
    # A receiver's first estimate is the throughput it measured: no reason to go down.
    assert targets(1_450_000, [VideoDemand(LAYERS, 2, current=2)]) == [2]
    assert targets(1_250_000, [VideoDemand(LAYERS, 2, current=2)]) == [1]  # a real drop
    assert targets(1_500_000, [VideoDemand(LAYERS, 2, current=1)]) == [1]
    assert targets(1_800_000, [VideoDemand(LAYERS, 2, current=1)]) == [2]
    assert targets(10_000_000, [VideoDemand(LAYERS, 2, current=0)], may_raise=False) == [0]
    assert targets(10_000_000, [VideoDemand(LAYERS, 2, current=2)], may_raise=False) == [2]


def test_probes_are_sized_for_the_next_step_and_stop_when_it_fits_or_after_a_drop() -> None:
    demands = [VideoDemand(LAYERS, 2, current=0)]
    allocation = allocate(250_000, demands)
    assert allocation.targets == [0] and allocation.wanted == 500_000
    rate = bandwidth.probe_rate(250_000, allocation, may_raise=True)
    assert rate == int(500_000 * bandwidth.UPGRADE_MARGIN / bandwidth.ESTIMATE_GROWTH) - 150_000
    assert bandwidth.probe_rate(250_000, allocation, may_raise=False) == 0
    assert bandwidth.probe_rate(None, allocate(None, demands), may_raise=True) == 0
    top = allocate(10_000_000, demands)
    assert bandwidth.probe_rate(10_000_000, top, may_raise=True) == 0


def test_the_last_video_is_cut_only_well_below_its_lowest_layer() -> None:
    keeping = [VideoDemand(LAYERS, 2, current=0)]
    assert targets(110_000, keeping) == [0]  # 150k is within the cut tolerance
    assert targets(90_000, keeping) == [-1]
    assert targets(110_000, [VideoDemand(LAYERS, 2, current=-1)]) == [-1]  # not a new one
    # a second video gets no such tolerance
    both = [VideoDemand(LAYERS, 2, current=0), VideoDemand(LAYERS, 2, current=0)]
    assert targets(200_000, both) == [0, -1]


def test_a_retry_is_measured_before_reports_count_again() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(1_000_000)
    estimate.update(50_000)
    assert estimate.taking()
    estimate.retry(200_000)
    assert estimate.value() == 200_000
    assert not estimate.taking()
    assert estimate.update(50_000) is False  # the receiver's old estimate, repeated
    assert estimate.value() == 200_000
    clock.now += bandwidth.RETRY_GRACE
    assert estimate.taking()
    assert estimate.update(60_000) is True
    assert estimate.value() == 60_000


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


def test_reported_loss_over_a_tenth_bounds_the_estimate_and_holds_it_from_going_up() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(1_000_000)
    assert estimate.lost(0.05) is False  # a little loss changes nothing
    assert estimate.value() == 1_000_000
    assert estimate.lost(0.4) is True
    assert estimate.value() == 800_000  # (1 - loss / 2) of it
    assert not estimate.may_raise()
    estimate.update(1_100_000)  # the delay-based estimate goes on growing: the bound holds
    assert estimate.value() == 800_000


def test_loss_reported_again_at_once_is_taken_as_the_same_loss() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(1_000_000)
    assert estimate.lost(0.4) is True
    clock.now += 0.1  # another stream's report of the same moment
    assert estimate.lost(0.4) is False
    assert estimate.value() == 800_000
    clock.now += bandwidth.LOSS_INTERVAL
    assert estimate.lost(0.2) is True
    assert estimate.value() == 720_000


def test_once_loss_stops_the_bound_grows_until_the_estimate_is_below_it() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(1_000_000)
    estimate.lost(0.5)
    assert estimate.value() == 750_000
    estimate.lost(0.05)  # between the two thresholds: held
    assert estimate.value() == 750_000
    values = []
    while estimate.loss_bound is not None:
        assert estimate.lost(0.0) is False
        values.append(estimate.value())
    assert values[0] == int(750_000 * bandwidth.LOSS_GROWTH)
    assert values == sorted(values) and values[-1] == 1_000_000
    assert len(values) == 6  # 1.05 ** 6 > 4 / 3


def test_once_loss_stops_the_bound_lifts_at_once_to_the_rate_that_got_through() -> None:
    """Transport feedback measures what arrived: with hardly any loss, that is what the link
    carries (a probe that got through lifts the bound in one report, not in thirty)."""
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(2_000_000)
    estimate.lost(0.8)
    assert estimate.value() == 1_200_000
    estimate.lost(0.05, delivered=1_900_000)  # between the two thresholds: held
    assert estimate.value() == 1_200_000
    estimate.lost(0.0, delivered=600_000)  # less got through than the bound: it grows 5 %
    assert estimate.value() == int(1_200_000 * bandwidth.LOSS_GROWTH)
    estimate.lost(0.01, delivered=1_700_000)
    assert estimate.loss_bound == 1_700_000 and estimate.value() == 1_700_000
    estimate.lost(0.0, delivered=2_300_000)  # past the estimate: no bound left
    assert estimate.loss_bound is None and estimate.value() == 2_000_000


def test_trying_video_again_after_it_was_cut_lifts_the_loss_bound() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(200_000)
    estimate.lost(0.6)
    estimate.retry(400_000)
    assert estimate.loss_bound is None
    assert estimate.value() == 400_000


def test_retransmissions_get_a_quarter_of_the_estimate_in_short_bursts() -> None:
    clock = Clock(50.0)
    budget = bandwidth.ResendBudget(clock)
    assert budget.take(100_000)  # no estimate yet: no limit
    budget.set_estimate(800_000)  # 25,000 bytes a second, at most 5,000 at once
    clock.now += 10
    taken = 0
    while budget.take(1_000):
        taken += 1_000
    assert taken == 5_000
    clock.now += 0.1
    assert budget.take(2_000) and not budget.take(1_000)
    budget.set_estimate(100_000)  # a narrow link: still two full packets at once
    clock.now += 10
    assert budget.take(1_200) and budget.take(1_200) and not budget.take(1_200)


def test_probe_padding_is_shared_out_each_tick_and_cleared_once_probing_stops() -> None:
    video = [SimpleNamespace(producer=SimpleNamespace(kind="video"), layer=1, paused=False,
                             padding=0) for _ in range(2)]
    audio = SimpleNamespace(producer=SimpleNamespace(kind="audio"), layer=0, paused=False,
                            padding=0)
    allocation = VideoAllocation("t", Clock())
    consumers: list[Any] = [*video, audio]
    allocation.probe(consumers, 0.1)
    assert [c.padding for c in consumers] == [0, 0, 0], "not probing: no padding"

    allocation.probe_rate = 160_000  # 2,000 bytes a tick, shared by the two videos
    allocation.probe(consumers, 0.1)
    assert [c.padding for c in consumers] == [1000, 1000, 0]
    video[0].padding = 0  # sent after its next frame

    allocation.probe_rate = 0
    allocation.probe(consumers, 0.1)
    assert [c.padding for c in consumers] == [0, 0, 0], "what is still owed is dropped"


def test_the_first_estimate_from_transport_feedback_replaces_the_guess_without_a_hold() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.source = "transport-cc"
    assert estimate.update(80_000) is True  # far under the guess: allocate at once...
    assert estimate.value() == 80_000
    assert estimate.may_raise()  # ... but layers may go up (and be probed for) at once
    clock.now += 0.5
    assert estimate.update(60_000) is True  # a later drop is one
    assert not estimate.may_raise()


def test_the_first_remb_under_the_guess_holds_layers_back() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)  # REMB comes seconds after video started at the guess
    assert estimate.update(300_000) is True
    assert not estimate.may_raise()


def test_while_no_video_is_wanted_the_estimate_is_kept_as_it_was_not_raised() -> None:
    clock = Clock(50.0)
    estimate = Estimate(clock)
    estimate.update(400_000)
    for _ in range(30):  # a minute with every video hidden: no reports, for want of video
        clock.now += 2
        assert estimate.value(wanted=False) == 400_000
    clock.now += 2  # shown again: reports come back within the expiry, nothing is raised yet
    assert estimate.value() == 400_000
    clock.now += bandwidth.FEEDBACK_EXPIRY + 0.1  # and once they stay away, it is raised
    assert estimate.value() == int(400_000 * bandwidth.RETRY_FACTOR)


def test_the_allocation_keeps_the_estimate_while_its_only_video_is_hidden() -> None:
    clock = Clock(50.0)
    allocation = VideoAllocation("t", clock)
    consumer = SimpleNamespace(
        id="c", producer=SimpleNamespace(kind="video", paused=False, layers=[]), paused=False,
        slot=SimpleNamespace(payload_type=96), max_layer=-1, target=-1, layer=-1, priority=0,
        set_target=lambda target: None)
    allocation.estimate.update(400_000)
    for _ in range(30):
        clock.now += 2
        allocation.run([consumer], clock.now)  # type: ignore[list-item]
    assert allocation.estimate.bitrate == 400_000
    assert not allocation.low_bandwidth, "a hidden video is not one cut for lack of bandwidth"
