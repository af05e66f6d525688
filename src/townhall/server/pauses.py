"""Report what held the server: while the event loop is held, no packet is forwarded.

``watch()`` (called by ``townhall serve``) logs a warning for every collection that held the
process for longer than ``LONG`` seconds, with its generation and how many objects it freed, so
that an operator who hears a meeting stutter can see whether the collector was the cause.

:class:`LoopWatch` (started with the server) catches holds of any cause: a collection, a burst
of renegotiations when someone joins a large meeting, a slow request. Media arriving meanwhile
waits in the socket's receive queue, and what does not fit there is lost.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from townhall import beat

logger = logging.getLogger(__name__)

#: Collections longer than this are logged, in seconds.
LONG = 0.02


class PauseWatch:
    def __init__(self, long: float = LONG, clock: Callable[[], float] = time.perf_counter) -> None:
        self.long = long
        self._clock = clock
        self._started = 0.0
        #: (generation, seconds) of every long collection so far
        self.long_pauses: list[tuple[int, float]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        took = self._clock() - self._started
        if took > self.long:
            generation = info.get("generation", -1)
            self.long_pauses.append((generation, took))
            logger.warning("garbage collection (generation %d) held the server for %.0f ms "
                           "(%d objects freed)", generation, took * 1000,
                           info.get("collected", 0))


def watch(long: float = LONG) -> PauseWatch:
    """Start logging long collections; returns the watch (``gc.callbacks`` holds it)."""
    pause_watch = PauseWatch(long)
    gc.callbacks.append(pause_watch)
    return pause_watch


#: How often :class:`LoopWatch` wakes on its own while no periodic work runs, in seconds: 20
#: wake-ups a second were 0.45 % of a core on an idle server. While a meeting runs, the beat
#: of its periodic work (``townhall.beat``, every 0.1 s) tells the watch how late each of its
#: wake-ups came, so the watch adds no work of its own to a beat: waking beside it cost about
#: 4 % of the server's CPU at one consumer.
LOOP_IDLE_INTERVAL = 1.0
#: A wake-up this many seconds later than asked for is a stall.
LOOP_STALL = 0.1


class LoopWatch:
    """Counts and logs the times the event loop was held for ``long`` seconds or more.

    Wake-ups that come at least ``long`` after they were owed are stalls: those of the beat
    (``townhall.beat``) while periodic work is registered (it asks for its next beat before
    that beat's work runs, so its own work's holds count too), else the watch's own, every
    ``idle_interval``. A hold that began before a wake-up was owed counts from then. Where the
    beats ride on datagrams, a wake-up is owed at the beat and comes with the first datagram
    after it, so a stall may also include the wait for that datagram (under
    ``beat.RIDE_SLACK``, after which the timer is owed).
    """

    def __init__(self, long: float = LOOP_STALL, idle_interval: float = LOOP_IDLE_INTERVAL,
                 periodic: beat.Beat | None = None) -> None:
        self.idle_interval = idle_interval
        self.long = long
        #: the beat watched: ``periodic``, else the running loop's shared one (``start``)
        self._periodic = periodic
        self._beat: beat.Beat | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: cancels the wait for the next wake-up of its own while the watch runs
        self._sleeping: Callable[[], None] | None = None
        #: stalls so far, their total length and the longest, in seconds
        self.stalls = 0
        self.stalled = 0.0
        self.longest = 0.0

    def start(self) -> None:
        if self._sleeping is None:
            self._loop = asyncio.get_running_loop()
            self._beat = self._periodic or beat.shared()
            self._beat.watch = self.woke
            self._sleep()

    async def stop(self) -> None:
        sleeping, self._sleeping = self._sleeping, None
        if sleeping is not None:
            sleeping()
        if self._beat is not None and self._beat.watch == self.woke:
            self._beat.watch = None
        self._beat = None

    def busy(self) -> bool:
        """Whether the beat of periodic work runs now, and tells the watch its lateness."""
        return self._beat is not None and self._beat.running

    def _sleep(self) -> None:
        assert self._loop is not None
        self._sleeping = beat.call_at_next_beat(self._loop, self.idle_interval, self._woken)

    def _woken(self, _beat: float, owed: float) -> None:
        self._sleep()
        if not self.busy():  # else the beat's wake-ups are watched
            assert self._loop is not None
            self.woke(self._loop.time() - owed)

    def woke(self, late: float) -> None:
        """Count one wake-up that came ``late`` seconds after it was due."""
        if late < self.long:
            return
        self.stalls += 1
        self.stalled += late
        self.longest = max(self.longest, late)
        logger.warning("the event loop was held for %.0f ms: media waited in the socket "
                       "meanwhile", late * 1000)
