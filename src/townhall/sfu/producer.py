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

from townhall.sfu import rtcp, rtp, vp8
from townhall.sfu.simulcast import KEYFRAME_INTERVAL, Layer
from townhall.sfu.transport import Codec, IncomingTrack, Transport

if TYPE_CHECKING:
    from townhall.sfu.consumer import Consumer

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Audio louder than this (in -dBov; 0 is loudest) counts as speech.
SPEAKING_LEVEL = 50
#: How long a producer counts as speaking after its last loud packet, in seconds.
SPEAKING_HOLD = 0.6


class Producer:
    __slots__ = (
        "_clock",
        "closed",
        "codec",
        "consumers",
        "descriptor",
        "id",
        "keyframe_pending",
        "kind",
        "layers",
        "loud_until",
        "mid",
        "owner",
        "paused",
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
        #: The VP8 descriptor of the packet being forwarded (simulcast producers only).
        self.descriptor: vp8.Descriptor | None = None
        self.paused = False
        self.closed = False
        self.loud_until = 0.0
        self._clock = clock
        #: A keyframe request arrived too soon after the last one for some layer: the router's
        #: periodic work sends it once the interval has passed (``flush_keyframe_request``).
        self.keyframe_pending = False

    @property
    def ssrc(self) -> int | None:
        """The SSRC of the first layer (the only one without simulcast)."""
        return self.layers[0].ssrc

    def forward(self, data: bytes, header: rtp.RtpHeader, layer: Layer) -> int:
        """Hand one packet of ``layer`` to every consumer; returns how many sent it."""
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
        else:
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
        index = layer.index
        sent = 0
        for consumer in self.consumers:
            if consumer.send(data, header, index):
                sent += 1
        return sent

    @property
    def speaking(self) -> bool:
        return not self.paused and self._clock() < self.loud_until

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
        """Receiver reports, and for video a bandwidth estimate the producer may use."""
        ssrcs = [layer.ssrc for layer in self.layers if layer.ssrc is not None]
        for layer in self.layers:
            if layer.ssrc is not None:
                self.transport.send_rtcp(rtcp.receiver_report(
                    self.track.rtcp_ssrc, layer.ssrc, layer.reception))
        if self.kind == "video" and ssrcs:
            self.transport.send_rtcp(rtcp.remb(self.track.rtcp_ssrc, bitrate, ssrcs))

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
