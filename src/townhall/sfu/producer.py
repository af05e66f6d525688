"""A producer: one track a participant publishes, fanned out to its consumers.

A producer has one or more layers (``simulcast.py``): one RTP stream each. Its consumers choose a
layer each; the producer hands every packet with the index of the layer it came on, and each
consumer forwards only its current layer.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from townhall.sfu import native, red, rtcp, rtp, vp8
from townhall.sfu.simulcast import KEYFRAME_INTERVAL, Layer, SentLayers
from townhall.sfu.transport import Codec, IncomingTrack, Transport

if TYPE_CHECKING:
    from townhall.sfu.consumer import Consumer

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: The fan-out in C when the native piece is built (``native.py``); None: every consumer's own
#: ``send`` in Python.
fanout = native.fanout()

#: Audio louder than this (in -dBov; 0 is loudest) counts as speech.
SPEAKING_LEVEL = 50
#: ``forward`` in C from a received packet's bytes, header parsing included (``native.py``);
#: None without the native piece. The router calls it when it has the packet's layer table.
receive = native.receive(SPEAKING_LEVEL)
#: How long a producer counts as speaking after its last loud packet, in seconds.
SPEAKING_HOLD = 0.6


class Producer:
    __slots__ = (
        "_clock",
        "_red_header",
        "_red_plain",
        "_red_retyped",
        "closed",
        "codec",
        "consumers",
        "descriptor",
        "id",
        "keyframe_pending",
        "kind",
        "layers",
        "level_extension",
        "level_packets",
        "loud_until",
        "loudness",
        "mid",
        "owner",
        "paused",
        "red_payload_type",
        "selected",
        "sent_layers",
        "simulcast",
        "source",
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
        video = track.kind == "video"
        if track.rids:
            self.layers = [Layer(self, i, rid, None, video) for i, rid in enumerate(track.rids)]
        else:
            self.layers = [Layer(self, 0, None, track.ssrcs[0] if track.ssrcs else None, video)]
        #: More than one layer: consumers switch between them at VP8 keyframes.
        self.simulcast = len(self.layers) > 1
        #: How many layers the producer is asked to send (``send-layers``; simulcast only).
        self.sent_layers = SentLayers(len(self.layers))
        #: The VP8 descriptor of the packet being forwarded (simulcast producers only).
        self.descriptor: vp8.Descriptor | None = None
        self.paused = False
        self.closed = False
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
        #: A keyframe request arrived too soon after the last one for some layer: the router's
        #: periodic work sends it once the interval has passed (``flush_keyframe_request``).
        self.keyframe_pending = False

    @property
    def ssrc(self) -> int | None:
        """The SSRC of the first layer (the only one without simulcast)."""
        return self.layers[0].ssrc

    def forward(self, data: bytes, header: rtp.RtpHeader, layer: Layer | None = None) -> int:
        """Hand one packet of ``layer`` (the first by default) to every consumer; returns how
        many sent it."""
        if layer is None:
            layer = self.layers[0]
        layer.reception.add(header.sequence)
        layer.cache.store(header.sequence, data)
        layer.octets += len(data) - header.payload_offset
        if self.simulcast:
            try:
                descriptor = vp8.parse(data, header.payload_offset)
            except ValueError:
                return 0
            self.descriptor = descriptor
            if descriptor.keyframe:
                size = vp8.keyframe_size(data, header.payload_offset, descriptor)
                if size is not None:
                    layer.width, layer.height = size
        elif self.level_extension is not None and header.extension_offset >= 0:
            level = rtp.audio_level_at(data, header, self.level_extension)
            if level >= 0:
                self.level_packets += 1
                if level <= SPEAKING_LEVEL:
                    self.loudness += SPEAKING_LEVEL + 1 - level
        if self.paused or not self.selected:
            return 0
        index = layer.index
        if fanout is not None and type(data) is bytes:
            return fanout(self.consumers, data, header, index, self.codec.payload_type,
                          self.descriptor, self._clock())
        sent = 0
        for consumer in self.consumers:
            if consumer.send(data, header, index):
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

    def request_keyframe(self, index: int | None = None) -> None:
        """Ask for a keyframe on layer ``index``, or on every layer."""
        if self.kind != "video":
            return
        now = self._clock()
        pending = False
        for layer in self.layers if index is None else self.layers[index:index + 1]:
            if layer.ssrc is None:
                continue
            if now - layer.keyframe_requested_at < KEYFRAME_INTERVAL:
                # Never dropped: a consumer that resumed after the last keyframe needs one too.
                layer.keyframe_pending = pending = True
                continue
            layer.keyframe_requested_at = now
            layer.keyframe_pending = False
            self.transport.send_rtcp(rtcp.pli(self.track.rtcp_ssrc, layer.ssrc))
        if pending:
            self.keyframe_pending = True

    def flush_keyframe_request(self) -> None:
        """Send the keyframe requests held back by the interval that are due now."""
        now = self._clock()
        pending = False
        for layer in self.layers:
            if layer.keyframe_pending:
                if now - layer.keyframe_requested_at >= KEYFRAME_INTERVAL:
                    self.request_keyframe(layer.index)
                pending = pending or layer.keyframe_pending
        self.keyframe_pending = pending

    def request_retransmission(self, index: int, sequences: list[int]) -> None:
        ssrc = self.layers[index].ssrc
        if sequences and ssrc is not None:
            self.transport.send_rtcp(rtcp.nack(self.track.rtcp_ssrc, ssrc, sequences))

    def send_reports(self, bitrate: int) -> None:
        """One compound RTCP packet: a receiver report about every layer, and for video a
        bandwidth estimate the producer may use."""
        blocks = [(layer.ssrc, layer.reception) for layer in self.layers
                  if layer.ssrc is not None]
        if not blocks:
            return
        report = rtcp.receiver_report(self.track.rtcp_ssrc, blocks, self._clock())
        if self.kind == "video":
            report += rtcp.remb(self.track.rtcp_ssrc, bitrate, [ssrc for ssrc, _ in blocks])
        self.transport.send_rtcp(report)

    def measure(self, now: float) -> None:
        """Update each layer's bitrate (periodic work)."""
        for layer in self.layers:
            layer.measure(now)

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
