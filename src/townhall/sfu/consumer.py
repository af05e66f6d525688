"""A consumer: one producer's packets, rewritten for one transport."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from townhall.sfu import rtcp, rtp
from townhall.sfu.producer import Producer
from townhall.sfu.sequence import SequenceRewriter
from townhall.sfu.transport import Slot, Transport

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class Consumer:
    __slots__ = ("_pauses", "_reported_packets", "closed", "id", "octets", "packets", "paused",
                 "producer", "redundancy", "rewriter", "slot", "transport")

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
        #: True while any reason holds the consumer paused: the one test per packet.
        self.paused = False
        self._pauses: set[str] = set()
        self.closed = False
        self.packets = 0
        self.octets = 0
        self._reported_packets = 0
        #: Send RED (RFC 2198) as it comes when the far end negotiated it; False sends the
        #: primary Opus frames alone (the router's choice while the transport is audio-only).
        self.redundancy = True

    @property
    def mid(self) -> str | None:
        return self.slot.mid

    def send(self, data: bytes, header: rtp.RtpHeader) -> bool:
        payload_type = self.slot.payload_type
        if self.paused or payload_type is None:
            return False
        if header.payload_type != self.producer.codec.payload_type:
            variant = self._red(data, header, payload_type)
            if variant is None:
                return False
            data, header, payload_type = variant
        sequence, timestamp = self.rewriter.rewrite(header.sequence, header.timestamp)
        packet = rtp.rewrite(data, header, payload_type, sequence, timestamp, self.slot.ssrc)
        if not self.transport.send_rtp(packet):
            return False
        self.packets += 1
        self.octets += len(packet) - header.csrc_end  # payload octets (RFC 3550 6.4.1)
        return True

    def _red(self, data: bytes, header: rtp.RtpHeader,
             payload_type: int) -> tuple[bytes, rtp.RtpHeader, int] | None:
        """What to send for a RED packet of the producer (None for anything else)."""
        producer = self.producer
        if header.payload_type != producer.red_payload_type:
            return None
        red_payload_type = self.slot.red_payload_type if self.redundancy else None
        return producer.red_variant(data, header, red_payload_type, payload_type)

    def restart(self) -> None:
        self.rewriter.restart()

    def set_paused(self, paused: bool, reason: str) -> None:
        """Pause or resume sending for ``reason``; the consumer sends while no reason holds it.

        Each part of the SFU pauses for its own reason and never undoes another's: the router's
        per-transport reasons (``Router.set_video_paused``: "audio-only", "bandwidth") and the
        room's forwarding policy ("last-n"). Nothing is renegotiated; resuming continues the
        output sequence and asks the producer for a keyframe, so a picture appears at once.
        """
        if paused:
            self._pauses.add(reason)
        else:
            self._pauses.discard(reason)
        now = bool(self._pauses)
        if now != self.paused:
            self.paused = now
            if not now:
                self.rewriter.restart()
                self.producer.request_keyframe()

    @property
    def pauses(self) -> frozenset[str]:
        """The reasons holding this consumer paused."""
        return frozenset(self._pauses)

    def retransmit(self, sequences: tuple[int, ...]) -> list[int]:
        """Resend what the cache holds; returns the producer's sequence numbers it lacks."""
        payload_type = self.slot.payload_type
        if payload_type is None:
            return []
        missing = []
        for out_sequence in sequences:
            sequence = self.rewriter.input_sequence(out_sequence)
            if sequence is None:
                continue
            data = self.producer.cache.get(sequence)
            if data is None:
                missing.append(sequence)
                continue
            header = rtp.parse_header(data)
            sent_type = payload_type
            if header.payload_type != self.producer.codec.payload_type:
                variant = self._red(data, header, payload_type)
                if variant is None:
                    continue
                data, header, sent_type = variant
            packet = rtp.rewrite(data, header, sent_type, out_sequence,
                                 self.rewriter.output_timestamp(header.timestamp), self.slot.ssrc)
            self.transport.send_rtp(packet)
        return missing

    def send_sender_report(self) -> None:
        report = self.producer.sender_report
        # A consumer that sent nothing since its last report is not a sender (RFC 3550 6.4):
        # paused consumers cost a receiver no reports.
        if report is None or self.packets == self._reported_packets:
            return
        self._reported_packets = self.packets
        ntp, rtp_timestamp = report
        self.transport.send_rtcp(rtcp.sender_report(
            self.slot.ssrc, ntp, self.rewriter.output_timestamp(rtp_timestamp),
            self.packets, self.octets))

