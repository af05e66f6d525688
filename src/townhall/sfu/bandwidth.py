"""How much a consumer transport may carry, which video fits in it, and how to find out more.

**Estimate.** Each transport the SFU sends on has an :class:`Estimate`, fed either by the SFU's
own estimate from transport-wide congestion control feedback (``twcc.py``, when the far end
accepted it: Chromium does) or by the receiver's REMB (RTCP ``goog-remb``): aiortc and Chromium
receivers estimate the bandwidth available from the arrival times of video packets carrying
``abs-send-time`` (the SFU writes that extension on every forwarded video packet) and report it
about once a second while video reaches them, at once when it drops. Until the first report the
transport is assumed to carry ``INITIAL_BITRATE``; a receiver that never reports is not limited;
when reports stop (video was cut, so the receiver has nothing to measure) the estimate is raised
step by step until video flows and is measured again, but only while some video is wanted (a
page that shows none for a while keeps its estimate as it was). The clock is injected, so tests
never sleep.

Such an estimate starts at the throughput measured, never grows beyond about 1.5 times the
throughput seen (REMB; the SFU's own goes up to what got through), and drops to 0.85 times the
throughput when it sees the queues grow. So: what is forwarded now is kept while it stays
within ``KEEP_TOLERANCE`` of the estimate (an estimate equal to the current rate is not a
reason to go down); going up needs ``UPGRADE_MARGIN`` over the new total; and to let the
estimate grow past what is being sent the SFU **probes**: it sends RTP padding after frames
(which receivers measure, then discard) at the rate the next layer needs (:func:`probe_rate`).
After a drop no layer is raised and nothing is probed for ``UPGRADE_HOLD`` seconds, doubled for
each further drop within a minute that follows a hold's end, so a link that is really full is
not pushed every few seconds. Drops while the hold lasts are the same congestion: they start it
again but do not double it, or a stretch of heavy loss (which bounds the estimate every 0.5 s)
would hold the layers down for a minute after the link recovered. The first estimate from
transport feedback is no drop, however far under ``INITIAL_BITRATE``: it comes half a second after
video started, and says how much of the lowest layers got through, not that the link is full
(counted as one, it held a new viewer's video on its lowest layer for three seconds).

**Loss.** Neither estimate sees loss: on a link that drops what it cannot carry rather than
queueing it (a shallow buffer, a policer), the delays stop growing once the queue is full and
the delay-based estimate goes on growing with what gets through, so a probe for the next layer
would overfill the link for as long as it lasts. So the receiver's reports bound it too, as
Google congestion control's loss-based part does: while more than ``LOSS_HIGH`` of the video
sent is reported lost, the bound drops to (1 - loss / 2) times the estimate, which counts as a
drop (the hold above); while less than ``LOSS_LOW`` is, it grows by ``LOSS_GROWTH`` a report
until the estimate is below it again, or at once to the rate that got through where transport
feedback measures it (what arrived with hardly any loss, probes included, is what the link
carries: growing 5 % a report, a bound set on a narrow link took half a minute to let the top
layer back once the link opened).

Both estimates measure video only (audio carries neither extension: it is cross traffic to
them), so they are the video budget: audio is never dropped for video and is not counted
against it.

**Allocation** (:func:`allocate`, pure). Most important video first, each video gets its lowest
layer while the budget lasts (a video whose lowest layer does not fit is not forwarded: with
none left the transport is audio-only); then the videos are raised one layer at a time, in the
same order, while the next layer fits, never above the layer their layout allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: What a transport is assumed to carry before its receiver reports, in bit/s.
INITIAL_BITRATE = 1_500_000
#: A transport whose receiver sent no estimate this long after it started is not limited
#: (Chromium's first report comes about 5 s after video started).
FEEDBACK_WAIT = 10.0
#: A receiver reports while video reaches it; once its last report is this old (usually
#: because video was cut), the estimate is raised by ``RETRY_FACTOR`` to try video again.
FEEDBACK_EXPIRY = 4.0
RETRY_FACTOR = 1.5
#: What is forwarded now is kept while its cost is within this factor of the estimate.
KEEP_TOLERANCE = 1.12
#: The lowest layer of the most important video is kept longer: cutting all video is drastic,
#: and at low rates the layer's bitrate and the estimate are both noisy.
CUT_TOLERANCE = 1.5
#: After video was cut, it is tried again (at its lowest layer) once ``may_raise`` allows;
#: for this long reports are ignored, so the receiver can measure the video first.
RETRY_GRACE = 2.0
#: Going up a layer needs the new total times this to fit the estimate.
UPGRADE_MARGIN = 1.15
#: After the estimate dropped, no layer is raised (nor probed for) for this long, in seconds;
#: doubled for each further drop within ``DROP_MEMORY`` seconds that comes after the hold
#: ended (layers could go up again), up to ``MAX_UPGRADE_HOLD``. A drop during the hold starts
#: it again, not doubled.
UPGRADE_HOLD = 3.0
MAX_UPGRADE_HOLD = 60.0
DROP_MEMORY = 60.0
#: Drops remembered (the hold reaches ``MAX_UPGRADE_HOLD`` well before).
DROPS_KEPT = 8
#: A drop of the estimate by more than this share makes the allocation run at once.
DROP_RATIO = 0.1
#: Reported loss above this share bounds the estimate; below ``LOSS_LOW`` the bound grows by
#: ``LOSS_GROWTH`` a report (draft-ietf-rmcat-gcc-02, section 6).
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_GROWTH = 1.05
#: The bound drops at most once in this many seconds (reports of several streams, or one
#: that covers the same loss as the last, do not cut it twice).
LOSS_INTERVAL = 0.5
#: Retransmissions may take this share of a transport's estimate, in bursts of at most this
#: many seconds' worth (``ResendBudget``).
RESEND_SHARE = 0.25
RESEND_BURST = 0.2
#: ... but at least this many bytes (two full packets) at once, so that a narrow link's lost
#: packets are resent at all.
RESEND_MIN_BURST = 2_400
#: How far past what it sees a receiver's estimate can grow (REMB: 1.5 times; a little less).
ESTIMATE_GROWTH = 1.4
#: Most a probe adds to a transport, in bit/s.
MAX_PROBE_RATE = 1_500_000


class Estimate:
    """The available bandwidth of one transport the SFU sends on."""

    __slots__ = ("_bounded_at", "_clock", "_created", "_drops", "_ignore_until", "_updated_at",
                 "bitrate", "loss_bound", "reports", "source")

    def __init__(self, clock: Callable[[], float], initial: int = INITIAL_BITRATE) -> None:
        self._clock = clock
        self._created = clock()
        self._updated_at = -1.0
        self._drops: list[float] = []
        self._ignore_until = -1.0
        self.bitrate = initial
        self.reports = 0
        #: Where the reports come from: "remb", or "transport-cc" (``twcc.py``).
        self.source = "remb"
        #: The bound reported loss puts on ``bitrate`` (None: none, see :meth:`lost`).
        self.loss_bound: int | None = None
        self._bounded_at = -LOSS_INTERVAL

    def update(self, bitrate: int) -> bool:
        """A new estimate from the receiver; True when it dropped enough to reallocate now."""
        now = self._clock()
        self.reports += 1
        if now < self._ignore_until:
            return False
        bitrate = max(0, bitrate)
        dropped = bitrate < self.bitrate * (1 - DROP_RATIO)
        # The SFU's own first estimate is what got through of the little video sent in its
        # first half second, not a sign of congestion: it replaces the guess
        # (``INITIAL_BITRATE``) and holds no layer back.
        if dropped and not (self._updated_at < 0 and self.source == "transport-cc"):
            self._dropped(now)
        self.bitrate = bitrate
        self._updated_at = now
        return dropped

    def taking(self) -> bool:
        """Whether a report now would be taken (not while reports are ignored after
        :meth:`retry`)."""
        return self._clock() >= self._ignore_until

    def lost(self, fraction: float, delivered: float | None = None) -> bool:
        """The share of the video sent that the receiver reported lost since its last report,
        and the rate (bit/s) that got through lately where transport feedback measures it;
        True when that bounds the estimate lower (reallocate now)."""
        now = self._clock()
        if fraction > LOSS_HIGH:
            if now - self._bounded_at < LOSS_INTERVAL:
                return False  # the same loss, reported for another stream
            self._bounded_at = now
            current = self.value()
            self.loss_bound = int((self.bitrate if current is None else current)
                                  * (1 - fraction / 2))
            self._dropped(now)
            return True
        if fraction < LOSS_LOW and self.loss_bound is not None:
            self.loss_bound = max(int(self.loss_bound * LOSS_GROWTH), int(delivered or 0))
            if self.loss_bound >= self.bitrate:
                self.loss_bound = None
        return False

    def _dropped(self, now: float) -> None:
        drops = [t for t in self._drops if now - t < DROP_MEMORY]
        if drops and now - drops[-1] < _hold(len(drops)):
            # the same congestion, while the hold lasts: it starts again, as long as it was
            # (a full link reports loss every 0.5 s)
            drops[-1] = now
        else:
            drops.append(now)
        self._drops = drops[-DROPS_KEPT:]

    def retry(self, bitrate: int) -> None:
        """Try ``bitrate`` (video was cut and the hold has passed): take it as the estimate
        and ignore reports for ``RETRY_GRACE`` seconds, while the receiver measures again."""
        now = self._clock()
        self.bitrate = max(self.bitrate, bitrate)
        self.loss_bound = None  # tried afresh: loss bounds it again if it comes back
        self._updated_at = now
        self._ignore_until = now + RETRY_GRACE

    def value(self, wanted: bool = True) -> int | None:
        """Bit/s this transport may carry, or None when it is not limited. ``wanted``: whether
        any video is wanted on it now. While none is (every video hidden, paused or audio-only
        asked for), reports stop for want of video, not of bandwidth: the estimate stays as it
        was, rather than growing by half every ``FEEDBACK_EXPIRY`` to many times what the link
        carries by the time video is wanted again."""
        now = self._clock()
        value: int | None = self.bitrate
        if self._updated_at < 0:
            if now - self._created >= FEEDBACK_WAIT:
                value = None
        elif now - self._updated_at > FEEDBACK_EXPIRY:
            if wanted:
                self.bitrate = value = int(self.bitrate * RETRY_FACTOR)
            self._updated_at = now
        if self.loss_bound is None:
            return value
        return self.loss_bound if value is None else min(value, self.loss_bound)

    def may_raise(self) -> bool:
        """Whether layers may go up (and probes be sent): no recent drop."""
        if not self._drops:
            return True
        now = self._clock()
        recent = sum(1 for t in self._drops if now - t < DROP_MEMORY)
        return now - self._drops[-1] >= _hold(recent)


def _hold(drops: int) -> float:
    """Seconds no layer is raised after the last of ``drops`` drops within ``DROP_MEMORY``."""
    return min(MAX_UPGRADE_HOLD, UPGRADE_HOLD * (1 << max(0, drops - 1)))


class ResendBudget:
    """What a transport may spend on retransmissions (answers to NACKs): a bucket of bytes
    that fills at ``RESEND_SHARE`` of the estimate and holds ``RESEND_BURST`` seconds of it
    (``RESEND_MIN_BURST`` at least).
    On a full link every loss brings NACKs, and answering all of them (a receiver asks again
    for what has not come back within its round trip) would fill it further: the media then
    waits behind copies of itself, and more is lost."""

    __slots__ = ("_clock", "_level", "_updated_at", "rate")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: Bytes a second (None: no limit, the estimate is not known).
        self.rate: float | None = None
        self._level = 0.0
        self._updated_at = clock()

    def set_estimate(self, estimate: int | None) -> None:
        self.rate = None if estimate is None else estimate * RESEND_SHARE / 8

    def take(self, size: int) -> bool:
        """Whether ``size`` bytes may be resent now (taken from the bucket if so)."""
        now = self._clock()
        elapsed, self._updated_at = now - self._updated_at, now
        if self.rate is None:
            return True
        self._level = min(max(self.rate * RESEND_BURST, RESEND_MIN_BURST),
                          self._level + elapsed * self.rate)
        if self._level < size:
            return False
        self._level -= size
        return True


@dataclass(slots=True)
class VideoDemand:
    """One video consumer as allocation sees it."""

    #: Measured bitrate of each layer, lowest first; 0 for a layer the producer is not sending.
    bitrates: list[int]
    #: The highest layer the layout allows (-1: hidden).
    max_layer: int
    #: The layer forwarded now (-1: none): keeping it is easier than going up.
    current: int = -1
    #: Higher goes first.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Allocation:
    #: The layer to forward for each demand (-1: none).
    targets: list[int]
    #: What those layers cost, in bit/s.
    total: int
    #: The total the next step up would need (0 when nothing more is wanted).
    wanted: int


def _choices(demand: VideoDemand) -> list[int]:
    allowed = min(demand.max_layer, len(demand.bitrates) - 1)
    active = [i for i in range(allowed + 1) if demand.bitrates[i] > 0]
    if not active and allowed >= 0:
        # Nothing measured yet (a new producer): start on the lowest layer, for free.
        active = [0]
    return active


def allocate(budget: int | None, demands: list[VideoDemand],
             may_raise: bool = True) -> Allocation:
    """Which layer each demand gets in a video budget of ``budget`` bit/s (None: unlimited)."""
    choices = [_choices(d) for d in demands]
    if budget is None:
        targets = [c[-1] if c else -1 for c in choices]
        return Allocation(targets, sum(d.bitrates[t] for d, t in zip(demands, targets,
                                                                    strict=True) if t >= 0), 0)
    targets = [-1] * len(demands)
    order = sorted(range(len(demands)), key=lambda i: -demands[i].priority)
    total = 0
    blocked = 0  # the extra cost of the first step that did not fit

    def fits(i: int, layer: int, extra: int) -> bool:
        if layer <= demands[i].current:
            tolerance = CUT_TOLERANCE if not total and layer == choices[i][0] else KEEP_TOLERANCE
            return total + extra <= budget * tolerance
        return may_raise and (total + extra) * UPGRADE_MARGIN <= budget

    for i in order:
        if choices[i]:
            lowest = choices[i][0]
            cost = demands[i].bitrates[lowest]
            if fits(i, lowest, cost):
                targets[i] = lowest
                total += cost
            elif not blocked:
                blocked = cost
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
            if fits(i, higher, extra):
                targets[i] = higher
                total += extra
                raised = True
            elif not blocked:
                blocked = extra
    return Allocation(targets, total, total + blocked if blocked else 0)


def probe_rate(estimate: int | None, allocation: Allocation, may_raise: bool,
               growth: float = ESTIMATE_GROWTH) -> int:
    """Bit/s of probe packets to add, so the estimate can grow to what the next step up needs
    (0: no probing). ``growth``: how far past what gets through the estimate can grow (a
    receiver's REMB: ``ESTIMATE_GROWTH``; the SFU's own from transport feedback: a little under
    1, see ``twcc.py``)."""
    if estimate is None or not allocation.wanted or not may_raise:
        return 0
    needed = allocation.wanted * UPGRADE_MARGIN
    if estimate >= needed:
        return 0
    return max(0, min(MAX_PROBE_RATE, int(needed / growth) - allocation.total))
