"""The video of one transport the SFU sends on: which consumers forward, on which layer.

``bandwidth.py`` holds the estimate and the pure allocation; this module feeds the estimate
(REMB, or transport-wide congestion control feedback through ``twcc.py`` once the far end
accepted it) and applies the allocation to the transport's consumers (the router's periodic
work, and feedback, never per packet): it sets each video consumer's target layer, notes
whether video had to be cut altogether, and spreads bandwidth probes over the forwarding
consumers as padding owed after their next frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from townhall.sfu import bandwidth, twcc

if TYPE_CHECKING:
    from townhall.sfu.consumer import Consumer

logger = logging.getLogger(__name__)

#: Padding owed to a consumer is at most this many probe intervals' worth (frames may be far
#: apart).
PADDING_BACKLOG = 4
#: Receiver reports about fewer video packets than this say too little to bound an estimate.
LOSS_MIN_PACKETS = 20


class VideoAllocation:
    """Allocation state of one transport."""

    __slots__ = ("_reported_lost", "_reported_sent", "estimate", "forwarding", "growth",
                 "low_bandwidth", "name", "padded", "probe_rate", "resend", "twcc")

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.estimate = bandwidth.Estimate(clock)
        #: What retransmissions may take of it (set from the estimate on every run).
        self.resend = bandwidth.ResendBudget(clock)
        #: Ids of the video consumers given a layer by the last run.
        self.forwarding: frozenset[str] = frozenset()
        #: Video is cut because even the lowest layer of one video does not fit.
        self.low_bandwidth = False
        #: Bit/s of probe padding to send (0: none).
        self.probe_rate = 0
        #: Probe padding was given out since the consumers' padding was last cleared.
        self.padded = False
        #: How far past what gets through the estimate can grow (see ``bandwidth.probe_rate``).
        self.growth = bandwidth.ESTIMATE_GROWTH
        #: Transport-wide sequence numbers and their feedback, once the far end accepted them.
        self.twcc: twcc.TwccSender | None = None
        #: Video packets the receiver's reports covered since the loss was last judged, and
        #: how many of them it reported lost.
        self._reported_sent = self._reported_lost = 0.0

    def use_twcc(self, consumers: Iterable[Consumer]) -> None:
        """After a negotiation: the consumers whose far end accepted transport-wide congestion
        control number their packets with the transport's sequence (the estimate then comes
        from its feedback rather than from REMB)."""
        consumers = list(consumers)
        ids = {c.slot.twcc for c in consumers if c.slot.twcc is not None}
        if not ids:
            return
        if self.twcc is None or self.twcc.extension_id not in ids:
            logger.debug("%s: transport-wide congestion control", self.name)
            self.twcc = twcc.TwccSender(min(ids))
            self.growth = twcc.DELIVERED_SHARE
            self.estimate.source = "transport-cc"
        for consumer in consumers:
            consumer.twcc = self.twcc if consumer.slot.twcc == self.twcc.extension_id else None

    def transport_feedback(self, raw: bytes) -> bool:
        """A transport feedback packet; True when the estimate dropped (allocate at once).
        Raises ``ValueError`` if it is malformed."""
        if self.twcc is None:
            return False
        estimate = self.twcc.feedback(raw)
        return False if estimate is None else self.estimated(estimate)

    def estimated(self, bitrate: float) -> bool:
        """The estimate transport feedback gave (here, or read by the socket's native reader);
        True when it dropped (allocate at once)."""
        logger.debug("%s: transport feedback: estimate %d bit/s (probing at %d)", self.name,
                     bitrate, self.probe_rate)
        return self.estimate.update(int(bitrate))

    def remb(self, bitrate: int) -> bool:
        """A REMB from the far end (ignored once transport feedback is used); True when the
        estimate dropped (allocate at once)."""
        if self.twcc is not None:
            return False
        logger.debug("%s: REMB %d bit/s (probing at %d)", self.name, bitrate, self.probe_rate)
        return self.estimate.update(bitrate)

    def receiver_reports(self, reports: Iterable[tuple[Consumer, int]]) -> bool:
        """What the far end reported lost of video consumers' streams (fraction lost in
        1/256): the share lost of what was sent since each stream's last report, weighted by
        how much that was and added up over reports until they cover ``LOSS_MIN_PACKETS``,
        bounds the estimate. True when it bounded it lower (allocate at once)."""
        for consumer, fraction in reports:
            packets = consumer.packets - consumer.packets_at_receiver_report
            consumer.packets_at_receiver_report = consumer.packets
            self._reported_sent += packets
            self._reported_lost += packets * fraction / 256
        sent = self._reported_sent
        if sent < LOSS_MIN_PACKETS:
            return False
        share = self._reported_lost / sent
        self._reported_sent = self._reported_lost = 0.0
        if not self.estimate.lost(share, None if self.twcc is None else self.twcc.delivered()):
            return False
        logger.debug("%s: %.0f %% of the video reported lost: estimate bounded to %s bit/s",
                     self.name, 100 * share, self.estimate.loss_bound)
        return True

    def run(self, consumers: Iterable[Consumer], now: float) -> bool:
        """Choose every video consumer's layer; True when ``forwarding`` or ``low_bandwidth``
        changed."""
        video = [c for c in consumers
                 if c.producer.kind == "video" and not c.paused and not c.producer.paused
                 and c.slot.payload_type is not None]
        demands = [
            bandwidth.VideoDemand(
                [layer.bitrate if layer.active(now) else 0 for layer in c.producer.layers],
                # What the last run chose counts as current, reached or not: no flapping
                # while a switch waits for its keyframe.
                c.max_layer, c.target if c.target >= 0 else c.layer, c.priority)
            for c in video
        ]
        estimate = self.estimate
        wanted = any(d.max_layer >= 0 for d in demands)
        budget = estimate.value(wanted)
        self.resend.set_estimate(budget)
        may_raise = estimate.may_raise()
        allocation = bandwidth.allocate(budget, demands, may_raise)
        if may_raise and allocation.total == 0 and allocation.wanted:
            # Video is cut and the hold has passed: try the lowest layer again.
            estimate.retry(int(allocation.wanted * bandwidth.UPGRADE_MARGIN) + 1)
            budget = estimate.value()
            allocation = bandwidth.allocate(budget, demands, may_raise)
        self.probe_rate = bandwidth.probe_rate(budget, allocation, may_raise, self.growth)
        for consumer, target in zip(video, allocation.targets, strict=True):
            if target != consumer.target:
                logger.debug("%s: %s of %s to layer %d (estimate %s, layers %s)",
                             self.name, consumer.id, consumer.producer.id, target, budget,
                             [layer.bitrate for layer in consumer.producer.layers])
            consumer.set_target(target)
            if target >= 0 and consumer.layer != target:
                consumer.producer.request_keyframe(target)
        forwarding = frozenset(c.id for c in video if c.target >= 0)
        low = wanted and not forwarding
        if forwarding == self.forwarding and low == self.low_bandwidth:
            return False
        if low and not self.low_bandwidth:
            logger.info("%s: video cut for lack of bandwidth (estimate %s bit/s)", self.name,
                        budget)
        self.forwarding, self.low_bandwidth = forwarding, low
        return True

    def probe(self, consumers: Iterable[Consumer], interval: float) -> None:
        """Give the forwarding video consumers their share of ``interval`` seconds of probe
        padding (or none, when not probing)."""
        if not self.probe_rate:
            if self.padded:  # probing stopped: what is still owed is not sent
                for consumer in consumers:
                    consumer.padding = 0
                self.padded = False
            return
        video = [c for c in consumers
                 if c.producer.kind == "video" and c.layer >= 0 and not c.paused]
        if not video:
            return
        self.padded = True
        share = int(self.probe_rate * interval / 8 / len(video))
        for consumer in video:
            consumer.padding = min(consumer.padding + share, share * PADDING_BACKLOG)
