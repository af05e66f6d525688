"""How much a consumer transport may carry, and which video fits in it.

**Estimate.** Each transport the SFU sends on has an :class:`Estimate`, fed by its receiver's
REMB (RTCP ``goog-remb``): aiortc and Chromium receivers estimate the available bandwidth from
the arrival times of packets carrying ``abs-send-time`` (the SFU writes that extension on every
forwarded video packet) and report it about once a second while video reaches them, at once when
it drops. Until the first report the transport is assumed to carry ``INITIAL_BITRATE``; a receiver
that never reports is not limited; when reports stop (video was cut, so the receiver has nothing
to measure) the estimate is raised step by step until video flows and is measured again. The
clock is injected, so tests never sleep.

**Allocation** (:func:`allocate`, pure). Audio is never dropped for video: its measured bitrate
is taken off the estimate first. Then, most important video first, each video gets its lowest
layer while the budget lasts (a video whose lowest layer does not fit is not forwarded); then
the videos are raised one layer at a time, in the same order, while the next layer fits, never
above the layer their layout allows. Raising needs a margin over the measured cost and is held
off for a while after the estimate dropped, so the layers do not flap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: What a transport is assumed to carry before its receiver reports, in bit/s.
INITIAL_BITRATE = 1_500_000
#: A transport whose receiver sent no estimate this long after it started is not limited.
FEEDBACK_WAIT = 6.0
#: A receiver reports while video reaches it; once its last report is this old (usually
#: because video was cut), the estimate is raised by ``RETRY_FACTOR`` to try video again.
FEEDBACK_EXPIRY = 4.0
RETRY_FACTOR = 1.5
#: Share of the estimate that allocation hands out (the rest absorbs bitrate peaks).
HEADROOM = 0.9
#: A layer is raised only if its extra cost times this fits.
UPGRADE_MARGIN = 1.15
#: After the estimate dropped, no layer is raised for this long, in seconds.
UPGRADE_HOLD = 3.0
#: A drop of the estimate by more than this share makes the allocation run at once.
DROP_RATIO = 0.1
#: What one audio consumer is assumed to need before its bitrate is measured, in bit/s.
AUDIO_BITRATE = 48_000


class Estimate:
    """The available bandwidth of one transport the SFU sends on."""

    __slots__ = ("_clock", "_created", "_updated_at", "bitrate", "dropped_at", "reports")

    def __init__(self, clock: Callable[[], float], initial: int = INITIAL_BITRATE) -> None:
        self._clock = clock
        self._created = clock()
        self._updated_at = -1.0
        self.bitrate = initial
        self.dropped_at = -1e9
        self.reports = 0

    def update(self, bitrate: int) -> bool:
        """A new estimate from the receiver; True when it dropped enough to reallocate now."""
        now = self._clock()
        bitrate = max(0, bitrate)
        dropped = bitrate < self.bitrate * (1 - DROP_RATIO)
        if bitrate < self.bitrate:
            self.dropped_at = now
        self.bitrate = bitrate
        self._updated_at = now
        self.reports += 1
        return dropped

    def value(self) -> int | None:
        """Bit/s this transport may carry, or None when it is not limited."""
        now = self._clock()
        if self._updated_at < 0:
            return self.bitrate if now - self._created < FEEDBACK_WAIT else None
        if now - self._updated_at > FEEDBACK_EXPIRY:
            self.bitrate = int(self.bitrate * RETRY_FACTOR)
            self._updated_at = now
        return self.bitrate

    def may_raise(self) -> bool:
        return self._clock() - self.dropped_at >= UPGRADE_HOLD


@dataclass(slots=True)
class VideoDemand:
    """One video consumer as allocation sees it."""

    #: Measured bitrate of each layer, lowest first; 0 for a layer the producer is not sending.
    bitrates: list[int]
    #: The highest layer the layout allows (-1: hidden).
    max_layer: int
    #: The layer forwarded now (-1: none), for the upgrade margin.
    current: int = -1
    #: Higher goes first.
    priority: int = 0


def allocate(budget: int | None, demands: list[VideoDemand], may_raise: bool = True) -> list[int]:
    """The layer to forward for each demand (-1: none), for a video budget in bit/s.

    ``budget`` None means unlimited: every video gets its highest allowed layer.
    """
    targets = [-1] * len(demands)
    choices: list[list[int]] = []
    for demand in demands:
        allowed = min(demand.max_layer, len(demand.bitrates) - 1)
        active = [i for i in range(allowed + 1) if demand.bitrates[i] > 0]
        if not active and allowed >= 0:
            # Nothing measured yet (a new producer): start on the lowest layer, for free.
            active = [0]
        choices.append(active)
    if budget is None:
        return [c[-1] if c else -1 for c in choices]
    order = sorted(range(len(demands)), key=lambda i: -demands[i].priority)
    remaining = budget
    for i in order:
        if choices[i]:
            cost = demands[i].bitrates[choices[i][0]]
            if cost <= remaining:
                targets[i] = choices[i][0]
                remaining -= cost
    raised = True
    while raised:
        raised = False
        for i in order:
            if targets[i] < 0:
                continue
            position = choices[i].index(targets[i])
            if position + 1 >= len(choices[i]):
                continue
            higher = choices[i][position + 1]
            extra = demands[i].bitrates[higher] - demands[i].bitrates[targets[i]]
            if higher > demands[i].current:
                if not may_raise:
                    continue
                extra_needed = extra * UPGRADE_MARGIN
            else:
                extra_needed = extra
            if extra_needed <= remaining:
                targets[i] = higher
                remaining -= extra
                raised = True
    return targets


def video_budget(estimate: int | None, audio_bitrates: list[int]) -> int | None:
    """What is left for video of ``estimate`` once audio is served."""
    if estimate is None:
        return None
    audio = sum(bitrate or AUDIO_BITRATE for bitrate in audio_bitrates)
    return max(0, int(estimate * HEADROOM) - audio)
