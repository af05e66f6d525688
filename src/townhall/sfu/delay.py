"""How long the SFU holds each packet it forwards: a histogram for ``/metrics``.

The delay of a forwarded RTP packet is the time from its arrival — the kernel's receive timestamp
of the datagram (``SIOCGSTAMPNS`` on the shared UDP socket, read right after the event loop has
read the datagram) — to the moment the SFU hands the protected copy for one consumer to the
socket. It includes the time the datagram waited in the socket's queue behind others, the
unprotect, routing and the fan-out to the consumers before this one; it leaves out the network.

Measuring costs a system call per received datagram, so it is off unless the configuration asks
for it (``measure_forwarding_delay``; the benchmarks turn it on).
"""

from __future__ import annotations

import bisect
import fcntl
import struct
import time

#: Upper bounds of the histogram's buckets, in seconds (the last bucket is unbounded).
BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
           0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)

_SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@qq")
_EMPTY_TIMESPEC = bytes(_TIMESPEC.size)


class ForwardingDelay:
    """The histogram, and the arrival time of the datagram being handled now."""

    __slots__ = ("_bounds_ns", "arrived_ns", "counts", "sum_ns")

    def __init__(self) -> None:
        self._bounds_ns = [round(b * 1e9) for b in BUCKETS]
        #: Packets per bucket; ``counts[i]`` took at most ``BUCKETS[i]`` (the last: longer).
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum_ns = 0
        #: Kernel arrival time (ns, CLOCK_REALTIME) of the RTP datagram being handled; 0 between
        #: datagrams, so that what is sent from timers is not counted.
        self.arrived_ns = 0

    def arrived(self, fd: int) -> None:
        """The datagram just read from socket ``fd`` is being handled now."""
        try:
            seconds, nanoseconds = _TIMESPEC.unpack(
                fcntl.ioctl(fd, _SIOCGSTAMPNS, _EMPTY_TIMESPEC))
            self.arrived_ns = seconds * 1_000_000_000 + nanoseconds
        except OSError:  # the first datagram: timestamps start with this call
            self.arrived_ns = time.time_ns()

    def done(self) -> None:
        self.arrived_ns = 0

    def sent(self) -> None:
        """One forwarded copy of the current datagram went to its socket now."""
        arrived = self.arrived_ns
        if arrived:
            delay = time.time_ns() - arrived
            self.counts[bisect.bisect_left(self._bounds_ns, delay)] += 1
            self.sum_ns += delay

    def sent_many(self, copies: int) -> None:
        """``copies`` forwarded copies of the current datagram went to the socket now."""
        arrived = self.arrived_ns
        if arrived and copies > 0:
            delay = time.time_ns() - arrived
            self.counts[bisect.bisect_left(self._bounds_ns, delay)] += copies
            self.sum_ns += delay * copies

    @property
    def count(self) -> int:
        return sum(self.counts)
