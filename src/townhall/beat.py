"""One beat for the server's periodic work.

Each wake-up of an idle event loop costs the server far more than the work it wakes for: with
a meeting's packets arriving a few hundred times a second, every wake-up finds the caches cold
(about 150 µs of CPU on a 2-core server, `docs/benchmarks.md`). So periodic work sleeps until
the next multiple of its interval on the event loop's clock rather than for the interval: the
ticks of every room's router, their slower work (a multiple of the tick) and the loop watch
then fall due together and wake the process once.
"""

from __future__ import annotations

import asyncio
import math


def next_beat(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``."""
    return (math.floor(now / interval) + 1) * interval


async def sleep_to_next(interval: float) -> float:
    """Sleep until the next multiple of ``interval`` on the running loop's clock; returns that
    time, on the same clock (``loop.time()`` minus it is how late the wake-up came)."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    due = next_beat(now, interval)
    await asyncio.sleep(due - now)
    return due
