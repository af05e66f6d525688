"""Simulcast layers of a producer, and which layer fits a consumer.

A producer sends one RTP stream (one SSRC) per layer: a browser publishing with simulcast sends
three encodings of its camera (rids ``q``, ``h``, ``f``: a quarter, half and full resolution); a
producer without simulcast has one layer. Each layer keeps what the SFU knows per SSRC: its packet
cache (for NACKs), reception statistics (for receiver reports), its last sender report, its
measured bitrate and, once a keyframe showed it, its resolution.

Layers are ordered from the lowest to the highest, in the order of the offer's
``a=simulcast`` line (every browser and library lists the lowest first).

A layer no consumer can use costs its producer's uplink and the SFU's receiving for nothing, so
the router asks the producer to send fewer (``SentLayers``, the ``send-layers`` message): the
layers up to the highest one an unpaused consumer may take (its layout cap), and always the
lowest, so that when someone starts watching a picture is there at once. A layer is switched off
only after nobody has wanted it for ``LAYER_IDLE`` seconds, and on again as soon as someone does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from townhall.sfu import rtcp
from townhall.sfu.packet_cache import PacketCache

if TYPE_CHECKING:
    from townhall.sfu.producer import Producer

#: Least time between two keyframe requests for one layer, in seconds.
KEYFRAME_INTERVAL = 0.5
#: Weight of the newest measurement (every 0.5 s) in a layer's smoothed bitrate: keyframes
#: (asked for whenever a consumer switches) make the bitrate jump for a moment.
BITRATE_SMOOTHING = 0.25
#: A layer that sent nothing for this long is taken as switched off by its producer.
LAYER_TIMEOUT = 1.5
#: A layer this much smaller than the display still counts as large enough for it.
SIZE_TOLERANCE = 0.85
#: A layer nobody has wanted for this long is switched off at its producer, in seconds.
LAYER_IDLE = 5.0


class Layer:
    """One RTP stream of a producer."""

    __slots__ = (
        "_counted",
        "_counted_at",
        "bitrate",
        "cache",
        "height",
        "index",
        "keyframe_pending",
        "keyframe_requested_at",
        "last_packet_at",
        "octets",
        "producer",
        "reception",
        "rid",
        "sender_report",
        "ssrc",
        "width",
    )

    def __init__(self, producer: Producer, index: int, rid: str | None, ssrc: int | None,
                 video: bool) -> None:
        self.producer = producer
        self.index = index
        self.rid = rid
        self.ssrc = ssrc
        self.cache = PacketCache(1024) if video else PacketCache(64)
        self.reception = rtcp.ReceptionStats()
        #: (NTP timestamp, RTP timestamp) of the last sender report for this SSRC.
        self.sender_report: tuple[int, int] | None = None
        #: Payload bytes received (updated per packet; headers are left out, as receivers leave
        #: them out of their estimates); ``bitrate`` is computed from it periodically.
        self.octets = 0
        self.bitrate = 0
        self.width = 0
        self.height = 0
        #: When ``measure`` last saw new bytes.
        self.last_packet_at = -1.0
        self.keyframe_requested_at = -1.0
        #: A keyframe request for this layer waits for ``KEYFRAME_INTERVAL`` to pass.
        self.keyframe_pending = False
        self._counted = 0
        self._counted_at = -1.0

    def sender_reported(self, ntp_timestamp: int, rtp_timestamp: int, now: float) -> None:
        """The publisher's sender report for this stream arrived ``now`` (the socket's
        native reader does the same in C, ``read_sender_reports_here``)."""
        self.sender_report = (ntp_timestamp, rtp_timestamp)
        self.reception.sender_report(ntp_timestamp, now)

    def measure(self, now: float) -> int:
        """Update and return the smoothed bitrate (bit/s) from the bytes counted since last time."""
        if self.octets != self._counted:
            self.last_packet_at = now
        if self._counted_at >= 0 and now > self._counted_at:
            rate = (self.octets - self._counted) * 8 / (now - self._counted_at)
            if not self.bitrate:
                self.bitrate = int(rate)
            else:
                self.bitrate = int(BITRATE_SMOOTHING * rate
                                   + (1 - BITRATE_SMOOTHING) * self.bitrate)
        self._counted = self.octets
        self._counted_at = now
        return self.bitrate

    def active(self, now: float) -> bool:
        """The producer is sending this layer."""
        return self.last_packet_at >= 0 and now - self.last_packet_at < LAYER_TIMEOUT

    def __repr__(self) -> str:
        return (f"Layer({self.index}, rid={self.rid!r}, ssrc={self.ssrc}, "
                f"{self.width}x{self.height}, {self.bitrate} bit/s)")


def layer_for_size(layers: list[Layer], width: int, height: int) -> int:
    """The highest layer worth sending to a video shown at ``width`` × ``height``.

    That is the lowest layer about as large as the display (within ``SIZE_TOLERANCE``) in
    either dimension; when none is, the largest layer; -1 for a hidden video (0×0). A layer
    whose size is not known yet (no keyframe seen) never caps.
    """
    if width <= 0 or height <= 0:
        return -1
    for layer in layers:
        if layer.width and (layer.width >= width * SIZE_TOLERANCE
                            or layer.height >= height * SIZE_TOLERANCE):
            return layer.index
    return len(layers) - 1


def needed_layers(producer: Producer) -> int:
    """How many of ``producer``'s layers, lowest first, its consumers can use now: up to the
    highest layer an unpaused consumer may take, and at least one."""
    top = 0
    for consumer in producer.consumers:
        if not consumer.paused and consumer.max_layer > top:
            top = consumer.max_layer
    return min(top, len(producer.layers) - 1) + 1


class SentLayers:
    """How many of a producer's layers, lowest first, it is asked to send."""

    __slots__ = ("_below_since", "_peak", "count")

    def __init__(self, count: int) -> None:
        self.count = count
        self._below_since: float | None = None
        self._peak = 0

    def update(self, needed: int, now: float) -> bool:
        """Take ``needed`` (``needed_layers``) at time ``now``; whether ``count`` changed.

        More layers are asked for at once. Fewer once ``needed`` has stayed below ``count`` for
        ``LAYER_IDLE`` seconds: then as many as the most needed over that time."""
        if needed >= self.count:
            self._below_since = None
            changed = needed > self.count
            self.count = needed
            return changed
        if self._below_since is None:
            self._below_since, self._peak = now, needed
            return False
        self._peak = max(self._peak, needed)
        if now - self._below_since < LAYER_IDLE:
            return False
        self.count = self._peak  # below count, as every value in the window was
        self._below_since = None
        return True
