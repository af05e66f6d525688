"""Periodic work: what falls due together wakes the process once, and its steps leave room for
packets."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from support import Clock
from townhall import beat
from townhall.beat import Beat


def test_the_next_beat_is_the_first_multiple_of_the_interval_after_now() -> None:
    assert beat.next_beat(10.05, 0.1) == pytest.approx(10.1)
    assert beat.next_beat(1.0, 0.5) == pytest.approx(1.5)  # strictly after
    assert beat.next_beat(0.999, 1.0) == pytest.approx(1.0)


async def test_work_of_different_intervals_falls_due_in_the_same_wake_up() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    await beat.sleep_to_next(0.2)  # start just after a beat of both intervals

    async def tick() -> None:
        for _ in range(4):
            due = await beat.sleep_to_next(0.05)
            order.append(f"tick {due:.2f}")
            # runs after every callback the same wake-up made ready
            loop.call_soon(order.append, f"after tick {due:.2f}")

    async def slow() -> None:
        due = await beat.sleep_to_next(0.2)
        order.append(f"slow {due:.2f}")
        loop.call_soon(order.append, f"after slow {due:.2f}")

    await asyncio.gather(tick(), slow())
    slow_due = next(entry for entry in order if entry.startswith("slow")).split()[1]
    # the fourth tick fell due with the slow work, and both ran in the same turn of the loop:
    # each before anything the other asked to run next
    assert order.index(f"slow {slow_due}") < order.index(f"after tick {slow_due}")
    assert order.index(f"tick {slow_due}") < order.index(f"after slow {slow_due}")


async def test_the_steps_of_every_rooms_work_together_hold_the_loop_one_step_time_a_turn(
) -> None:
    clock = Clock(10.0)
    periodic = Beat(interval=0.01, clock=clock)
    ran: list[str] = []
    finished: list[str] = []

    def sweep(room: str) -> Iterator[None]:
        for _ in range(5):
            clock.now += 2 * beat.STEP_TIME  # each step takes longer than a turn may
            ran.append(room)
            yield
        finished.append(room)

    stops = [periodic.every(0.01, lambda room=room: sweep(room)) for room in ("a", "b", "c")]
    try:
        while len(finished) < 3:
            ran.append("packets")
            await asyncio.sleep(0)
    finally:
        for stop in stops:
            stop()
    steps = [i for i, what in enumerate(ran) if what != "packets"]
    assert len(steps) == 15
    # the loop read packets between any two steps, whichever room's they were
    assert all(b > a + 1 for a, b in itertools.pairwise(steps))


async def test_work_stopped_between_its_steps_takes_no_further_step() -> None:
    clock = Clock(10.0)
    periodic = Beat(interval=0.01, clock=clock)
    taken: list[int] = []

    def sweep() -> Iterator[None]:
        for n in range(10):
            clock.now += 2 * beat.STEP_TIME
            taken.append(n)
            yield

    stop_other = periodic.every(0.01, lambda: None)  # another room's: the beat goes on
    stop = periodic.every(0.01, sweep)
    while not taken:
        await asyncio.sleep(0)  # a turn of the loop, as packets arriving would take
    stop()
    await asyncio.sleep(0.05)
    stop_other()
    assert taken == [0]


async def test_only_multiples_of_the_beat_can_be_asked_for() -> None:
    periodic = Beat(interval=0.1)
    with pytest.raises(ValueError, match="not a multiple"):
        periodic.every(0.25, lambda: None)
    with pytest.raises(ValueError, match="not a multiple"):
        periodic.every(0.0, lambda: None)
    periodic.every(0.5, lambda: None)()  # started, then stopped


async def test_work_whose_beat_went_by_while_the_last_ran_long_runs_at_the_next_beat() -> None:
    periodic = Beat(interval=0.02)
    ran: list[float] = []
    loop = asyncio.get_running_loop()
    stops = [periodic.every(0.02, lambda: time.sleep(0.05)),  # holds the loop past the beats
             periodic.every(0.04, lambda: ran.append(loop.time()))]
    try:
        await asyncio.sleep(0.3)
    finally:
        for stop in stops:
            stop()
    # without catching up, work every other beat would never run: every beat's work starts
    # after the 50 ms hold of the beat before, so beats alternate between missed and taken
    assert len(ran) >= 3


async def test_work_of_the_same_interval_is_dealt_out_over_the_beats_of_the_interval() -> None:
    periodic = Beat(interval=0.01)
    ran: list[str] = []
    stops = [periodic.every(0.01, lambda: ran.append("beat"))]
    stops += [periodic.every(0.1, lambda n=n: ran.append(f"room-{n}")) for n in range(10)]
    try:
        await asyncio.sleep(0.25)
    finally:
        for stop in stops:
            stop()
    rooms_by_beat = [beat.split() for beat in " ".join(ran).split("beat")]
    assert sum(len(rooms) for rooms in rooms_by_beat) >= 10 * 2  # each room's, twice or more
    # never two rooms' work of a second on the same beat: one after another, in turn
    assert max(len(rooms) for rooms in rooms_by_beat) == 1, ran


async def _interleaving(step_time: float, steps: int) -> list[str]:
    """What ran, in order: a sweep of ``steps`` steps each taking ``step_time`` (on the
    beat's clock), and a task standing for arriving packets."""
    clock = Clock(10.0)
    periodic = Beat(interval=0.001, clock=clock)
    ran: list[str] = []
    done = asyncio.Event()

    def sweep() -> Iterator[None]:
        if done.is_set():  # a later beat's sweep, before the test stops the work
            return
        for _ in range(steps):
            clock.now += step_time
            ran.append("step")
            yield
        done.set()

    async def packets() -> None:
        while not done.is_set():
            ran.append("packet")
            await asyncio.sleep(0)

    stop = periodic.every(0.001, sweep)
    try:
        await asyncio.wait_for(asyncio.gather(packets(), done.wait()), 5)
    finally:
        stop()
    return ran


async def test_periodic_work_in_steps_lets_the_event_loop_in_between() -> None:
    ran = await _interleaving(3 * beat.STEP_TIME, 10)
    steps = [i for i, what in enumerate(ran) if what == "step"]
    assert len(steps) == 10
    # packets got in after every step that took longer than STEP_TIME
    assert all(b > a + 1 for a, b in itertools.pairwise(steps))


async def test_after_steps_that_held_the_loop_the_work_waits_three_times_as_long() -> None:
    clock = Clock(10.0)
    periodic = Beat(interval=0.001, clock=clock)
    held = 2 * beat.STEP_TIME  # each step longer than a turn may hold the loop
    stepped: list[float] = []
    done = asyncio.Event()

    def sweep() -> Iterator[None]:
        if done.is_set():  # a later beat's sweep, before the test stops the work
            return
        for _ in range(4):
            clock.now += held
            stepped.append(time.monotonic())
            yield
        done.set()

    stop = periodic.every(0.001, sweep)
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        stop()
    gaps = [b - a for a, b in itertools.pairwise(stepped)]
    # the packets that queued while a step held the loop are forwarded before the next one;
    # the loop's timers may fire up to a millisecond early on its own clock
    assert len(gaps) == 3
    assert min(gaps) >= beat.PAUSE_FACTOR * held - 0.0015, gaps


async def test_where_a_reader_rides_the_beats_paused_work_goes_on_in_the_first_ride_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    loop = asyncio.get_running_loop()
    wakeups = beat.wakeups(loop)
    wakeups.add_reader()
    clock = Clock(10.0)
    periodic = Beat(interval=0.01, clock=clock)
    steps = 0

    def sweep() -> Iterator[None]:
        nonlocal steps
        for _ in range(2):
            clock.now += 2 * beat.STEP_TIME
            steps += 1
            yield

    stop = periodic.every(0.01, sweep)
    try:
        while steps == 0:  # the beat's own wake-up: no datagram rides it here
            wakeups.ride()
            await asyncio.sleep(0.001)
        paused_at = time.monotonic()
        await asyncio.sleep(0.02)  # long past the pause, with no datagram read
        assert steps == 1
        wakeups.ride()  # the reader read a datagram
        assert steps == 2
        assert time.monotonic() - paused_at < 1.0  # not the timer's 5 s slack
    finally:
        stop()
        wakeups.remove_reader()


async def test_short_steps_run_together_without_a_trip_through_the_loop() -> None:
    ran = await _interleaving(0.0, 50)
    first = ran.index("step")
    assert ran[first:first + 50] == ["step"] * 50


async def test_with_no_reader_riding_a_beats_sleepers_wake_when_it_is_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    wakeups = beat.Wakeups(asyncio.get_running_loop())
    due = asyncio.get_running_loop().time() + 0.05
    await asyncio.wait_for(wakeups.until(due), 2.0)  # not the slack's 5 s
    assert wakeups.due == float("inf")


async def test_where_a_reader_rides_the_beats_a_ride_after_the_beat_wakes_its_sleepers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    wakeups.readers = 1
    due = loop.time() + 0.05
    first, second = wakeups.until(due), wakeups.until(due)
    later = wakeups.until(due + 10.0)
    assert wakeups.due == due
    wakeups.ride()  # before the beat: nothing wakes
    await asyncio.sleep(0.2)
    assert not first.done() and not second.done()  # the timer waits the slack for a datagram
    wakeups.ride()
    assert first.result() == second.result() == due  # owed at the beat
    assert not later.done()
    assert wakeups.due == due + 10.0
    later.cancel()


async def test_a_beat_the_timer_wakes_was_owed_at_the_timers_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 0.05)
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    wakeups.readers = 1
    due = loop.time() + 0.02
    assert await asyncio.wait_for(wakeups.until(due), 2.0) == pytest.approx(due + 0.05)


