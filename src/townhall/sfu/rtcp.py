"""RTCP the SFU reads and writes: feedback from consumers, reports to and from producers.

Parsing and serialising use aiortc's public ``aiortc.rtp`` classes; this module only picks the
fields the SFU needs and builds the packets it sends.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from townhall.sfu import twcc


@dataclass(frozen=True, slots=True)
class Feedback:
    """One piece of feedback about a media SSRC."""

    kind: str  # "nack" | "keyframe" | "report" | "sender-report" | "bye" | "remb" | "twcc"
    media_ssrc: int
    lost: tuple[int, ...] = ()
    #: For "sender-report": (NTP timestamp, RTP timestamp, packets, octets)
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    fraction_lost: int = 0
    #: For "report": the LSR and DLSR of the block (``round_trip.py``).
    last_sr: int = 0
    delay_since_sr: int = 0
    #: For "remb": the receiver's estimate of the bandwidth available to it, in bit/s.
    bitrate: int = 0
    #: For "twcc": the transport feedback packet as it came (parsed by ``twcc.parse_feedback``).
    raw: bytes = b""


def parse(data: bytes) -> list[Feedback]:
    """Feedback in a compound RTCP packet; raises ``ValueError`` if it is malformed."""
    transport_feedback, rest = _split(data)
    out: list[Feedback] = [Feedback("twcc", 0, raw=raw) for raw in transport_feedback]
    packets = RtcpPacket.parse(rest) if rest else []
    for packet in packets:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            out.append(Feedback("nack", packet.media_ssrc, lost=tuple(packet.lost)))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            if packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 4:
                media = int.from_bytes(packet.fci[:4], "big")
            else:
                media = packet.media_ssrc
            out.append(Feedback("keyframe", media))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP and \
                packet.fci[:4] == b"REMB":
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except (ValueError, struct.error):
                raise ValueError("RTCP REMB is truncated") from None
            out.append(Feedback("remb", ssrcs[0] if ssrcs else 0, bitrate=bitrate))
        elif isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            out.append(
                Feedback(
                    "sender-report",
                    packet.ssrc,
                    ntp_timestamp=info.ntp_timestamp,
                    rtp_timestamp=info.rtp_timestamp,
                )
            )
            out.extend(_report(r) for r in packet.reports)
        elif isinstance(packet, RtcpRrPacket):
            out.extend(_report(r) for r in packet.reports)
        elif isinstance(packet, RtcpByePacket):
            out.extend(Feedback("bye", ssrc) for ssrc in packet.sources)
    return out


#: RTCP packet type of a source description (SDES, RFC 3550 6.5).
_SDES = 202


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """The transport feedback packets of a compound RTCP packet, and the rest of it without
    its source descriptions, for aiortc's parser: it cannot read transport feedback and
    refuses the whole compound; and after a description chunk whose padding is over two bytes
    it steps into the middle of the next, and refuses the compound where that runs past the
    end. The SFU reads no description; one that does not read whole is left for aiortc to
    refuse."""
    found: list[bytes] = []
    if 0xCD not in data and 0xCA not in data:  # no RTPFB nor SDES: the common case
        return found, data
    rest: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        first, packet_type = data[pos], data[pos + 1]
        end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        if twcc.is_feedback(first, packet_type):
            found.append(data[pos:end])
        elif packet_type != _SDES or end > len(data):
            rest.append(data[pos:end])
        pos = end
    return found, b"".join(rest) + data[pos:]


def _report(block: RtcpReceiverInfo) -> Feedback:
    return Feedback("report", block.ssrc, fraction_lost=block.fraction_lost, last_sr=block.lsr,
                    delay_since_sr=block.dlsr)


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=sender_ssrc, media_ssrc=media_ssrc))


def nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=sender_ssrc, media_ssrc=media_ssrc)
    packet.lost = sorted(set(lost))
    return bytes(packet)


def remb(sender_ssrc: int, bitrate: int, media_ssrcs: list[int]) -> bytes:
    return bytes(
        RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=sender_ssrc, media_ssrc=0,
            fci=pack_remb_fci(bitrate, media_ssrcs),
        )
    )


#: A receiver report's header (RFC 3550 6.4.2): V=2 and the block count, PT=201, length in
#: 32-bit words minus one, the sender's SSRC; then per block SSRC, fraction lost and the 24-bit
#: cumulative loss, extended highest sequence number, jitter, LSR, DLSR.
_RR_HEADER = struct.Struct("!BBHI")
_RR_BLOCK = struct.Struct("!IIIIII")
#: Report blocks one receiver report holds (its 5-bit count).
MAX_REPORT_BLOCKS = 31


def receiver_report(sender_ssrc: int, blocks: Sequence[tuple[int, ReceptionStats]],
                    now: float) -> bytes:
    """One receiver report about each (media SSRC, reception) of ``blocks`` (at most
    ``MAX_REPORT_BLOCKS``): a producer's layers are reported in one packet. ``now`` is on the
    clock of ``ReceptionStats.sender_report``: the delay since the last sender report (DLSR)
    lets the sender take it out of its round-trip time."""
    if not 0 < len(blocks) <= MAX_REPORT_BLOCKS:
        raise ValueError(f"a receiver report holds 1 to {MAX_REPORT_BLOCKS} blocks")
    out = [_RR_HEADER.pack(0x80 | len(blocks), 201, 1 + 6 * len(blocks), sender_ssrc)]
    for media_ssrc, stats in blocks:
        fraction, _lost = stats.interval_loss()
        lost = min(stats.cumulative_lost, 0x7FFFFF)  # never negative (ReceptionStats)
        delay = 0
        if stats.last_sr:
            delay = min(int(max(0.0, now - stats.last_sr_at) * 65536), 0xFFFFFFFF)
        out.append(_RR_BLOCK.pack(media_ssrc, fraction << 24 | lost,
                                  stats.extended_highest & 0xFFFFFFFF, 0, stats.last_sr, delay))
    return b"".join(out)


#: A sender report without report blocks (RFC 3550 6.4.1): V=2, PT=200, length 6 words.
_SENDER_REPORT = struct.Struct("!BBHIQIII")


def sender_report(
    ssrc: int, ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int
) -> bytes:
    return _SENDER_REPORT.pack(0x80, 200, 6, ssrc, ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
                               rtp_timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF,
                               octets & 0xFFFFFFFF)


def last_sr(ntp_timestamp: int) -> int:
    """What a receiver report echoes of a sender report with ``ntp_timestamp`` (LSR): its
    middle 32 bits."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def sender_report_ntp(report: bytes) -> int:
    """The NTP timestamp of a sender report :func:`sender_report` wrote."""
    return int.from_bytes(report[8:16], "big")


