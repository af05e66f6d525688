"""RED (RFC 2198) audio payloads: Opus with the previous frame carried again in each packet.

A RED payload starts with one 4-byte header per redundant block (F=1, block payload type,
timestamp offset, block length) and a 1-byte header for the primary block (F=0, payload type);
the blocks' data follow in the same order, the primary block last::

    |1|  PT=111  | timestamp offset (14) | length (10) |0|  PT=111  | redundant data | primary data

The SFU forwards RED untouched to consumers that negotiated it, with the block payload types
renumbered when their Opus payload type differs (``retype``), and sends the primary block alone,
as plain Opus, to the others (``primary``). Malformed payloads raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    payload_type: int
    #: How much earlier than the packet's timestamp this block's timestamp is (0 for the primary).
    timestamp_offset: int
    data: bytes


def _end(data: bytes) -> int:
    """End of the payload: the packet's end, before any RTP padding."""
    return len(data) - (data[-1] if data[0] & 0x20 else 0)


def primary(data: bytes, offset: int) -> tuple[int, int]:
    """The primary block of the RED payload at ``offset`` of an RTP packet: its payload type and
    the offset of its data (which runs to the end of the payload)."""
    end = _end(data)
    pos = offset
    redundant = 0
    while True:
        if pos >= end:
            raise ValueError("RED header is truncated")
        first = data[pos]
        if not first & 0x80:
            break
        if pos + 4 > end:
            raise ValueError("RED block header is truncated")
        redundant += ((data[pos + 2] & 0x03) << 8) | data[pos + 3]
        pos += 4
    start = pos + 1 + redundant
    if start > end:
        raise ValueError("RED block lengths exceed the packet")
    return first & 0x7F, start


def retype(data: bytes, offset: int, old: int, new: int) -> bytes:
    """A copy of the packet whose RED blocks of payload type ``old`` say ``new``."""
    out = bytearray(data)
    end = _end(data)
    pos = offset
    while pos < end:
        first = out[pos]
        if first & 0x7F == old:
            out[pos] = (first & 0x80) | new
        if not first & 0x80:
            return bytes(out)
        pos += 4
    raise ValueError("RED header is truncated")


def blocks(payload: bytes) -> list[Block]:
    """Every block of a RED payload, redundant ones first."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        if pos >= len(payload):
            raise ValueError("RED header is truncated")
        first = payload[pos]
        if not first & 0x80:
            headers.append((first & 0x7F, 0, -1))
            pos += 1
            break
        if pos + 4 > len(payload):
            raise ValueError("RED block header is truncated")
        word = int.from_bytes(payload[pos + 1:pos + 4], "big")
        headers.append((first & 0x7F, word >> 10, word & 0x3FF))
        pos += 4
    found = []
    for payload_type, timestamp_offset, length in headers:
        if length < 0:
            length = len(payload) - pos
        if pos + length > len(payload):
            raise ValueError("RED block lengths exceed the packet")
        found.append(Block(payload_type, timestamp_offset, bytes(payload[pos:pos + length])))
        pos += length
    return found


def encode(redundant: list[Block], primary_block: Block) -> bytes:
    """A RED payload (for tests and tools)."""
    out = bytearray()
    for block in redundant:
        if not 0 <= block.timestamp_offset < 1 << 14 or len(block.data) >= 1 << 10:
            raise ValueError("RED block does not fit its header")
        word = (block.timestamp_offset << 10) | len(block.data)
        out += bytes([0x80 | block.payload_type]) + word.to_bytes(3, "big")
    out.append(primary_block.payload_type)
    for block in redundant:
        out += block.data
    return bytes(out + primary_block.data)
