"""RTP header access on raw bytes, for the forwarding path.

Parsing a whole packet into objects costs more than forwarding it, so the SFU reads only the fixed
header and the extension block, and writes a new header for each consumer by slicing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

_FIXED = struct.Struct("!BBHII")
_unpack_fixed = _FIXED.unpack_from
_pack_fixed = _FIXED.pack
RTP_MIN_SIZE = 12


class RtpHeader:
    """The fixed header of one RTP packet and where its parts are (see :func:`parse_header`).

    A plain ``__slots__`` class: one is made per packet, and a frozen dataclass costs three
    times as much to build.
    """

    __slots__ = ("_abs_send_time", "_body", "_rest", "_tail", "csrc_end", "extension_offset",
                 "marker", "payload_offset", "payload_type", "sequence", "ssrc", "timestamp")

    def __init__(
        self,
        marker: bool,
        payload_type: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        extension_offset: int,
        payload_offset: int,
        csrc_end: int,
    ) -> None:
        self.marker = marker
        self.payload_type = payload_type
        self.sequence = sequence
        self.timestamp = timestamp
        self.ssrc = ssrc
        #: Offset of the extension block (its 4-byte header), or -1 when there is none.
        self.extension_offset = extension_offset
        #: Offset of the payload: everything the SFU forwards after its own header.
        self.payload_offset = payload_offset
        #: End of the CSRC list (it starts at 12).
        self.csrc_end = csrc_end
        # Parts of every consumer's copy that are the same for all of them, made once per
        # packet: the payload after the header, the abs-send-time block (extension id, block),
        # and that block followed by the payload (block, both).
        self._body: bytes | None = None
        self._abs_send_time: tuple[int, bytes] | None = None
        self._tail: tuple[bytes, bytes] | None = None
        #: (bytes skipped, the payload after them): behind a rewritten VP8 descriptor.
        self._rest: tuple[int, bytes] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RtpHeader):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"RtpHeader(marker={self.marker}, payload_type={self.payload_type}, "
                f"sequence={self.sequence}, timestamp={self.timestamp}, ssrc={self.ssrc}, "
                f"extension_offset={self.extension_offset}, "
                f"payload_offset={self.payload_offset}, csrc_end={self.csrc_end})")

    def _fields(self) -> tuple[int | bool, ...]:
        return (self.marker, self.payload_type, self.sequence, self.timestamp, self.ssrc,
                self.extension_offset, self.payload_offset, self.csrc_end)


def parse_header(data: bytes) -> RtpHeader:
    """Read an RTP header, raising ``ValueError`` if the packet is malformed."""
    size = len(data)
    if size < RTP_MIN_SIZE:
        raise ValueError("RTP packet length is less than 12 bytes")
    first, second, sequence, timestamp, ssrc = _unpack_fixed(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    offset = RTP_MIN_SIZE + 4 * (first & 0x0F)
    csrc_end = offset
    extension_offset = -1
    if first & 0x10:
        if size < offset + 4:
            raise ValueError("RTP packet is truncated in its extension header")
        extension_offset = offset
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    if offset > size:
        raise ValueError("RTP packet is truncated")
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or offset + padding > size:
            raise ValueError("RTP packet has invalid padding")
    return RtpHeader(second > 127, second & 0x7F, sequence, timestamp, ssrc,
                     extension_offset, offset, csrc_end)


def rewrite(
    data: bytes,
    header: RtpHeader,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
) -> bytes:
    """A copy of ``data`` with a new header and without the extension block.

    Extension IDs are negotiated per transport, so the producer's extensions mean nothing to a
    consumer; the consumer's SDP lists its SSRC, so nothing needs the MID extension to demultiplex.
    What follows the new fixed header (CSRCs and payload) is cut out of ``data`` once per packet
    and shared by every consumer's copy.
    """
    body = header._body
    if body is None:
        csrc_end = header.csrc_end
        body = header._body = (
            data[header.payload_offset:] if csrc_end == RTP_MIN_SIZE
            else data[RTP_MIN_SIZE:csrc_end] + data[header.payload_offset:]
        )
    # keep padding and CSRC count, drop the extension bit
    return _pack_fixed(0x80 | (data[0] & 0x2F), (0x80 if header.marker else 0) | payload_type,
                       sequence, timestamp, ssrc) + body


def rewrite_extended(
    data: bytes,
    header: RtpHeader,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    extension: bytes,
    head: bytes = b"",
    skip: int = 0,
) -> bytes:
    """Like ``rewrite``, with the consumer's own extension block (``extension``, e.g. from
    ``abs_send_time_block``; may be empty) and the first ``skip`` payload bytes replaced by
    ``head`` (a rewritten VP8 descriptor)."""
    if not extension and not head:
        return rewrite(data, header, payload_type, sequence, timestamp, ssrc)
    fixed = _pack_fixed(0x80 | (data[0] & 0x2F) | (0x10 if extension else 0),
                        (0x80 if header.marker else 0) | payload_type, sequence, timestamp, ssrc)
    csrc_end = header.csrc_end
    if csrc_end == RTP_MIN_SIZE:
        if not head:
            tail = header._tail
            if tail is None or tail[0] is not extension:
                body = header._body
                if body is None:
                    body = header._body = data[header.payload_offset:]
                tail = header._tail = (extension, extension + body)
            return fixed + tail[1]
        rest = header._rest
        if rest is None or rest[0] != skip:
            rest = header._rest = (skip, data[header.payload_offset + skip:])
        return b"".join((fixed, extension, head, rest[1]))
    return (fixed + data[RTP_MIN_SIZE:csrc_end] + extension + head
            + data[header.payload_offset + skip:])


#: Most padding one RTP packet carries (its length is one byte).
MAX_PADDING = 255
_PADDING = bytes(MAX_PADDING - 1)


def padding_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int,
                   extension: bytes, size: int = MAX_PADDING) -> bytes:
    """An RTP packet with no payload and ``size`` bytes of padding (RFC 3550 5.1), as senders
    use to probe bandwidth; receivers count it and discard it."""
    size = max(1, min(MAX_PADDING, size))
    first = 0xA0 | (0x10 if extension else 0)
    return (_FIXED.pack(first, payload_type, sequence, timestamp, ssrc) + extension
            + _PADDING[:size - 1] + bytes((size,)))


_ABS_SEND_TIME_BLOCK = struct.Struct("!HHBBH")


def abs_send_time_for(header: RtpHeader, extension_id: int, clock: Callable[[], float]) -> bytes:
    """The abs-send-time block for the copies of the packet ``header`` describes.

    Made once per packet and extension id, at the first copy: every consumer's copy of one
    packet leaves within the same fan-out, microseconds apart, and a receiver's estimate looks
    at how send times differ from packet to packet. The same bytes object each time, so
    ``rewrite_extended`` can reuse what it made for the previous copy.
    """
    cached = header._abs_send_time
    if cached is not None and cached[0] == extension_id:
        return cached[1]
    block = abs_send_time_block(extension_id, clock())
    header._abs_send_time = (extension_id, block)
    return block


def abs_send_time_block(extension_id: int, now: float) -> bytes:
    """A one-byte-header extension block carrying abs-send-time (6.18 fixed-point seconds)."""
    value = int(now * 262144.0) & 0xFFFFFF
    return _ABS_SEND_TIME_BLOCK.pack(0xBEDE, 1, (extension_id << 4) | 2, value >> 16,
                                     value & 0xFFFF)


def extensions(data: bytes, header: RtpHeader) -> dict[int, bytes]:
    """The header extensions of a packet by ID (one-byte and two-byte forms, RFC 8285).

    Raises ``ValueError`` on a malformed block.
    """
    if header.extension_offset < 0:
        return {}
    offset = header.extension_offset
    profile = (data[offset] << 8) | data[offset + 1]
    pos = offset + 4
    end = header.payload_offset
    found: dict[int, bytes] = {}
    if profile == 0xBEDE:
        while pos < end:
            byte = data[pos]
            if byte == 0:
                pos += 1
                continue
            ext_id, length = byte >> 4, (byte & 0x0F) + 1
            if ext_id == 15:
                break
            if pos + 1 + length > end:
                raise ValueError("RTP one-byte extension is truncated")
            found[ext_id] = bytes(data[pos + 1:pos + 1 + length])
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise ValueError("RTP two-byte extension is truncated")
            length = data[pos + 1]
            if pos + 2 + length > end:
                raise ValueError("RTP two-byte extension is truncated")
            found[ext_id] = bytes(data[pos + 2:pos + 2 + length])
            pos += 2 + length
    return found


def audio_level_at(data: bytes, header: RtpHeader, ext_id: int) -> int:
    """The RFC 6464 level (0 loudest .. 127 silence, in -dBov) in extension ``ext_id``, or -1
    when the packet has none or its extension block is malformed.

    For the packet path: scans the block in place, one-byte or two-byte form, without building
    anything.
    """
    offset = header.extension_offset
    if offset < 0:
        return -1
    end = header.payload_offset
    pos = offset + 4
    if data[offset] == 0xBE and data[offset + 1] == 0xDE:
        while pos < end:
            byte = data[pos]
            if byte == 0:
                pos += 1
                continue
            found = byte >> 4
            if found == 15 or pos + 2 + (byte & 0x0F) > end:
                return -1
            if found == ext_id:
                return data[pos + 1] & 0x7F
            pos += 2 + (byte & 0x0F)
        return -1
    if data[offset] == 0x10 and data[offset + 1] & 0xF0 == 0:
        while pos + 1 < end:
            found = data[pos]
            if found == 0:
                pos += 1
                continue
            length = data[pos + 1]
            if pos + 2 + length > end:
                return -1
            if found == ext_id:
                return data[pos + 2] & 0x7F if length else -1
            pos += 2 + length
    return -1


def audio_level(value: bytes) -> tuple[bool, int]:
    """Decode the RFC 6464 audio level: (voice activity, level in -dBov, 0 loudest..127)."""
    if not value:
        raise ValueError("audio level extension is empty")
    return bool(value[0] & 0x80), value[0] & 0x7F


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192–223 in the second byte."""
    return len(data) >= 2 and 192 <= data[1] <= 223

