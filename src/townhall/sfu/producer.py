"""A producer: one track a participant publishes, fanned out to its consumers."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from townhall.sfu import rtcp, rtp
from townhall.sfu.packet_cache import PacketCache
from townhall.sfu.transport import Codec, IncomingTrack, Transport

if TYPE_CHECKING:
    from townhall.sfu.consumer import Consumer

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Audio louder than this (in -dBov; 0 is loudest) counts as speech.
SPEAKING_LEVEL = 50
#: How long a producer counts as speaking after its last loud packet, in seconds.
SPEAKING_HOLD = 0.6
#: Least time between two keyframe requests sent to one producer, in seconds.
KEYFRAME_INTERVAL = 0.5


class Producer:
    __slots__ = (
        "_clock",
        "_keyframe_requested_at",
        "cache",
        "closed",
        "codec",
        "consumers",
        "id",
        "keyframe_pending",
        "kind",
        "loud_until",
        "mid",
        "owner",
        "paused",
        "reception",
        "sender_report",
        "source",
        "ssrc",
        "track",
        "transport",
    )

    def __init__(
        self,
        owner: str,
        source: str,
        track: IncomingTrack,
        transport: Transport,
        clock: Callable[[], float],
    ) -> None:
        self.id = f"p{next(_ids)}"
        self.owner = owner
        self.source = source
        self.track = track
        self.kind = track.kind
        self.mid = track.mid
        self.codec: Codec = track.codec
        self.transport = transport
        self.consumers: list[Consumer] = []
        self.cache = PacketCache(1024) if track.kind == "video" else PacketCache(64)
        self.paused = False
        self.closed = False
        self.ssrc: int | None = track.ssrcs[0] if track.ssrcs else None
        self.reception = rtcp.ReceptionStats()
        #: (NTP timestamp, RTP timestamp) of the producer's last sender report.
        self.sender_report: tuple[int, int] | None = None
        self.loud_until = 0.0
        self._clock = clock
        self._keyframe_requested_at = -1.0
        #: A keyframe request arrived too soon after the last one: the router's periodic work
        #: sends it once the interval has passed (``flush_keyframe_request``).
        self.keyframe_pending = False

    def forward(self, data: bytes, header: rtp.RtpHeader) -> int:
        """Hand one packet to every consumer; returns how many sent it."""
        self.reception.add(header.sequence)
        self.cache.store(header.sequence, data)
        level_id = self.track.audio_level_extension
        if level_id is not None and header.extension_offset >= 0:
            try:
                value = rtp.extensions(data, header).get(level_id)
                if value is not None and rtp.audio_level(value)[1] <= SPEAKING_LEVEL:
                    self.loud_until = self._clock() + SPEAKING_HOLD
            except ValueError:
                pass
        if self.paused:
            return 0
        sent = 0
        for consumer in self.consumers:
            if consumer.send(data, header):
                sent += 1
        return sent

    @property
    def speaking(self) -> bool:
        return not self.paused and self._clock() < self.loud_until

    def request_keyframe(self) -> None:
        if self.kind != "video" or self.ssrc is None:
            return
        now = self._clock()
        if now - self._keyframe_requested_at < KEYFRAME_INTERVAL:
            # Never dropped: a consumer that resumed after the last keyframe needs one too.
            self.keyframe_pending = True
            return
        self._keyframe_requested_at = now
        self.keyframe_pending = False
        self.transport.send_rtcp(rtcp.pli(self.track.rtcp_ssrc, self.ssrc))

    def flush_keyframe_request(self) -> None:
        """Send a keyframe request held back by the interval, if it is due now."""
        if self.keyframe_pending and \
                self._clock() - self._keyframe_requested_at >= KEYFRAME_INTERVAL:
            self.request_keyframe()

    def request_retransmission(self, sequences: list[int]) -> None:
        if sequences and self.ssrc is not None:
            self.transport.send_rtcp(rtcp.nack(self.track.rtcp_ssrc, self.ssrc, sequences))

    def send_reports(self, bitrate: int) -> None:
        """A receiver report, and for video a bandwidth estimate the producer may use."""
        if self.ssrc is None:
            return
        self.transport.send_rtcp(rtcp.receiver_report(self.track.rtcp_ssrc, self.ssrc,
                                                      self.reception))
        if self.kind == "video":
            self.transport.send_rtcp(rtcp.remb(self.track.rtcp_ssrc, bitrate, [self.ssrc]))

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            for consumer in self.consumers:
                consumer.restart()
            self.request_keyframe()
