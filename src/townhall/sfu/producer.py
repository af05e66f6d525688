"""A producer: one track a participant publishes, fanned out to its consumers."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from townhall.sfu import red, rtcp, rtp
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
        "_red_header",
        "_red_plain",
        "_red_retyped",
        "cache",
        "closed",
        "codec",
        "consumers",
        "id",
        "keyframe_pending",
        "kind",
        "level_extension",
        "level_packets",
        "loud_until",
        "loudness",
        "mid",
        "owner",
        "paused",
        "reception",
        "red_payload_type",
        "selected",
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
        #: Audio levels since the router last took them (``take_levels``): packets that carried
        #: a level, and the sum of how far the loud ones were above ``SPEAKING_LEVEL``.
        self.level_extension = track.audio_level_extension
        self.level_packets = 0
        self.loudness = 0
        #: False while loudest-N audio selection leaves this producer out (audio only).
        self.selected = True
        #: RED over ``codec``, when the producer sends it (see ``red_variant``).
        self.red_payload_type = track.red_payload_type
        self._red_header: rtp.RtpHeader | None = None
        self._red_plain: rtp.RtpHeader | None = None
        self._red_retyped: dict[int, tuple[bytes, rtp.RtpHeader]] = {}
        self._clock = clock
        self._keyframe_requested_at = -1.0
        #: A keyframe request arrived too soon after the last one: the router's periodic work
        #: sends it once the interval has passed (``flush_keyframe_request``).
        self.keyframe_pending = False

    def forward(self, data: bytes, header: rtp.RtpHeader) -> int:
        """Hand one packet to every consumer; returns how many sent it."""
        self.reception.add(header.sequence)
        self.cache.store(header.sequence, data)
        if self.level_extension is not None and header.extension_offset >= 0:
            level = rtp.audio_level_at(data, header, self.level_extension)
            if level >= 0:
                self.level_packets += 1
                if level <= SPEAKING_LEVEL:
                    self.loudness += SPEAKING_LEVEL + 1 - level
        if self.paused or not self.selected:
            return 0
        sent = 0
        for consumer in self.consumers:
            if consumer.send(data, header):
                sent += 1
        return sent

    @property
    def speaking(self) -> bool:
        return not self.paused and self._clock() < self.loud_until

    def take_levels(self) -> float:
        """The score of the audio levels since the last call (see ``sfu/speaker.py``): the mean
        loudness above ``SPEAKING_LEVEL`` per packet, 0 for silence. Periodic work, not per
        packet; a loud score also keeps ``speaking`` true for ``SPEAKING_HOLD``."""
        packets, loudness = self.level_packets, self.loudness
        self.level_packets = self.loudness = 0
        if not loudness:
            return 0.0
        self.loud_until = self._clock() + SPEAKING_HOLD
        return loudness / packets

    def set_selected(self, selected: bool) -> None:
        """Audio selection takes this producer in or leaves it out; the consumers' output
        continues without a gap in sequence numbers when it comes back."""
        if selected == self.selected:
            return
        self.selected = selected
        if selected:
            for consumer in self.consumers:
                consumer.restart()

    def red_variant(
        self, data: bytes, header: rtp.RtpHeader, red_payload_type: int | None,
        payload_type: int,
    ) -> tuple[bytes, rtp.RtpHeader, int] | None:
        """What a consumer sends for one RED packet, as (data, header, payload type).

        With ``red_payload_type`` (the consumer negotiated RED) the RED payload as it came, its
        blocks renumbered to the consumer's Opus ``payload_type`` if that differs; without, the
        primary Opus frame alone. Worked out once per packet and shared by the consumers; None
        for a malformed payload.
        """
        if header is not self._red_header:
            self._red_header = header
            self._red_plain = None
            self._red_retyped.clear()
        try:
            if red_payload_type is not None:
                if payload_type == self.codec.payload_type:
                    return data, header, red_payload_type
                retyped = self._red_retyped.get(payload_type)
                if retyped is None:
                    copy = red.retype(data, header.payload_offset, self.codec.payload_type,
                                      payload_type)
                    retyped = self._red_retyped[payload_type] = (copy, _like(header))
                return retyped[0], retyped[1], red_payload_type
            plain = self._red_plain
            if plain is None:
                block_type, start = red.primary(data, header.payload_offset)
                if block_type != self.codec.payload_type:
                    raise ValueError("RED primary block is not the producer's codec")
                plain = self._red_plain = _like(header, start)
            return data, plain, payload_type
        except ValueError as exc:
            logger.debug("producer %s: RED packet dropped: %s", self.id, exc)
            return None

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


def _like(header: rtp.RtpHeader, payload_offset: int | None = None) -> rtp.RtpHeader:
    """A copy of ``header`` (the copy caches its own rewritten body), optionally with the
    payload starting elsewhere."""
    return rtp.RtpHeader(header.marker, header.payload_type, header.sequence, header.timestamp,
                         header.ssrc, header.extension_offset,
                         header.payload_offset if payload_offset is None else payload_offset,
                         header.csrc_end)
