"""VP8 RTP payloads (RFC 7741): the descriptor fields a simulcast switch needs.

A consumer that moves from one simulcast layer to another must switch at a keyframe of the new
layer and keep the picture id and TL0PICIDX continuous, so the receiver's decoder sees one stream.
This module reads the payload descriptor and the start of the VP8 frame header on raw bytes, and
writes a descriptor with new values; ``PictureRewriter`` keeps the offsets of one consumer.

Payload descriptor::

     0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+
    |X|R|N|S|R| PID |   S: start of a partition, PID: partition index
    +-+-+-+-+-+-+-+-+
    |I|L|T|K| RSV   |   (if X) I: picture id, L: TL0PICIDX, T: TID, K: KEYIDX present
    +-+-+-+-+-+-+-+-+
    |M| PictureID   |   (if I) M: the picture id has 15 bits (one more byte follows)
    +-+-+-+-+-+-+-+-+
    |   TL0PICIDX   |   (if L)
    +-+-+-+-+-+-+-+-+
    |TID|Y| KEYIDX  |   (if T or K)
    +-+-+-+-+-+-+-+-+

The first partition of a frame starts with a 3-byte frame tag whose lowest bit is 0 on a
keyframe, followed on keyframes by the start code ``9d 01 2a`` and the frame's width and height.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.sfu.fields import PictureFields

_START_CODE = b"\x9d\x01\x2a"


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What the SFU reads from one VP8 payload."""

    #: Length of the payload descriptor in bytes.
    size: int
    #: This packet starts a frame (S bit set, partition index 0).
    start: bool
    #: This packet starts a keyframe.
    keyframe: bool
    #: The picture id, or -1 when absent.
    picture_id: int
    #: 15 or 7 (bits of the picture id), 0 when absent.
    picture_id_bits: int
    #: TL0PICIDX, or -1 when absent.
    tl0picidx: int
    #: Temporal layer index, or -1 when absent.
    temporal_id: int


def parse(data: bytes, offset: int, end: int | None = None) -> Descriptor:
    """Read the descriptor of the VP8 payload at ``data[offset:end]``.

    Raises ``ValueError`` if it is truncated.
    """
    if end is None:
        end = len(data)
    if offset >= end:
        raise ValueError("VP8 payload is empty")
    first = data[offset]
    pos = offset + 1
    picture_id = tl0picidx = temporal_id = -1
    bits = 0
    if first & 0x80:
        if pos >= end:
            raise ValueError("VP8 descriptor is truncated")
        extended = data[pos]
        pos += 1
        if extended & 0x80:
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated")
            if data[pos] & 0x80:
                if pos + 1 >= end:
                    raise ValueError("VP8 descriptor is truncated")
                picture_id = ((data[pos] & 0x7F) << 8) | data[pos + 1]
                bits = 15
                pos += 2
            else:
                picture_id = data[pos]
                bits = 7
                pos += 1
        if extended & 0x40:
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated")
            tl0picidx = data[pos]
            pos += 1
        if extended & 0x30:
            if pos >= end:
                raise ValueError("VP8 descriptor is truncated")
            if extended & 0x20:
                temporal_id = data[pos] >> 6
            pos += 1
    start = (first & 0x1F) == 0x10
    keyframe = start and pos < end and not data[pos] & 0x01
    return Descriptor(pos - offset, start, keyframe, picture_id, bits, tl0picidx, temporal_id)


def keyframe_size(data: bytes, offset: int, descriptor: Descriptor) -> tuple[int, int] | None:
    """(width, height) of the keyframe that starts in this payload, if it says so."""
    if not descriptor.keyframe:
        return None
    header = offset + descriptor.size
    if len(data) < header + 10 or data[header + 3:header + 6] != _START_CODE:
        return None
    width = (data[header + 6] | (data[header + 7] << 8)) & 0x3FFF
    height = (data[header + 8] | (data[header + 9] << 8)) & 0x3FFF
    return width, height


def write(descriptor: Descriptor, original: bytes, offset: int, picture_id: int,
          tl0picidx: int) -> bytes:
    """The descriptor at ``original[offset:]`` with a new picture id and TL0PICIDX.

    Fields the descriptor does not carry stay absent; the length never changes.
    """
    out = bytearray(original[offset:offset + descriptor.size])
    pos = 2
    if descriptor.picture_id_bits == 15:
        out[pos] = 0x80 | ((picture_id >> 8) & 0x7F)
        out[pos + 1] = picture_id & 0xFF
        pos += 2
    elif descriptor.picture_id_bits == 7:
        out[pos] = picture_id & 0x7F
        pos += 1
    if descriptor.tl0picidx >= 0:
        out[pos] = tl0picidx & 0xFF
    return bytes(out)


class PictureRewriter(PictureFields):
    """Per-consumer picture id and TL0PICIDX offsets, continuous across layer switches.

    Like ``SequenceRewriter``: the first run passes through unchanged; after ``restart()`` the
    next packet's picture id follows the last one sent and its TL0PICIDX the last one sent.
    """

    __slots__ = ()

    def __init__(self) -> None:
        self._picture_offset = 0
        self._tl0_offset = 0
        self._last_picture_id = -1
        self._last_tl0 = -1
        self._started = False
        #: Whether packets need rewriting at all (False until the first switch).
        self.active = False

    def restart(self) -> None:
        self._started = False

    def rewrite(self, descriptor: Descriptor) -> tuple[int, int]:
        """(picture id, TL0PICIDX) to send for a packet with ``descriptor``."""
        picture_id, tl0 = descriptor.picture_id, descriptor.tl0picidx
        mask = 0x7FFF if descriptor.picture_id_bits == 15 else 0x7F
        if not self._started:
            self._started = True
            if self._last_picture_id >= 0 and picture_id >= 0:
                self._picture_offset = (self._last_picture_id + 1 - picture_id) & 0x7FFF
            if self._last_tl0 >= 0 and tl0 >= 0:
                self._tl0_offset = (self._last_tl0 + 1 - tl0) & 0xFF
            self.active = bool(self._picture_offset or self._tl0_offset)
        out_picture, out_tl0 = self.output(descriptor)
        if out_picture >= 0 and (self._last_picture_id < 0 or
                                 ((out_picture - self._last_picture_id) & mask) < (mask >> 1)):
            self._last_picture_id = out_picture
        if out_tl0 >= 0 and (self._last_tl0 < 0 or ((out_tl0 - self._last_tl0) & 0xFF) < 0x80):
            self._last_tl0 = out_tl0
        return out_picture, out_tl0

    def output(self, descriptor: Descriptor) -> tuple[int, int]:
        """(picture id, TL0PICIDX) for ``descriptor`` in the current run, changing nothing
        (for retransmissions)."""
        mask = 0x7FFF if descriptor.picture_id_bits == 15 else 0x7F
        picture_id, tl0 = descriptor.picture_id, descriptor.tl0picidx
        return ((picture_id + self._picture_offset) & mask if picture_id >= 0 else -1,
                (tl0 + self._tl0_offset) & 0xFF if tl0 >= 0 else -1)
