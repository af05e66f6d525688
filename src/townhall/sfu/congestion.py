"""A send-side bandwidth estimate from packet send and arrival times (Google congestion control,
draft-ietf-rmcat-gcc-02, with the trendline filter of libwebrtc), small enough for Python.

``twcc.py`` feeds it the packets the receiver reported on (send time, arrival time, size).
Packets sent within ``BURST_MS`` of each other form a group (a video frame, mostly); for each
group the *delay variation* is how much longer it took to arrive after the previous group than
it took to be sent after it. Growing queues on the path make those add up: the filter smooths
the accumulated delay, fits a line through the last ``WINDOW`` groups, and a slope above an
adaptive threshold for long enough is **overuse**.

The rate control then works on the *delivered rate*: what arrived over the last half second, or
over the last ``DELIVERED_MIN_PACKETS`` packets where fewer than that arrived in it (a small layer
at a low frame rate: 15 packets a second or so), as long as they arrived within
``DELIVERED_MAX_WINDOW_MS``. A stream sparser than that has no delivered rate, and then feedback
gives no estimate: an estimate from before would be old news, which the estimate's user would
take for a fresh report (``bandwidth.Estimate`` raises a transport's estimate by itself once
reports stop).

- overuse: the estimate drops to 0.85 times the delivered rate (at most once per ``RTT_MS``);
- normal: it grows 8 % a second, never past 1.5 times the delivered rate; and once no drop is
  recent, it is at least 95 % of the delivered rate, so a probe that got through counts at once;
- underuse (queues draining): it holds.

All times are milliseconds given by the caller; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

BURST_MS = 5.0
WINDOW = 20
SMOOTHING = 0.9
GAIN = 4.0
#: Adaptive threshold (ms): start, bounds, and how fast it follows up and down.
THRESHOLD = 12.5
MIN_THRESHOLD, MAX_THRESHOLD = 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039
#: A trend this far (ms) past the threshold is an outlier the threshold does not follow...
OUTLIER = 15.0
#: ... and it follows at most this much time (ms) at once.
THRESHOLD_STEP_MS = 100.0
#: The trend counts as if from at most this many groups.
MAX_DELTAS = 60
#: Overuse must last this long (ms) over more than one group.
OVERUSE_TIME_MS = 10.0
DELIVERED_WINDOW_MS = 500.0
#: Fewer packets than this in the window give no delivered rate; where fewer arrived within
#: ``DELIVERED_WINDOW_MS``, the window reaches back to this many, up to
#: ``DELIVERED_MAX_WINDOW_MS``.
DELIVERED_MIN_PACKETS = 10
DELIVERED_MAX_WINDOW_MS = 2000.0
#: The window holds at most this many packets (``_twcc.c``'s ring, ``DELIVERED_SLOTS``); past
#: that the oldest leave early, and the rate is over what it holds, however short (arrivals
#: that jump back in time would otherwise keep every later packet in it).
DELIVERED_SLOTS = 2048
DELIVERED_SHARE = 0.95
DECREASE = 0.85
INCREASE_PER_SECOND = 1.08
MAX_GROWTH = 1.5
#: ... plus this many bit/s.
GROWTH_HEADROOM = 10_000
RTT_MS = 200.0
#: After a drop, the delivered rate does not hold the estimate up for this long (ms).
DROP_QUIET_MS = 2000.0


class Usage(Enum):
    NORMAL = 0
    UNDERUSE = 1
    OVERUSE = 2


class DelayBasedEstimate:
    __slots__ = (
        "_accumulated",
        "_arrival_origin",
        "_delivered",
        "_delivered_bytes",
        "_dropped_at",
        "_group",
        "_overflowed",
        "_overuse_count",
        "_overuse_time",
        "_pending_groups",
        "_pending_send",
        "_points",
        "_previous",
        "_previous_trend",
        "_smoothed",
        "_threshold",
        "_threshold_at",
        "_updated_at",
        "delivered_rate",
        "deltas",
        "estimate",
        "usage",
    )

    def __init__(self) -> None:
        #: The current group: [first send, last send, last arrival, bytes].
        self._group: list[float] | None = None
        #: The last complete group's (last send, last arrival).
        self._previous: tuple[float, float] | None = None
        self._arrival_origin: float | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._previous_trend = 0.0
        self._threshold = THRESHOLD
        self._threshold_at: float | None = None
        self._overuse_time = 0.0
        self._overuse_count = 0
        #: Groups completed (and their send time) since overuse was last looked for.
        self._pending_groups = 0
        self._pending_send = 0.0
        self._delivered: deque[tuple[float, int]] = deque()
        #: The sum of the sizes in ``_delivered``, kept as packets come and go.
        self._delivered_bytes = 0
        #: The window was full since the rate was last taken: it holds less than it should.
        self._overflowed = False
        self._dropped_at = -1e12
        self._updated_at: float | None = None
        self.deltas = 0
        self.usage = Usage.NORMAL
        #: Bit/s, None until the first delivered rate is known.
        self.estimate: float | None = None
        #: The delivered rate the last update found (bit/s; None: none).
        self.delivered_rate: float | None = None

    def packet(self, send_ms: float, arrival_ms: float, size: int) -> None:
        """One packet the receiver reported (in the order of sending)."""
        if len(self._delivered) == DELIVERED_SLOTS:
            self._overflowed = True
            self._delivered_bytes -= self._delivered.popleft()[1]
        self._delivered.append((arrival_ms, size))
        self._delivered_bytes += size
        group = self._group
        if group is None:
            self._group = [send_ms, send_ms, arrival_ms, size]
            return
        if send_ms - group[0] <= BURST_MS:
            if send_ms > group[1]:
                group[1] = send_ms
            if arrival_ms > group[2]:
                group[2] = arrival_ms
            group[3] += size
            return
        self.group(group[1], group[2])
        self._group = [send_ms, send_ms, arrival_ms, size]

    def group(self, send_ms: float, arrival_ms: float) -> None:
        """A group of packets is complete: its last send and arrival times."""
        previous = self._previous
        self._previous = (send_ms, arrival_ms)
        if previous is None:
            self._arrival_origin = arrival_ms
            return
        send_delta = send_ms - previous[0]
        variation = (arrival_ms - previous[1]) - send_delta
        self.deltas += 1
        self._accumulated += variation
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        assert self._arrival_origin is not None
        self._points.append((arrival_ms - self._arrival_origin, self._smoothed))
        self._pending_send += send_delta
        self._pending_groups += 1

    def _detect(self, trend: float, send_delta: float, groups: int, now_ms: float) -> None:
        modified = min(self.deltas, MAX_DELTAS) * trend * GAIN
        if modified > self._threshold:
            self._overuse_time += send_delta
            self._overuse_count += groups
            if self._overuse_time > OVERUSE_TIME_MS and self._overuse_count > 1 and \
                    trend >= self._previous_trend:
                self._overuse_time = 0.0
                self._overuse_count = 0
                self.usage = Usage.OVERUSE
        elif modified < -self._threshold:
            self._overuse_time = 0.0
            self._overuse_count = 0
            self.usage = Usage.UNDERUSE
        else:
            self._overuse_time = 0.0
            self._overuse_count = 0
            self.usage = Usage.NORMAL
        self._previous_trend = trend
        # The threshold follows the trend, slowly up and faster down, unless it is an outlier.
        if self._threshold_at is None:
            self._threshold_at = now_ms
        if abs(modified) < self._threshold + OUTLIER:
            k = K_DOWN if abs(modified) < self._threshold else K_UP
            elapsed = min(max(now_ms - self._threshold_at, 0.0), THRESHOLD_STEP_MS)
            self._threshold += k * (abs(modified) - self._threshold) * elapsed
            self._threshold = min(MAX_THRESHOLD, max(MIN_THRESHOLD, self._threshold))
        self._threshold_at = now_ms

    def delivered(self) -> float | None:
        """Bit/s that arrived over the last ``DELIVERED_WINDOW_MS``, or over the last
        ``DELIVERED_MIN_PACKETS`` packets where fewer arrived in it, if they arrived within
        ``DELIVERED_MAX_WINDOW_MS`` (None: too little seen)."""
        delivered = self._delivered
        if not delivered:
            return None
        newest = delivered[-1][0]
        while delivered and delivered[0][0] < newest - DELIVERED_WINDOW_MS and (
                len(delivered) > DELIVERED_MIN_PACKETS
                or delivered[0][0] < newest - DELIVERED_MAX_WINDOW_MS):
            self._delivered_bytes -= delivered.popleft()[1]
        span = newest - delivered[0][0]
        overflowed, self._overflowed = self._overflowed, False
        if len(delivered) < DELIVERED_MIN_PACKETS or span <= 0 or (
                span < DELIVERED_WINDOW_MS / 2 and not overflowed):
            return None
        return self._delivered_bytes * 8000 / span

    def update(self, now_ms: float) -> float | None:
        """After a feedback packet: detect overuse over the groups it completed (once, which
        keeps the cost per packet small), run the rate control; returns the estimate in bit/s,
        or None without a delivered rate (nothing new to say). (``_twcc.c`` does the same in C,
        step for step.)
        """
        self.delivered_rate = rate = self.delivered()
        if self._pending_groups and len(self._points) >= 2:
            self._detect(_slope(self._points), self._pending_send, self._pending_groups, now_ms)
            self._pending_send = 0.0
            self._pending_groups = 0
        if rate is None:
            return None
        elapsed = 0.0 if self._updated_at is None else max(0.0, now_ms - self._updated_at)
        self._updated_at = now_ms
        estimate = self.estimate
        if self.usage is Usage.OVERUSE:
            if now_ms - self._dropped_at >= RTT_MS:
                self.estimate = DECREASE * rate
                self._dropped_at = now_ms
            self.usage = Usage.NORMAL  # one decrease per overuse signal
            return self.estimate
        if estimate is None:
            estimate = DELIVERED_SHARE * rate
        elif self.usage is Usage.NORMAL:
            grown = estimate * INCREASE_PER_SECOND ** (elapsed / 1000)
            estimate = max(estimate, min(grown, MAX_GROWTH * rate + GROWTH_HEADROOM))
        if now_ms - self._dropped_at >= DROP_QUIET_MS:
            estimate = max(estimate, DELIVERED_SHARE * rate)
        self.estimate = estimate
        return estimate


def _slope(points: deque[tuple[float, float]]) -> float:
    """Least-squares slope of ``points``. The sums are plain left-to-right additions, as in
    ``_twcc.c`` (``sum()`` of floats rounds differently from Python 3.12 on)."""
    count = len(points)
    sum_x = sum_y = 0.0
    for x, y in points:
        sum_x += x
        sum_y += y
    mean_x, mean_y = sum_x / count, sum_y / count
    numerator = denominator = 0.0
    for x, y in points:
        dx = x - mean_x
        numerator += dx * (y - mean_y)
        denominator += dx * dx
    return numerator / denominator if denominator else 0.0
