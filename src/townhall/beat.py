"""One beat for the server's periodic work.

Each wake-up of an idle event loop costs the server far more than the work it wakes for: with
a meeting's packets arriving a few hundred times a second, every wake-up finds the caches cold
(`docs/benchmarks.md`, *Periodic work on one beat*). So periodic work sleeps until the next
multiple of its interval on the event loop's clock rather than for the interval
(:func:`sleep_to_next`), and work that falls due together wakes the process once.

Every room's periodic work runs from one runner per event loop (:class:`Beat`), in steps: work
that is a generator gives the loop back to arriving packets whenever the beat's steps have run
for ``STEP_TIME`` since it last did, and goes on ``PAUSE_FACTOR`` times as long later, so that
the packets that queued meanwhile are forwarded before the next steps hold them again. One
runner bounds that hold for all rooms together; one per room would let each of them hold the
loop that long in the same turn. The runner is plain callbacks, not a task: at one consumer,
the tasks' wake-ups (a future, a task step and a coroutine chain per beat) were a measurable
part of the server's CPU.

A beat rides on datagrams (:class:`Wakeups`): where the media socket's reader reads after a
beat was due, it wakes that beat's sleepers there, and their timer, ``RIDE_SLACK`` later, is
only for when no datagram comes. A meeting's packets wake the server every few milliseconds,
so its periodic work needs no wake-up of its own.

What must run every beat (the routers' tick) is not the runner's work: it is called straight
from the ride (:meth:`Wakeups.every_beat`), with no timer set and cancelled for it, and the
runner sleeps until the next beat that has work of its own (every 0.5 s for a router). At one
consumer the runner's wake-up every beat cost more than the tick it ran (`docs/benchmarks.md`,
*The tick on the datagrams' rides*). Ticks that held the loop longer than ``TICKS_HOLD`` count
as a step: the runner's work starts after the pause that follows them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from townhall.sfu.fields import WakeupsFields

logger = logging.getLogger(__name__)

#: Period of the beat, in seconds: the routers' tick (``sfu.speaker.TICK``).
INTERVAL = 0.1
#: Periodic work gives the event loop back to packets after this long (seconds).
STEP_TIME = 0.001
#: ... and goes on after this many times as long as its steps took. Packets that arrived while
#: the steps ran wait in the socket; at a load of ``f`` of a core the server needs ``f / (1 -
#: f)`` times that long to catch up with them: 3 is enough up to 75 %. Going on at the next turn
#: of the loop instead, 27 rooms' work of a beat (about 3 ms of it) held packets back for about
#: as long as it took, in 1 ms steps or not, and the server's p99 delay followed its beats.
PAUSE_FACTOR = 3.0
#: Where the ticks of a beat held the loop longer than this (seconds), the runner's work of that
#: beat starts ``PAUSE_FACTOR`` times as long after them, not in the same wake-up: 27 rooms'
#: ticks (about 0.7 ms) and the first step after them held arriving packets as one.
TICKS_HOLD = STEP_TIME / 4
#: Where a socket's reader rides the beats, their timers fire this long after they were due
#: (seconds), for when no datagram comes first: a meeting's audio alone arrives every 20 ms.
RIDE_SLACK = 0.03
#: A sleeper whose clock reads this close before a beat sleeps until the one after it (s).
CLOCK_TOLERANCE = 0.002

#: Periodic work: a function, or a generator function whose steps the beat runs apart.
Work = Callable[[], Iterator[None] | None]


def next_beat(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``."""
    return (math.floor(now / interval) + 1) * interval


async def sleep_to_next(interval: float) -> float:
    """Sleep until the next multiple of ``interval`` on the running loop's clock; returns that
    time, on the same clock."""
    return (await sleep_to_next_beat(interval))[0]


async def sleep_to_next_beat(interval: float) -> tuple[float, float]:
    """:func:`sleep_to_next`, returning (the beat, when the wake-up was owed): the beat when a
    datagram's reader woke it, ``RIDE_SLACK`` later when its timer did. ``loop.time()`` minus
    the second is how late the wake-up came."""
    loop = asyncio.get_running_loop()
    due = next_beat(_beat_clock(loop), interval)
    return due, await wakeups(loop).until(due)


