"""The round trip to a receiver, from its receiver reports on the SFU's sender reports.

A receiver report block echoes the middle 32 bits of the NTP timestamp of the last sender
report the receiver got (LSR) and how long it held it before reporting (DLSR, in 1/65536 s;
RFC 3550 6.4.1). The SFU notes when it sent each sender report on a transport, under that
LSR, so that a report's arrival less the send time less the hold is one round trip. It does
not read the time in the NTP timestamp itself: a consumer's sender report carries its
producer's clock, which lets the receiver match audio and video, not the SFU's.

What it is for: a packet resent to a receiver is resent again no sooner than a round trip
later (:meth:`RoundTrip.resend_interval`), as a browser's own sender does, but never sooner
than the fixed ``consumer.RESEND_INTERVAL`` either. So on a long link (a meeting across
continents, a satellite or mobile link: 200–600 ms) a copy still on its way is not sent again
each time the receiver asks, which Chromium does every 100 ms until it has measured a round
trip of its own; and on a short one the interval stays what it was, since the measured round
trip lags a link whose queue is filling (the shortest sample of each second, smoothed).
"""

from __future__ import annotations

from townhall.sfu.consumer import RESEND_INTERVAL
from townhall.sfu.rtcp import last_sr

#: How long the send time of a sender report is kept (seconds): the longest round trip taken
#: and a receiver's wait before it reports (a few seconds at most).
SENT_KEPT = 10.0
#: Send times kept for one LSR: a consumer's sender report repeats its producer's timestamp
#: until the producer sends a new one (Chromium's audio: every five seconds or so), once a
#: second.
COPIES_KEPT = 12
#: A sample longer than this (seconds) is taken for a mismatch, not a round trip.
MAX_ROUND_TRIP = 5.0
#: Weight of a new sample in the smoothed round trip (as TCP's, RFC 6298).
SMOOTHING = 0.125
#: Samples within this long of each other (seconds) count as one, the shortest: a receiver
#: reports on each stream it receives (dozens a second in a meeting), and a hold of the event
#: loop lengthens every report read during it, which one sample a report would let through.
WINDOW = 1.0
#: How far below zero a sample may be and still count (seconds), as 0: the hold is the
#: difference of two truncated compact NTP times, so it may be one unit (1/65536 s) over.
TOLERANCE = 2 / 65536
#: The longest a resent packet waits before it is resent again (seconds): past a second the
#: link is too slow for a copy to matter.
RESEND_LONGEST = 1.0


class RoundTrip:
    """One transport's round trip, from the reports on the sender reports sent on it."""

    __slots__ = ("_opening", "_sent", "_shortest", "_since", "rtt")

    def __init__(self) -> None:
        #: LSR -> when sender reports with it were sent (the caller's clock), oldest first;
        #: the LSRs in the order of their latest send
        self._sent: dict[int, list[float]] = {}
        #: The smoothed round trip in seconds, None before the first sample: the shortest
        #: sample of the first ``WINDOW``, then smoothed by the shortest of each one after.
        self.rtt: float | None = None
        #: When the window began, the shortest sample in it since then (None: none yet), and
        #: whether it is the first.
        self._since = 0.0
        self._shortest: float | None = None
        self._opening = True

    def sent(self, ntp_timestamp: int, now: float) -> None:
        """A sender report with ``ntp_timestamp`` went out ``now``."""
        key = last_sr(ntp_timestamp)
        if key == 0:
            return  # an LSR of 0 means no report received
        times = self._sent.pop(key, [])
        times.append(now)
        self._sent[key] = times[-COPIES_KEPT:]
        while True:
            oldest = next(iter(self._sent))
            if now - self._sent[oldest][-1] <= SENT_KEPT:
                break
            del self._sent[oldest]

    def reported(self, lsr: int, dlsr: int, now: float) -> float | None:
        """A report block with ``lsr`` and ``dlsr`` arrived ``now``: the round trip it gives,
        also taken into :attr:`rtt`; None when it gives none (no report received yet, one the
        SFU did not send or no longer knows, or a time out of range).

        Of the copies sent with the same timestamp, the report answers the latest that could
        have reached the receiver before it reported: the latest giving no negative time."""
        times = self._sent.get(lsr) if lsr else None
        if times is None:
            return None
        held = dlsr / 65536
        sample = next((now - at - held for at in reversed(times)
                       if now - at - held >= -TOLERANCE), None)
        if sample is None or sample > MAX_ROUND_TRIP:
            return None
        sample = max(sample, 0.0)
        self._take(sample, now)
        return sample

    def _take(self, sample: float, now: float) -> None:
        if self.rtt is None:
            self.rtt, self._since = sample, now
            return
        if now - self._since >= WINDOW:  # the window is over: this sample begins the next
            if self._shortest is not None:
                self.rtt += SMOOTHING * (self._shortest - self.rtt)
            self._since, self._shortest, self._opening = now, None, False
        if self._opening:
            self.rtt = min(self.rtt, sample)
        elif self._shortest is None or sample < self._shortest:
            self._shortest = sample

    def resend_interval(self) -> float:
        """How long a packet resent on this transport waits before it is resent again: a
        round trip (a receiver that asks again sooner has not yet had time to get the copy),
        and at least ``RESEND_INTERVAL``."""
        if self.rtt is None:
            return RESEND_INTERVAL
        return min(max(self.rtt, RESEND_INTERVAL), RESEND_LONGEST)