class ReceptionStats:
    """What a receiver report says about one incoming SSRC (RFC 3550 appendix A.3)."""

    __slots__ = ("_base", "_cycles", "_expected_prior", "_highest", "_received",
                 "_received_prior", "last_sr", "last_sr_at")

    def __init__(self) -> None:
        self._base = -1
        self._highest = 0
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        #: The middle 32 bits of the last sender report's NTP timestamp (LSR; 0: none yet),
        #: and when it arrived.
        self.last_sr = 0
        self.last_sr_at = 0.0

    def sender_report(self, ntp_timestamp: int, now: float) -> None:
        """The source's sender report with ``ntp_timestamp`` arrived ``now``."""
        self.last_sr = last_sr(ntp_timestamp)
        self.last_sr_at = now

    def add(self, sequence: int) -> None:
        if self._base < 0:
            self._base = sequence
            self._highest = sequence
        elif ((sequence - self._highest) & 0xFFFF) < 0x8000:
            if sequence < self._highest:
                self._cycles += 0x10000
            self._highest = sequence
        self._received += 1

    @property
    def extended_highest(self) -> int:
        return self._cycles + self._highest

    @property
    def cumulative_lost(self) -> int:
        if self._base < 0:
            return 0
        return max(0, self.extended_highest - self._base + 1 - self._received)

    def interval_loss(self) -> tuple[int, int]:
        """(fraction lost in 1/256, packets lost) since the previous call."""
        expected = self.extended_highest - self._base + 1 if self._base >= 0 else 0
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost = expected_interval - received_interval
        if expected_interval <= 0 or lost <= 0:
            return 0, 0
        return (lost << 8) // expected_interval, lost