def call_at_next_beat(loop: asyncio.AbstractEventLoop, interval: float,
                      callback: Callable[[float, float], object]) -> Callable[[], None]:
    """:func:`sleep_to_next_beat` for a callback: ``callback(beat, owed)`` is called at the
    next multiple of ``interval`` on ``loop``'s clock, in the wake-up of the datagram or timer
    that wakes the beat. Returns what cancels it."""
    due = next_beat(_beat_clock(loop), interval)
    return wakeups(loop).at(due, functools.partial(callback, due))


def _beat_clock(loop: asyncio.AbstractEventLoop) -> float:
    """Now, as the beats count it: uvloop's clock counts whole milliseconds behind the
    monotonic clock the reader rides by, so woken just after a beat it may still read a time
    before it; and a time within ``CLOCK_TOLERANCE`` before a beat counts as that beat."""
    return max(loop.time(), time.monotonic()) + CLOCK_TOLERANCE


class Wakeups(WakeupsFields):
    """An event loop's sleepers until a beat (:func:`sleep_to_next`), woken together.

    A timer wakes the sleepers of a beat when it is due, or ``RIDE_SLACK`` after it while a
    socket's reader rides the beats (``readers``): the reader calls :meth:`ride` when it reads
    at or after ``due``, so the beat's work runs in a wake-up datagrams cause anyway. The loop's
    clock must be ``time.monotonic``'s (asyncio's and uvloop's are), which the reader reads.
    """

    # ``due`` is a field of the base, which the native reader reads in place
    __slots__ = ("_beats", "_loop", "_tick_timer", "_ticks", "held_until", "readers",
                 "tick_due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weak: the loops' table of these holds them by a weak reference to the loop
        self._loop = weakref.ref(loop)
        #: The earliest beat anyone sleeps until, on the loop's clock (inf: none); the native
        #: reader compares it with the clock on every wake-up.
        self.due = math.inf
        #: Readers that ride the beats (call :meth:`ride`); with none, timers fire on time.
        self.readers = 0
        #: beat (rounded) -> who sleeps until it
        self._beats: dict[float, _Sleepers] = {}
        #: Called at every beat (:meth:`every_beat`), and the next beat they are due at.
        self._ticks: list[Callable[[], object]] = []
        self.tick_due = math.inf
        #: Calls them on time while no reader rides the beats.
        self._tick_timer: asyncio.TimerHandle | None = None
        #: Until when (``time.monotonic``) the runner's work waits after ticks that held the
        #: loop longer than ``TICKS_HOLD``.
        self.held_until = 0.0

    def add_reader(self) -> None:
        """A socket's reader rides the beats from now on (calls :meth:`ride`)."""
        self.readers += 1

    def remove_reader(self) -> None:
        """A reader stopped riding; with none left, a timer calls the ticks again."""
        self.readers -= 1
        if self.readers <= 0 and self._ticks and self._tick_timer is None:
            self._arm_tick_timer()

    def every_beat(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` at every beat (``INTERVAL``) from the next one on; returns what
        stops it.

        While a socket's reader rides the beats, it is called in the wake-up of the first
        datagram read after each beat, with no timer of its own: a timer set and cancelled
        every beat was most of what a beat cost at one consumer. Where no datagram comes, the
        timer of the next beat anyone sleeps until calls it (the routers that tick this way
        have periodic work every ``router.ALLOCATE_INTERVAL``). With no reader, a timer calls
        it on time."""
        self._ticks.append(callback)
        if self.tick_due == math.inf:
            self.tick_due = next_beat(time.monotonic() + CLOCK_TOLERANCE, INTERVAL)
            self._update_due()
            if self.readers <= 0:
                self._arm_tick_timer()
        return functools.partial(self._stop_tick, callback)

    def _stop_tick(self, callback: Callable[[], object]) -> None:
        if callback in self._ticks:
            self._ticks.remove(callback)
        if not self._ticks:
            self.tick_due = math.inf
            self._update_due()
            if self._tick_timer is not None:
                self._tick_timer.cancel()
                self._tick_timer = None

    def _arm_tick_timer(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            self._tick_timer = loop.call_at(self.tick_due, self._tick_timer_fired)

    def _tick_timer_fired(self) -> None:
        self._tick_timer = None
        self._run_ticks(time.monotonic())

    def _run_ticks(self, now: float) -> None:
        """Call every tick (due by ``now``, give or take the clocks' tolerance), and set the
        next beat they are due at."""
        self.tick_due = next_beat(now + CLOCK_TOLERANCE, INTERVAL)
        self._update_due()
        if self._tick_timer is not None:  # a sleeper's timer came first
            self._tick_timer.cancel()
            self._tick_timer = None
        if self.readers <= 0:
            self._arm_tick_timer()
        started = time.perf_counter()
        for callback in list(self._ticks):
            try:
                callback()
            except Exception:
                logger.exception("a tick of the beat failed")
        held = time.perf_counter() - started
        if held > TICKS_HOLD:
            self.held_until = time.monotonic() + held * PAUSE_FACTOR

    def until(self, due: float) -> asyncio.Future[float]:
        """A future done at the beat ``due`` (the loop's clock), or soon after it, with the time
        the wake-up was owed (the beat for a ride, the timer's time for the timer)."""
        loop = self._loop()
        assert loop is not None, "the loop is gone"
        future: asyncio.Future[float] = loop.create_future()
        cancel = self.at(due, functools.partial(_resolve, future))
        future.add_done_callback(lambda done: done.cancelled() and cancel())
        return future

    def at(self, due: float, callback: Callable[[float], object]) -> Callable[[], None]:
        """Call ``callback(owed)`` at the beat ``due`` or soon after it, where :meth:`until`'s
        future would be done; returns what cancels the call (nothing once it was made). An
        exception from the callback is logged and the beat's other sleepers still wake."""
        return functools.partial(self._forget, self._add(due, callback), callback)

    def _add(self, due: float, callback: Callable[[float], object]) -> _Sleepers:
        """:meth:`at`, returning the beat's sleepers (``_forget(them, callback)`` cancels)."""
        key = round(due, 6)
        sleepers = self._beats.get(key)
        if sleepers is None:
            loop = self._loop()
            assert loop is not None, "the loop is gone"
            at = due + (RIDE_SLACK if self.readers > 0 else 0.0)
            sleepers = self._beats[key] = _Sleepers(
                key, due, loop.call_at(at, self._timer_woke, key, at))
            if due < self.due:
                self.due = due
        sleepers.callbacks.append(callback)
        return sleepers

    def ride(self) -> None:
        """Call the ticks and wake the sleepers of every beat that is due by now."""
        now = time.monotonic()
        if self.tick_due <= now:
            self._run_ticks(now)
        for key, sleepers in list(self._beats.items()):
            if sleepers.due <= now:
                sleepers.timer.cancel()
                self._wake(key, sleepers.due)

    def _timer_woke(self, key: float, owed: float) -> None:
        """A beat's timer: no datagram rode it. Ticks due by now run first, as a ride's do."""
        now = time.monotonic()
        if self.tick_due <= now + CLOCK_TOLERANCE:
            self._run_ticks(now)
        self._wake(key, owed)

    def _wake(self, key: float, owed: float) -> None:
        sleepers = self._beats.pop(key, None)
        self._update_due()
        if sleepers is None:
            return
        # one at a time from the list itself: a sleeper that cancels a later one of the same
        # beat takes it out before its turn
        callbacks = sleepers.callbacks
        while callbacks:
            callback = callbacks.pop(0)
            try:
                callback(owed)
            except Exception:
                logger.exception("a sleeper of the beat at %.3f failed", sleepers.due)
            except BaseException:
                # the rest still wake, after the loop has seen this one
                loop = self._loop()
                if loop is not None:
                    for rest in callbacks:
                        loop.call_soon(rest, owed)
                callbacks.clear()
                raise

    def _forget(self, sleepers: _Sleepers, callback: Callable[[float], object]) -> None:
        """A sleeper cancelled: its beat's timer goes when nobody else sleeps until it."""
        if callback not in sleepers.callbacks:
            return  # woken already
        sleepers.callbacks.remove(callback)
        if not sleepers.callbacks and self._beats.get(sleepers.key) is sleepers:
            sleepers.timer.cancel()
            del self._beats[sleepers.key]
            self._update_due()

    def _update_due(self) -> None:
        due = self.tick_due
        for sleepers in self._beats.values():
            if sleepers.due < due:
                due = sleepers.due
        self.due = due


class _Sleepers:
    """Those asleep until one beat, and the timer that wakes them if no datagram does."""

    __slots__ = ("callbacks", "due", "key", "timer")

    def __init__(self, key: float, due: float, timer: asyncio.TimerHandle) -> None:
        self.key = key
        self.due = due
        self.timer = timer
        #: each is called with the time the wake-up was owed
        self.callbacks: list[Callable[[float], object]] = []


def _resolve(future: asyncio.Future[float], owed: float) -> None:
    if not future.done():
        future.set_result(owed)


_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeups] = \
    weakref.WeakKeyDictionary()


def wakeups(loop: asyncio.AbstractEventLoop | None = None) -> Wakeups:
    """The event loop's (by default the running one's) sleepers until a beat."""
    loop = loop or asyncio.get_running_loop()
    found = _wakeups.get(loop)
    if found is None:
        found = _wakeups[loop] = Wakeups(loop)
    return found


@dataclass
class _Entry:
    #: the work runs on beats whose number (multiples of the beat's interval on the loop's
    #: clock) is ``phase`` modulo ``period``
    period: int
    phase: int
    work: Work
    name: str

    def next_after(self, beat: int) -> int:
        return beat - (beat - self.phase) % self.period + self.period


class Beat:
    """Runs periodic work every multiple of its interval, in steps, from callbacks."""

    def __init__(self, interval: float = INTERVAL, step_time: float = STEP_TIME,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval = interval
        self.step_time = step_time
        #: Measures the steps; the beats themselves follow the event loop's clock.
        self._clock = clock
        self._entries: dict[int, _Entry] = {}
        #: beat number -> the work due at it, (key, entry) in the order it was registered;
        #: work stopped since stays listed until its beat (``_entries`` says it stopped)
        self._schedule: dict[int, list[tuple[int, _Entry]]] = {}
        self._next_key = 0
        #: Work of each length (in beats) registered so far, to spread it over its beats.
        self._registered: dict[int, int] = {}
        #: the event loop it runs on (weak: the loops' table of beats holds them by a weak
        #: reference to the loop), and that loop's sleepers
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._wakeups: Wakeups | None = None
        #: the next beat, and its sleepers while the beat waits for it
        self._due = 0.0
        self._sleeping: _Sleepers | None = None
        #: the one callback the sleepers call (a bound method made once)
        self._woke_at = self._woke
        #: the beat being worked through: its number, the entries left to look at, and the
        #: steps of the work under way (its key, its entry, its steps)
        self._number = 0
        #: the last beat whose work was taken from the schedule
        self._taken = -1
        self._pending: collections.deque[tuple[int, _Entry]] = collections.deque()
        #: work to run once, after the periodic work under way (:meth:`run_soon`)
        self._once: collections.deque[tuple[int, _Entry]] = collections.deque()
        self._steps: tuple[int, _Entry, Iterator[None]] | None = None
        #: cancels the call that goes on with the beat's work (after a pause, or a turn of the
        #: loop)
        self._resume: Callable[[], None] | None = None
        #: Told how late each wake-up came (seconds after it was owed), while work is
        #: registered: the server's loop watch (``server/pauses.py``). The next beat is
        #: asked for before the beat's work runs, so a hold within that work that lasts past
        #: the next beat makes it late too.
        self.watch: Callable[[float], object] | None = None

    @property
    def running(self) -> bool:
        """Whether any work is registered (so the beat wakes every interval)."""
        return bool(self._entries)

    def every(self, interval: float, work: Work, name: str = "") -> Callable[[], None]:
        """Run ``work`` every ``interval`` (a multiple of the beat's) from now on, on one of
        the beats of each interval; returns what stops it.

        Work of the same interval is dealt out in turn over the beats of the interval: with
        many rooms, every room's work of each second on the same beat would hold arriving
        packets for tens of milliseconds (17 rooms: 43 ms, the median of a run).
        """
        period = round(interval / self.interval)
        if interval <= 0 or abs(interval / self.interval - period) > 1e-9:
            raise ValueError(f"{interval} s is not a multiple of the beat's {self.interval} s")
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop() is not loop:
            self._halt()
            self._loop = weakref.ref(loop)
            self._wakeups = wakeups(loop)
        turn = self._registered.get(period, 0)
        self._registered[period] = turn + 1
        key, self._next_key = self._next_key, self._next_key + 1
        entry = _Entry(period, turn % period, work, name or getattr(work, "__qualname__", "?"))
        # on the sleepers' clock: with the loop's alone, work registered just before a beat
        # would be due at the beat the runner skips, and run a beat late beside the next one's
        now = math.floor(_beat_clock(loop) / self.interval)
        self._enter(key, entry, entry.next_after(now))
        if self._taken < 0:
            self._taken = now
        self._entries[key] = entry
        if self._sleeping is None or entry.next_after(now) < round(self._due / self.interval):
            self._sleep(loop)
        return lambda: self._stop(key)

    def run_soon(self, work: Work, name: str) -> None:
        """Run ``work`` once, from the next turn of the loop, in steps with the beat's periodic
        work, under the same bound on how long they hold the loop: what a tick found to do
        (narrowing audio after the loudest changed, probe padding). Work handed to a beat that
        runs nothing (or on another loop) runs at once, whole."""
        loop = asyncio.get_running_loop()
        if not self._entries or self._live_loop() is not loop:
            for _ in work() or ():
                pass
            return
        self._once.append((_ONCE, _Entry(0, 0, work, name)))
        if self._resume is None and self._steps is None and not self._pending:
            self._resume = loop.call_soon(self._start).cancel

    def _enter(self, key: int, entry: _Entry, due: int) -> None:
        """List ``entry`` for the beat numbered ``due``."""
        listed = self._schedule.get(due)
        if listed is None:
            self._schedule[due] = [(key, entry)]
        else:
            listed.append((key, entry))

    def _stop(self, key: int) -> None:
        self._entries.pop(key, None)
        if not self._entries:
            self._halt()

    def _halt(self) -> None:
        """Stop waiting and working: nothing is registered (or the loop changed). Work part
        way through its steps is given up (its generator is left to be collected: it may be
        the one running now); its entry runs again when it is next due."""
        if self._sleeping is not None and self._wakeups is not None:
            self._wakeups._forget(self._sleeping, self._woke_at)
        if self._resume is not None:
            self._resume()
        self._sleeping = self._resume = self._steps = None
        self._once.clear()
        if not self._entries:
            self._pending.clear()
            self._schedule.clear()
            self._taken = -1
            return
        # the loop changed: work taken for a beat but not yet run runs at the next beat
        while self._pending:
            key, entry = self._pending.popleft()
            self._enter(key, entry, self._taken + 1)

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the beat runs on, unless it is gone."""
        return None if self._loop is None else self._loop()

    def _sleep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep until the next beat that has work: a beat with none would cost a wake-up of
        the runner (its timer, the watch, the schedule) for nothing."""
        assert self._wakeups is not None
        if self._sleeping is not None:
            self._wakeups._forget(self._sleeping, self._woke_at)
        now = math.floor(_beat_clock(loop) / self.interval)
        number = min((entry.next_after(now) for entry in self._entries.values()),
                     default=now + 1)
        if self._schedule:  # listed for a beat gone by (the work before it ran long)
            number = min(number, min(self._schedule))
        self._due = due = max(number, now + 1) * self.interval
        self._sleeping = self._wakeups._add(due, self._woke_at)

    def _woke(self, owed: float) -> None:
        self._sleeping = None
        loop = self._live_loop()
        if loop is None or not self._entries:
            return
        number = round(self._due / self.interval)
        # the last beat's work still under way: work due now runs at the next beat (work run
        # once is not: with a tick handing some over every beat, the beat's own would wait)
        steps = self._steps
        under_way = bool(self._pending) or (steps is not None and steps[0] != _ONCE)
        if not under_way:
            self._number = number
            self._take(number)
        self._sleep(loop)  # before the work: a hold from here on makes the next wake-up late
        if self.watch is not None:
            try:
                self.watch(loop.time() - owed)
            except Exception:
                logger.exception("the beat's watch failed")
        if not under_way and self._resume is None and steps is None:
            self._start()  # else it runs when the work run once has had its turn

    def _take(self, number: int) -> None:
        """The work due by beat ``number`` becomes the beat's: its own, and that of beats
        that went by while the work of the one before them ran long."""
        schedule, taken = self._schedule, self._taken
        if number - taken <= len(schedule):
            due = [schedule.pop(n) for n in range(taken + 1, number + 1) if n in schedule]
        else:  # a long hold: fewer beats listed than went by
            due = [schedule.pop(n) for n in sorted(n for n in schedule if n <= number)]
        self._taken = max(taken, number)
        if len(due) == 1 and len(due[0]) == 1:
            self._pending.append(due[0][0])
        elif due:
            self._pending.extend(sorted((item for items in due for item in items),
                                        key=_registered_first))

    def _work(self) -> None:
        """Work through the beat's due work until its steps have run for ``step_time``; then
        go on after a pause, until all of it ran."""
        self._resume = None
        try:
            self._steps_for(self._clock())
        except BaseException:
            # what raised is over; the rest of the beat's work goes on after the loop saw it
            self._steps = None
            loop = self._live_loop()
            if loop is not None and self._entries and self._resume is None:
                self._resume = loop.call_soon(self._go_on).cancel
            raise

    def _steps_for(self, since: float) -> None:
        pending, entries, once = self._pending, self._entries, self._once
        while True:
            if self._steps is None:
                if pending:
                    key, entry = pending.popleft()
                    if entries.get(key) is not entry:
                        continue  # stopped
                    self._enter(key, entry, entry.next_after(self._number))
                elif once:
                    key, entry = once.popleft()
                else:
                    return
                try:
                    steps = entry.work()
                except Exception:
                    logger.exception("%s: periodic work failed", entry.name)
                    continue
                if steps is None:
                    continue
                self._steps = (key, entry, steps)
            key, entry, steps = self._steps
            try:
                next(steps)
            except StopIteration:
                self._steps = None
                continue
            except Exception:
                logger.exception("%s: periodic work failed", entry.name)
                self._steps = None
                continue
            if self._steps is None:  # stopped by its own step
                continue
            took = self._clock() - since
            if took > self.step_time:
                self._pause(took)
                return

    def _start(self) -> None:
        """Start the work of a beat, or of :meth:`run_soon`; after the pause that follows the
        ticks where they have just held the loop."""
        wakeups = self._wakeups
        if wakeups is not None and wakeups.held_until > time.monotonic():
            self._pause_until(wakeups.held_until)
        else:
            self._work()

    def _pause(self, took: float) -> None:
        """Go on with the work ``PAUSE_FACTOR`` times ``took`` from now."""
        self._pause_until(time.monotonic() + took * PAUSE_FACTOR)

    def _pause_until(self, until: float) -> None:
        """Go on with the work in the wake-up of the first datagram read after ``until``
        (``time.monotonic``) where a reader rides the beats (no wake-up of its own while
        packets arrive; its timer, ``RIDE_SLACK`` later, is for when none do)."""
        self._resume = None
        wakeups = self._wakeups
        if wakeups is not None and self._live_loop() is not None:
            self._resume = wakeups.at(until, self._paused)

    def _paused(self, _owed: float) -> None:
        """The pause is over (a sleeper of the loop's ``Wakeups``)."""
        self._go_on()

    def _go_on(self) -> None:
        """After a pause or a turn of the loop: work stopped meanwhile takes no further step."""
        steps = self._steps
        if steps is not None and steps[0] != _ONCE and self._entries.get(steps[0]) is not steps[1]:
            self._steps = None
        self._work()


#: The key of work run once (``Beat.run_soon``): registered work's keys count up from 0.
_ONCE = -1


def _registered_first(item: tuple[int, _Entry]) -> int:
    return item[0]


_beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Beat] = \
    weakref.WeakKeyDictionary()


def shared() -> Beat:
    """The running event loop's beat, which every router's periodic work shares."""
    loop = asyncio.get_running_loop()
    found = _beats.get(loop)
    if found is None:
        found = _beats[loop] = Beat()
    return found
