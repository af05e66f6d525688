"""The server's forwarding-delay histogram (``townhall_forwarding_delay_seconds`` in
``/metrics``) between two scrapes: the packets added per bucket and interpolated quantiles.

The server fills it only with ``measure_forwarding_delay`` on (``TownhallTarget(measure_delay=
True)``); see ``townhall/sfu/delay.py`` for what one sample measures.
"""

from __future__ import annotations

import re

_BUCKET = re.compile(r'^townhall_forwarding_delay_seconds_bucket\{le="([^"]+)"\} (\d+)$', re.M)


def delay_buckets(metrics: str) -> list[tuple[float, int]]:
    """(upper bound in seconds, cumulative count) of the forwarding-delay histogram."""
    return [(float("inf") if le == "+Inf" else float(le), int(n))
            for le, n in _BUCKET.findall(metrics)]


def histogram(before: list[tuple[float, int]],
              after: list[tuple[float, int]]) -> dict[str, int]:
    """Samples per bucket added between two scrapes, keyed by the bucket's bound in ms."""
    counts = dict(before)
    out: dict[str, int] = {}
    previous = 0
    for bound, n in after:
        added = n - counts.get(bound, 0)
        out["inf" if bound == float("inf") else f"{bound * 1000:g}"] = added - previous
        previous = added
    return out


def percentile(before: list[tuple[float, int]], after: list[tuple[float, int]],
               q: float) -> tuple[float | None, int]:
    """The ``q`` quantile (seconds) of the samples added between two scrapes, interpolated
    within its bucket, and the number of samples."""
    if not after:
        return None, 0
    counts = dict(before)
    cumulative = [(bound, n - counts.get(bound, 0)) for bound, n in after]
    total = cumulative[-1][1]
    if total <= 0:
        return None, 0
    rank = q * total
    lower, below = 0.0, 0
    for bound, n in cumulative:
        if n >= rank:
            if bound == float("inf"):
                return lower, total
            inside = n - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0), total
        lower, below = bound, n
    return lower, total
