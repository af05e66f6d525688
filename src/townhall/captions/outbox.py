"""Captions waiting to be sent to one room, in order.

A partial caption is only worth showing now: it is queued only while the room's socket is up,
replaces an unsent partial of the same utterance, and is dropped when the socket drops. A final
caption is kept until it has been handed to an open socket, however long the server is away,
so that a server or network outage loses no transcript (up to ``limit`` finals, a few hours of
talk; past that the oldest go, and the count is logged).

A final handed to a socket that closes soon after may never have been read by the server (it
was stopping), and nothing acknowledges captions; so finals sent within ``resend_window`` seconds
before a drop are sent again after it. The server stores each utterance once, so a final it did
read is not stored twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Most finals kept for one room while it cannot be reached.
FINAL_LIMIT = 5000
#: Finals sent this many seconds before a drop are sent again after it.
RESEND_WINDOW = 5.0


class CaptionOutbox:
    def __init__(self, limit: int = FINAL_LIMIT, resend_window: float = RESEND_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.resend_window = resend_window
        self._clock = clock
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._recent: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def finals(self) -> int:
        return sum(1 for m in self._queue if m["final"])

    @property
    def unconfirmed(self) -> int:
        """Finals not yet known to be stored: queued, or sent in the resend window."""
        return self.finals + len(self._recent)

    def post(self, message: dict[str, Any], connected: bool) -> None:
        """Queue a ``caption`` message (``final`` and ``utterance`` are read from it)."""
        utterance = message["utterance"]
        if not message["final"] and not connected:
            return
        # An unsent partial of the same utterance is out of date now.
        self._queue = collections.deque(
            m for m in self._queue if m["final"] or m["utterance"] != utterance)
        self._queue.append(message)
        if self.finals > self.limit:
            oldest = next(m for m in self._queue if m["final"])
            self._queue.remove(oldest)
            self.dropped += 1
            logger.warning("%d final captions dropped: the server was away too long",
                           self.dropped)
        self._ready.set()

    def disconnected(self) -> None:
        """The socket dropped: partials are stale, finals wait, recent finals go again."""
        self._forget_old()
        again = [m for _, m in self._recent]
        self._recent.clear()
        self._queue = collections.deque(again + [m for m in self._queue if m["final"]])

    def peek(self) -> dict[str, Any] | None:
        return self._queue[0] if self._queue else None

    def sent(self, message: dict[str, Any]) -> None:
        """``message`` (the head, from :meth:`peek`) went out."""
        if self._queue and self._queue[0] is message:
            self._queue.popleft()
            if message["final"]:
                self._recent.append((self._clock(), message))
                self._forget_old()

    def confirmed(self) -> None:
        """The server closed the socket after reading all we sent (it answered ``leave``)."""
        self._recent.clear()

    def _forget_old(self) -> None:
        horizon = self._clock() - self.resend_window
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()

    def take_over(self, other: CaptionOutbox) -> None:
        """Queue ``other``'s finals ahead of ours (an earlier session of the same room)."""
        self._queue = collections.deque(
            [m for m in other._queue if m["final"]] + list(self._queue))
        other._queue.clear()
        if self._queue:
            self._ready.set()

    async def wait(self) -> None:
        """Until something is queued."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
