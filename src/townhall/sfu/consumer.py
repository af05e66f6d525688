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

from townhall.sfu import bandwidth, rtcp, rtp, vp8
from townhall.sfu.fields import ConsumerFields
from townhall.sfu.producer import Producer
from townhall.sfu.sequence import SequenceRewriter
from townhall.sfu.transport import Slot, Transport
from townhall.sfu.twcc import TwccSender

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Most padding packets sent after one frame.
MAX_PADDING_PACKETS = 8
#: A packet is resent at most once in this many seconds, however often it is asked for, or
#: once a round trip where the transport's is longer (``round_trip.py``). A receiver asks again
#: when the copy has not come within its round trip, 100 ms until it has measured one; on a
#: full link the copy is still queued.
RESEND_INTERVAL = 0.15
#: Packets whose last resend is remembered.
RESENDS_KEPT = 512


class Consumer(ConsumerFields):
    __slots__ = ("_clock", "_pauses", "_reported_packets", "_resent_at", "closed", "id",
                 "last_layer", "max_layer", "packets_at_receiver_report", "pictures",
                 "priority", "producer", "redundancy", "resent", "rewriter", "slot",
                 "transport", "twcc")

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
        #: True while any reason holds the consumer paused: the one test per packet.
        self.paused = False
        self._pauses: set[str] = set()
        self.closed = False
        self.packets = 0
        self.octets = 0
        self._reported_packets = 0
        #: When each recently resent output sequence number was resent.
        self._resent_at: dict[int, float] = {}
        #: Packets resent in answer to NACKs.
        self.resent = 0
        #: ``packets`` when the far end last reported what it lost of them (``Router``).
        self.packets_at_receiver_report = 0
        #: Send RED (RFC 2198) as it comes when the far end negotiated it; False sends the
        #: primary Opus frames alone (the router's choice while the transport is audio-only).
        self.redundancy = True
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
        #: Bytes of padding to send after the next frames (bandwidth probes, set by the router).
        self.padding = 0
        #: The transport's transport-wide sequence numbers, once the far end accepted them.
        self.twcc: TwccSender | None = None

    @property
    def mid(self) -> str | None:
        return self.slot.mid

    @property
    def forwarding(self) -> bool:
        """Whether this consumer's media is meant to reach the far end now: no pause holds it
        and the allocation gave it a layer."""
        return not self.paused and self.target >= 0

    def send(self, data: bytes, header: rtp.RtpHeader, layer: int) -> bool:
        if self.paused:
            return False
        if layer != self.layer and (layer != self.target or not self._switch(layer)):
            return False
        payload_type = self.slot.payload_type
        if payload_type is None:
            return False
        if header.payload_type != self.producer.codec.payload_type:
            variant = self._red(data, header, payload_type)
            if variant is None:
                return False
            data, header, payload_type = variant
        sequence, timestamp = self.rewriter.rewrite(header.sequence, header.timestamp)
        twcc = self.twcc
        if twcc is not None:
            extension = twcc.block(len(data), self._clock())
        else:
            abs_send_time = self.slot.abs_send_time
            extension = b"" if abs_send_time is None else \
                rtp.abs_send_time_for(header, abs_send_time, self._clock)
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
        self.octets += len(packet) - header.csrc_end - len(extension)  # payload (RFC 3550 6.4.1)
        if self.padding and header.marker:
            self._send_padding(payload_type)
        return True

    def _red(self, data: bytes, header: rtp.RtpHeader,
             payload_type: int) -> tuple[bytes, rtp.RtpHeader, int] | None:
        """What to send for a RED packet of the producer (None for anything else)."""
        producer = self.producer
        if header.payload_type != producer.red_payload_type:
            return None
        red_payload_type = self.slot.red_payload_type if self.redundancy else None
        return producer.red_variant(data, header, red_payload_type, payload_type)

    def _extension(self, size: int) -> bytes:
        """The header extension block of a packet of about ``size`` bytes sent now: its
        transport-wide sequence number, or its abs-send-time, or nothing."""
        twcc = self.twcc
        if twcc is not None:
            return twcc.block(size, self._clock())
        abs_send_time = self.slot.abs_send_time
        if abs_send_time is None:
            return b""
        return rtp.abs_send_time_block(abs_send_time, self._clock())

    def _send_padding(self, payload_type: int) -> None:
        """Padding packets right after the end of a frame (never inside one, where a
        receiver would take them for a hole in the frame)."""
        owed = self.padding
        for _ in range(MAX_PADDING_PACKETS):
            if owed <= 0:
                break
            sequence, timestamp = self.rewriter.pad()
            extension = self._extension(min(rtp.MAX_PADDING, owed) + 12)
            packet = rtp.padding_packet(payload_type, sequence, timestamp, self.slot.ssrc,
                                        extension, min(rtp.MAX_PADDING, owed))
            if not self.transport.send_rtp(packet):
                break
            self.packets += 1
            owed -= len(packet)
        self.padding = max(0, owed)

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

    def set_paused(self, paused: bool, reason: str) -> None:
        """Pause or resume sending for ``reason``; the consumer sends while no reason holds it.

        Each part of the SFU pauses for its own reason and never undoes another's: the router's
        per-transport reasons (``Router.set_video_paused``: "audio-only") and the room's
        forwarding policy ("last-n"). (Video cut for lack of bandwidth is the allocation's
        target -1, not a pause.) Nothing is renegotiated; resuming continues the output
        sequence and asks the producer for a keyframe, so a picture appears at once.
        """
        if paused:
            self._pauses.add(reason)
        else:
            self._pauses.discard(reason)
        now = bool(self._pauses)
        if now != self.paused:
            self.paused = now
            if not now:
                self.restart()
                self.producer.request_keyframe(max(0, self.target))

    @property
    def pauses(self) -> frozenset[str]:
        """The reasons holding this consumer paused."""
        return frozenset(self._pauses)

    def retransmit(self, sequences: tuple[int, ...],
                   budget: bandwidth.ResendBudget | None = None,
                   interval: float = RESEND_INTERVAL) -> list[int]:
        """Resend what the cache holds, within ``budget`` and not what was resent less than
        ``interval`` ago (the transport's round trip, once known: ``round_trip.py``); returns
        the producer's sequence numbers it lacks."""
        if self.layer < 0:
            return []
        missing = []
        now = self._clock()
        resent = self._resent_at
        for out_sequence in sequences:
            if now - resent.get(out_sequence, -interval) < interval:
                continue
            sequence = self.rewriter.input_sequence(out_sequence)
            if sequence is None:
                continue
            size = self._resend(self.layer, out_sequence, sequence, budget)
            if size < 0:
                missing.append(sequence)
            elif size > 0:
                self.resent += 1
                resent.pop(out_sequence, None)  # kept in the order of resending
                resent[out_sequence] = now
        while len(resent) > RESENDS_KEPT:
            del resent[next(iter(resent))]
        return missing

    def _resend(self, layer: int, out_sequence: int, sequence: int,
                budget: bandwidth.ResendBudget | None = None) -> int:
        """Send the producer's packet ``sequence`` of ``layer`` again as ``out_sequence``;
        returns its size, 0 if it cannot be sent (or ``budget`` has no room for it), -1 if the
        cache no longer has it."""
        payload_type = self.slot.payload_type
        if payload_type is None:
            return 0
        data = self.producer.layers[layer].cache.get(sequence)
        if data is None:
            return -1
        if budget is not None and not budget.take(len(data)):
            return 0
        header = rtp.parse_header(data)
        if header.payload_type != self.producer.codec.payload_type:
            variant = self._red(data, header, payload_type)
            if variant is None:
                return 0
            data, header, payload_type = variant
        timestamp = self.rewriter.output_timestamp(header.timestamp)
        head = b""
        if self.pictures is not None and self.pictures.active:
            try:
                descriptor = vp8.parse(data, header.payload_offset)
            except ValueError:
                return 0
            picture_id, tl0 = self.pictures.output(descriptor)
            head = vp8.write(descriptor, data, header.payload_offset, picture_id, tl0)
        extension = self._extension(len(data))
        packet = rtp.rewrite_extended(data, header, payload_type, out_sequence, timestamp,
                                      self.slot.ssrc, extension, head, len(head))
        return len(packet) if self.transport.send_rtp(packet) else 0

    def sender_report(self) -> bytes | None:
        """This consumer's RTCP sender report now, None when it has none to give."""
        if self.last_layer < 0:
            return None
        report = self.producer.layers[self.last_layer].sender_report
        # A consumer that sent nothing since its last report is not a sender (RFC 3550 6.4):
        # paused consumers cost a receiver no reports.
        if report is None or self.packets == self._reported_packets:
            return None
        self._reported_packets = self.packets
        ntp, rtp_timestamp = report
        return rtcp.sender_report(self.slot.ssrc, ntp,
                                  self.rewriter.output_timestamp(rtp_timestamp),
                                  self.packets, self.octets)
