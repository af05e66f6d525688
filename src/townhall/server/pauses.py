"""Report the garbage collector's long pauses: while it runs, no packet is forwarded.

``watch()`` (called by ``townhall serve``) logs a warning for every collection that held the
process for longer than ``LONG`` seconds, with its generation and how many objects it freed, so
that an operator who hears a meeting stutter can see whether the collector was the cause.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

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