async def test_a_beat_nobody_sleeps_until_any_more_has_no_timer_left() -> None:
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    sleeper = wakeups.until(loop.time() + 60)
    sleeper.cancel()
    await asyncio.sleep(0)  # the future's callbacks run
    assert wakeups.due == float("inf")
    assert not [h for h in loop._scheduled if not h.cancelled()  # type: ignore[attr-defined]
                and h.when() > loop.time() + 30]


async def test_a_sleeper_woken_just_after_a_beat_sleeps_until_the_next_though_the_loop_lags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    # uvloop's clock counts whole milliseconds, behind the monotonic clock the reader rides by
    monkeypatch.setattr(loop, "time", lambda: time.monotonic() - 0.001)
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    wakeups = beat.wakeups(loop)
    wakeups.readers += 1

    async def ride() -> None:  # a datagram every millisecond
        while True:
            wakeups.ride()
            await asyncio.sleep(0.0005)

    rider = loop.create_task(ride())
    try:
        beats = [await asyncio.wait_for(beat.sleep_to_next(0.05), 2.0) for _ in range(4)]
    finally:
        rider.cancel()
        wakeups.readers -= 1
    assert [b - a for a, b in itertools.pairwise(beats)] == pytest.approx([0.05] * 3)


async def test_a_sleeper_cancelled_leaves_the_others_of_its_beat_asleep() -> None:
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    due = loop.time() + 0.05
    cancelled, kept = wakeups.until(due), wakeups.until(due)
    cancelled.cancel()
    await asyncio.wait_for(kept, 2.0)
    assert cancelled.cancelled()


