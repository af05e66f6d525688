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


#: How often :class:`LoopWatch` asks to be woken while a meeting runs, in seconds: the routers'
#: tick (``sfu.speaker.TICK``), whose beats it shares (``townhall.beat``), so it adds no wake-up.
#: Waking on its own every 50 ms cost a tenth of the server's CPU at 5 consumers (4 pairs).
LOOP_INTERVAL = 0.1
#: ... and while no room is live: 20 wake-ups a second were 0.45 % of a core on an idle server.
LOOP_IDLE_INTERVAL = 1.0
#: A wake-up this many seconds later than asked for is a stall.
LOOP_STALL = 0.1


class LoopWatch:
    """Counts and logs the times the event loop was held for ``long`` seconds or more.

    A task asks to wake at every multiple of ``interval`` seconds on the event loop's clock
    (``townhall.beat``); each wake-up at least ``long`` late is a stall. The lateness is what
    is counted, from when the wake-up was owed: a hold that began before then counts from then.
    Where the beats ride on datagrams, a wake-up is owed at the beat and comes with the first
    datagram after it, so a stall may also include the wait for that datagram (under
    ``beat.RIDE_SLACK``, after which the timer is owed).
    """

    def __init__(self, interval: float = LOOP_INTERVAL, long: float = LOOP_STALL,
                 busy: Callable[[], bool] = lambda: True,
                 idle_interval: float = LOOP_IDLE_INTERVAL) -> None:
        self.interval = interval
        self.idle_interval = idle_interval
        self.long = long
        #: Whether there is media to hold up now; if not, the watch wakes every
        #: ``idle_interval`` only (a hold then is caught only if it spans a wake-up).
        self.busy = busy
        self._task: asyncio.Task[None] | None = None
        #: stalls so far, their total length and the longest, in seconds
        self.stalls = 0
        self.stalled = 0.0
        self.longest = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        loop, busy = asyncio.get_running_loop(), self.busy
        while True:
            _, owed = await beat.sleep_to_next_beat(
                self.interval if busy() else self.idle_interval)
            self.woke(loop.time() - owed)

    def woke(self, late: float) -> None:
        """Count one wake-up that came ``late`` seconds after it was due."""
        if late < self.long:
            return
        self.stalls += 1
        self.stalled += late
        self.longest = max(self.longest, late)
        logger.warning("the event loop was held for %.0f ms: media waited in the socket "
                       "meanwhile", late * 1000)
