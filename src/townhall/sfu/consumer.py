"""A consumer: one producer's packets, rewritten for one transport.

With a simulcast producer the consumer forwards one layer at a time. The router's allocation
(periodic work) sets its ``target``; ``layer`` is what it forwards now. The consumer moves to
the target at the next keyframe of the target layer, keeping sequence numbers, timestamps and
the VP8 picture id and TL0PICIDX continuous, so the receiver sees one stream. On the packet path
that costs an integer comparison while nothing is switching.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from townhall.sfu import rtcp, rtp, vp8
from townhall.sfu.producer import Producer
from townhall.sfu.sequence import SequenceRewriter
from townhall.sfu.transport import Slot, Transport

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: How many of the most recent packets a probe may send again.
PROBE_DEPTH = 8


class Consumer:
    __slots__ = ("_clock", "closed", "id", "last_layer", "layer", "max_layer", "octets",
                 "packets", "paused", "pictures", "priority", "producer", "rewriter", "slot",
                 "target", "transport")

    def __init__(
        self,
        producer: Producer,
        transport: Transport,
        slot: Slot,
        clock: Callable[[], float],
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.producer = producer
        self.transport = transport
        self.slot = slot
        self.rewriter = SequenceRewriter(producer.codec.clock_rate, clock)
        self._clock = clock
        self.paused = False
        self.closed = False
        self.packets = 0
        self.octets = 0
        #: The layer forwarded now, -1 for none. A simulcast consumer starts with none and
        #: takes its first layer at a keyframe.
        self.layer = -1 if producer.simulcast else 0
        #: The layer of the last packets sent (kept while nothing is forwarded, for probes).
        self.last_layer = self.layer
        #: The layer the allocation wants, -1 for none (not enough bandwidth, or hidden).
        self.target = 0
        #: The highest layer the layout hint allows, -1 for a hidden video (0×0).
        self.max_layer = len(producer.layers) - 1
        self.pictures = vp8.PictureRewriter() if producer.simulcast else None
        #: Allocation serves higher priorities first; a shared screen before cameras.
        self.priority = 1 if producer.source == "screen" else 0

    @property
    def mid(self) -> str | None:
        return self.slot.mid

    @property
    def forwarding(self) -> bool:
        """Whether this consumer's media is meant to reach the far end now."""
        return not self.paused and not self.producer.paused and self.target >= 0

    def send(self, data: bytes, header: rtp.RtpHeader, layer: int) -> bool:
        if self.paused:
            return False
        if layer != self.layer and (layer != self.target or not self._switch(layer)):
            return False
        payload_type = self.slot.payload_type
        if payload_type is None or header.payload_type != self.producer.codec.payload_type:
            return False
        sequence, timestamp = self.rewriter.rewrite(header.sequence, header.timestamp)
        abs_send_time = self.slot.abs_send_time
        extension = b"" if abs_send_time is None else \
            rtp.abs_send_time_block(abs_send_time, self._clock())
        pictures = self.pictures
        if pictures is None:
            packet = rtp.rewrite_extended(data, header, payload_type, sequence, timestamp,
                                          self.slot.ssrc, extension)
        else:
            descriptor = self.producer.descriptor
            assert descriptor is not None
            picture_id, tl0 = pictures.rewrite(descriptor)
            if pictures.active:
                head = vp8.write(descriptor, data, header.payload_offset, picture_id, tl0)
                packet = rtp.rewrite_extended(data, header, payload_type, sequence, timestamp,
                                              self.slot.ssrc, extension, head, len(head))
            else:
                packet = rtp.rewrite_extended(data, header, payload_type, sequence, timestamp,
                                              self.slot.ssrc, extension)
        if not self.transport.send_rtp(packet):
            return False
        self.packets += 1
        self.octets += len(packet) - header.payload_offset
        return True

    def _switch(self, layer: int) -> bool:
        """Whether the packet being forwarded lets this consumer start on ``layer`` now."""
        if self.pictures is not None:
            descriptor = self.producer.descriptor
            if descriptor is None or not descriptor.keyframe:
                return False
            self.pictures.restart()
        self.layer = self.last_layer = layer
        self.rewriter.restart()
        return True

    def set_target(self, target: int) -> None:
        """Forward ``target`` from its next keyframe on (-1: forward nothing from now)."""
        if target == self.target:
            return
        self.target = target
        if target < 0:
            self.layer = -1
        elif target != self.layer:
            self.producer.request_keyframe(target)

    def restart(self) -> None:
        self.rewriter.restart()
        if self.pictures is not None:
            # After a pause the producer's picture ids jumped: continue from the last sent.
            self.pictures.restart()
            self.layer = -1

    def set_paused(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            if not paused:
                self.restart()
                if self.target >= 0:
                    self.producer.request_keyframe(self.target)

    def retransmit(self, sequences: tuple[int, ...]) -> list[int]:
        """Resend what the cache holds; returns the producer's sequence numbers it lacks."""
        if self.layer < 0:
            return []
        missing = []
        for out_sequence in sequences:
            sequence = self.rewriter.input_sequence(out_sequence)
            if sequence is not None and self._resend(self.layer, out_sequence, sequence) < 0:
                missing.append(sequence)
        return missing

    def probe(self, octets: int) -> int:
        """Send again the most recent packets sent, up to about ``octets`` bytes: duplicates
        the receiver measures for its bandwidth estimate and then discards. Returns the bytes
        sent."""
        layer = self.last_layer
        if layer < 0 or not self.packets:
            return 0
        last, _ = self.rewriter.last_output
        sent = 0
        for back in range(PROBE_DEPTH):
            out_sequence = (last - back) & 0xFFFF
            sequence = self.rewriter.input_sequence(out_sequence)
            if sequence is None:
                break
            size = self._resend(layer, out_sequence, sequence)
            if size > 0:
                sent += size
                if sent >= octets:
                    break
        return sent

    def _resend(self, layer: int, out_sequence: int, sequence: int) -> int:
        """Send the producer's packet ``sequence`` of ``layer`` again as ``out_sequence``;
        returns its size, 0 if it cannot be sent, -1 if the cache no longer has it."""
        payload_type = self.slot.payload_type
        if payload_type is None:
            return 0
        data = self.producer.layers[layer].cache.get(sequence)
        if data is None:
            return -1
        header = rtp.parse_header(data)
        timestamp = self.rewriter.output_timestamp(header.timestamp)
        head = b""
        if self.pictures is not None and self.pictures.active:
            try:
                descriptor = vp8.parse(data, header.payload_offset)
            except ValueError:
                return 0
            picture_id, tl0 = self.pictures.output(descriptor)
            head = vp8.write(descriptor, data, header.payload_offset, picture_id, tl0)
        abs_send_time = self.slot.abs_send_time
        extension = b"" if abs_send_time is None else \
            rtp.abs_send_time_block(abs_send_time, self._clock())
        packet = rtp.rewrite_extended(data, header, payload_type, out_sequence, timestamp,
                                      self.slot.ssrc, extension, head, len(head))
        return len(packet) if self.transport.send_rtp(packet) else 0

    def send_sender_report(self) -> None:
        if self.layer < 0 or not self.packets:
            return
        report = self.producer.layers[self.layer].sender_report
        if report is None:
            return
        ntp, rtp_timestamp = report
        self.transport.send_rtcp(rtcp.sender_report(
            self.slot.ssrc, ntp, self.rewriter.output_timestamp(rtp_timestamp),
            self.packets, self.octets))
