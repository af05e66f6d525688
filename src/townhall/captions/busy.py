"""How busy recognition keeps the engine, so partials can give way to finals under overload.

Every ``poll``/``finish`` reports how long it worked; ``BusyMeter.fraction`` is the share of the
last ``window`` seconds spent working (summed over speakers, so it can pass 1.0 with several
threads). ``partial_stretch`` turns it into a factor for the partial interval: 1 up to
``relaxed`` (60 %), then growing by one for every further 10 %, at most ``most`` (5): at 90 %
busy, partials come every 4 s instead of every second, and the time saved goes to the finals,
which are what the transcript keeps. With speakers in proportion to the machine, the meter stays
under 60 % and nothing changes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class BusyMeter:
    def __init__(
        self,
        window: float = 10.0,
        relaxed: float = 0.6,
        most: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.relaxed = relaxed
        self.most = most
        self._clock = clock
        self._spans: deque[tuple[float, float]] = deque()  # (start, end), in clock seconds
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def add(self, start: float, end: float) -> None:
        with self._lock:
            self._spans.append((start, end))
            self._forget(end)

    def fraction(self) -> float:
        now = self._clock()
        with self._lock:
            self._forget(now)
            since = now - self.window
            worked = sum(end - max(start, since) for start, end in self._spans if end > since)
        return worked / self.window

    def partial_stretch(self) -> float:
        busy = self.fraction()
        if busy <= self.relaxed:
            return 1.0
        return min(self.most, 1.0 + (busy - self.relaxed) * 10)

    def _forget(self, now: float) -> None:
        while self._spans and self._spans[0][1] <= now - self.window:
            self._spans.popleft()