@pytest.fixture
async def ridden(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[beat.Wakeups]:
    """The running loop's sleepers, ridden as the socket's reader does; timers 5 s late."""
    monkeypatch.setattr(beat, "RIDE_SLACK", 5.0)
    wakeups = beat.wakeups(asyncio.get_running_loop())
    wakeups.readers += 1
    yield wakeups
    wakeups.readers -= 1


def _ride_when_due(wakeups: beat.Wakeups) -> None:
    """Wait for the next beat, then ride it as the socket's reader does after reading."""
    time.sleep(max(0.0, wakeups.due - time.monotonic()) + 0.001)
    wakeups.ride()


async def test_a_beats_work_runs_in_the_wake_up_of_the_datagram_that_rides_it(
        ridden: beat.Wakeups) -> None:
    loop = asyncio.get_running_loop()
    periodic = Beat(interval=0.05)
    ran: list[float] = []
    stop = periodic.every(0.05, lambda: ran.append(loop.time()))
    try:
        _ride_when_due(ridden)
        assert len(ran) == 1  # in the same call: no turn of the loop, no task woken
        assert ridden.due == pytest.approx(beat.next_beat(ran[0] + beat.CLOCK_TOLERANCE, 0.05))
    finally:
        stop()
    assert ridden.due == float("inf")  # stopped: nothing sleeps


async def test_a_sleeper_that_fails_is_logged_and_the_others_of_its_beat_still_wake(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    due = loop.time() + 0.02
    woken: list[float] = []

    def fails(owed: float) -> None:
        raise RuntimeError("broken sleeper")

    wakeups.at(due, fails)
    cancel = wakeups.at(due, woken.append)
    kept = wakeups.until(due)
    assert await asyncio.wait_for(kept, 2.0) == woken[0]
    cancel()  # after the wake-up: nothing to cancel, no harm
    assert "broken sleeper" in caplog.text


async def test_a_cancelled_call_at_a_beat_is_not_made() -> None:
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    called: list[float] = []
    cancel = wakeups.at(loop.time() + 0.02, called.append)
    cancel()
    assert wakeups.due == float("inf")
    await asyncio.sleep(0.06)
    assert not called


class _Interrupt(BaseException):
    """Raised past the logging, as KeyboardInterrupt or SystemExit would be."""


async def test_work_that_raises_past_the_logging_leaves_the_beat_and_the_others_work_going(
        ridden: beat.Wakeups) -> None:
    periodic = Beat(interval=0.05)
    ran: list[float] = []
    raising = [_Interrupt()]

    def interrupted() -> None:
        if raising:
            raise raising.pop()

    stops = [periodic.every(0.05, interrupted), periodic.every(0.05, lambda: ran.append(1.0))]
    try:
        with pytest.raises(_Interrupt):
            _ride_when_due(ridden)
        await asyncio.sleep(0)  # the rest of that beat's work goes on after a turn
        assert ran == [1.0]
        _ride_when_due(ridden)  # and the next beat comes as ever
        assert ran == [1.0, 1.0]
    finally:
        for stop in stops:
            stop()


async def test_a_sleeper_cancelled_by_another_of_its_beat_as_it_wakes_is_not_called() -> None:
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    due = loop.time() + 0.02
    called: list[str] = []
    cancels: list[Callable[[], None]] = []

    def first(owed: float) -> None:
        called.append("first")
        cancels[0]()

    wakeups.at(due, first)
    cancels.append(wakeups.at(due, lambda owed: called.append("second")))
    kept = wakeups.until(due)
    await asyncio.wait_for(kept, 2.0)
    assert called == ["first"]


def test_a_beat_whose_work_stopped_keeps_no_event_loop_alive() -> None:
    loop = asyncio.new_event_loop()
    periodic = Beat(interval=0.01)

    async def register_and_stop() -> None:
        periodic.every(0.01, lambda: None)()

    loop.run_until_complete(register_and_stop())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
    assert not periodic.running  # the beat itself is still there, for the next loop


def test_work_waiting_its_turn_when_the_loop_changes_runs_on_the_new_loop() -> None:
    periodic = Beat(interval=0.02, step_time=0.0)  # every step gives the loop back
    ran: list[str] = []

    def sweep() -> Iterator[None]:
        ran.append("sweep")
        for _ in range(5):
            yield

    async def first() -> None:
        periodic.every(0.02, sweep)
        periodic.every(0.02, lambda: ran.append("after the sweep"))
        while "sweep" not in ran:  # the loop goes while the sweep's steps are under way
            await asyncio.sleep(0)

    async def second() -> None:
        periodic.every(0.02, lambda: ran.append("on the new loop"))
        await asyncio.sleep(0.2)

    for run in (first, second):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(run())
        finally:
            loop.close()
    assert ran.count("after the sweep") >= 3, ran
    assert ran.count("on the new loop") >= 3


async def test_the_runner_sleeps_until_the_next_beat_that_has_work() -> None:
    """Every beat's wake-up of the runner costs a timer and the watch: a beat with no work due
    costs them for nothing."""
    periodic = Beat(interval=0.02)
    wakes: list[float] = []
    ran: list[float] = []
    periodic.watch = wakes.append
    stop = periodic.every(0.1, lambda: ran.append(time.monotonic()))
    try:
        await asyncio.sleep(0.45)
    finally:
        stop()
    assert 4 <= len(ran) <= 5
    assert len(wakes) == len(ran)  # not one wake-up every 20 ms


async def test_work_registered_for_an_earlier_beat_than_the_runner_sleeps_until_runs_then(
) -> None:
    periodic = Beat(interval=0.02)
    ran: list[str] = []
    stops = [periodic.every(2.0, lambda: ran.append("slow"))]
    try:
        stops.append(periodic.every(0.02, lambda: ran.append("fast")))
        await asyncio.sleep(0.2)
    finally:
        for stop in stops:
            stop()
    assert ran.count("fast") >= 5


async def test_work_run_soon_takes_its_steps_with_the_beats_under_the_same_bound() -> None:
    clock = Clock(10.0)
    periodic = Beat(interval=0.05, clock=clock)
    ran: list[str] = []

    def narrowing() -> Iterator[None]:
        for _ in range(6):
            clock.now += 2 * beat.STEP_TIME  # each step longer than a turn may hold the loop
            ran.append("step")
            yield

    async def packets() -> None:
        while ran.count("step") < 6:
            ran.append("packet")
            await asyncio.sleep(0)

    stop = periodic.every(10.0, lambda: None)  # the runner runs
    try:
        periodic.run_soon(narrowing, "narrowing")
        assert ran == []  # from the next turn of the loop
        await asyncio.wait_for(packets(), 5)
    finally:
        stop()
    assert ran.count("step") == 6
    steps = [i for i, what in enumerate(ran) if what == "step"]
    assert all(b > a + 1 for a, b in itertools.pairwise(steps))  # packets in between


async def test_work_run_soon_by_a_runner_with_nothing_registered_runs_at_once_whole() -> None:
    ran: list[int] = []

    def steps() -> Iterator[None]:
        for n in range(3):
            ran.append(n)
            yield

    Beat().run_soon(steps, "steps")
    assert ran == [0, 1, 2]


async def test_a_tick_is_called_in_the_ride_after_each_beat_with_no_timer_of_its_own(
        ridden: beat.Wakeups) -> None:
    loop = asyncio.get_running_loop()
    called: list[float] = []
    stop = ridden.every_beat(lambda: called.append(time.monotonic()))
    try:
        due = ridden.tick_due
        assert ridden.due <= due
        assert not [h for h in loop._scheduled  # type: ignore[attr-defined]
                    if not h.cancelled() and h.when() < due + 1.0]
        ridden.ride()  # before the beat: not called
        assert called == []
        _ride_when_due(ridden)
        assert len(called) == 1 and called[0] >= due
        assert ridden.tick_due == pytest.approx(due + beat.INTERVAL)
    finally:
        stop()
    assert ridden.due == float("inf")


async def test_with_no_reader_riding_a_timer_calls_the_tick_every_beat() -> None:
    wakeups = beat.Wakeups(asyncio.get_running_loop())
    called: list[float] = []
    stop = wakeups.every_beat(lambda: called.append(time.monotonic()))
    try:
        await asyncio.sleep(0.45)
    finally:
        stop()
    assert 4 <= len(called) <= 5
    assert [b - a for a, b in itertools.pairwise(called)] == pytest.approx(
        [beat.INTERVAL] * (len(called) - 1), abs=0.03)


async def test_where_no_datagram_comes_the_timer_of_a_sleepers_beat_calls_the_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beat, "RIDE_SLACK", 0.05)
    loop = asyncio.get_running_loop()
    wakeups = beat.Wakeups(loop)
    wakeups.add_reader()
    order: list[str] = []
    stop = wakeups.every_beat(lambda: order.append("tick"))
    try:
        wakeup = wakeups.until(wakeups.tick_due + 0.2)
        wakeup.add_done_callback(lambda _: order.append("sleeper"))
        await asyncio.wait_for(wakeup, 2.0)
        await asyncio.sleep(0)
    finally:
        stop()
    assert order == ["tick", "sleeper"]  # once, before the sleeper: not every beat


async def test_when_the_last_reader_stops_riding_a_timer_calls_the_tick_again() -> None:
    wakeups = beat.Wakeups(asyncio.get_running_loop())
    wakeups.add_reader()
    called: list[float] = []
    stop = wakeups.every_beat(lambda: called.append(time.monotonic()))
    try:
        await asyncio.sleep(0.25)
        assert called == []  # no datagram, no sleeper: nothing calls it
        wakeups.remove_reader()
        await asyncio.sleep(0.25)
    finally:
        stop()
    assert len(called) >= 2


async def test_a_tick_that_fails_is_logged_and_the_other_ticks_are_still_called(
        caplog: pytest.LogCaptureFixture, ridden: beat.Wakeups) -> None:
    called: list[str] = []

    def fails() -> None:
        raise RuntimeError("broken tick")

    stops = [ridden.every_beat(fails), ridden.every_beat(lambda: called.append("other"))]
    try:
        _ride_when_due(ridden)
    finally:
        for stop in stops:
            stop()
    assert called == ["other"]
    assert "a tick of the beat failed" in caplog.text


async def test_work_a_tick_hands_over_every_beat_does_not_hold_back_the_beats_own_work(
        ridden: beat.Wakeups) -> None:
    """The tick runs first in a ride; were the work it hands over counted as the beat's work
    under way, the allocation would wait for the next beat, and the next, for good."""
    periodic = Beat()
    ran: list[str] = []

    def probe() -> Iterator[None]:
        ran.append("probe")
        yield

    stops = [periodic.every(0.2, lambda: ran.append("allocation")),
             ridden.every_beat(lambda: periodic.run_soon(probe, "probe"))]
    try:
        for _ in range(7):
            _ride_when_due(ridden)
            await asyncio.sleep(0.005)  # the work handed over takes its turn
    finally:
        for stop in stops:
            stop()
    assert ran.count("probe") == 7
    assert ran.count("allocation") >= 3


def _ride_until(wakeups: beat.Wakeups, done: Callable[[], bool]) -> None:
    """Ride the beats every half millisecond, as a reader with datagrams does, until ``done``."""
    deadline = time.monotonic() + 2.0
    while not done() and time.monotonic() < deadline:
        time.sleep(0.0005)
        wakeups.ride()


async def test_after_ticks_that_held_the_loop_the_beats_work_starts_after_a_pause(
        ridden: beat.Wakeups) -> None:
    periodic = Beat()
    held = 2 * beat.STEP_TIME
    ticked: list[float] = []
    ran: list[float] = []

    def tick() -> None:
        time.sleep(held)
        ticked.append(time.monotonic())

    stops = [ridden.every_beat(tick),
             periodic.every(beat.INTERVAL, lambda: ran.append(time.monotonic()))]
    try:
        _ride_when_due(ridden)  # the ticks and the runner's work fall due at the same beat
        assert len(ticked) == 1
        assert ran == []  # not in the wake-up the ticks held
        _ride_until(ridden, lambda: bool(ran))
    finally:
        for stop in stops:
            stop()
    assert ran, "the work never ran"
    assert ran[0] - ticked[0] >= beat.PAUSE_FACTOR * held * 0.9


async def test_work_a_tick_hands_over_after_ticks_that_held_the_loop_waits_for_the_pause(
        ridden: beat.Wakeups) -> None:
    periodic = Beat()
    held = 2 * beat.STEP_TIME
    handed_over: list[float] = []
    ran: list[float] = []

    def probe() -> Iterator[None]:
        ran.append(time.monotonic())
        yield

    def tick() -> None:
        time.sleep(held)
        handed_over.append(time.monotonic())
        periodic.run_soon(probe, "probe")

    stops = [periodic.every(10 * beat.INTERVAL, lambda: None),  # the runner runs
             ridden.every_beat(tick)]
    try:
        _ride_when_due(ridden)
        await asyncio.sleep(0)  # the turn the work handed over would have run in
        assert len(handed_over) == 1
        assert ran == []
        _ride_until(ridden, lambda: bool(ran))
    finally:
        for stop in stops:
            stop()
    assert ran, "the work handed over never ran"
    assert ran[0] - handed_over[0] >= beat.PAUSE_FACTOR * held * 0.9
