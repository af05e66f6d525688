"""The byte-level RTP header code of the forwarding path."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtpPacket

from townhall.sfu import rtp


def packet(extensions: bytes = b"", csrcs: int = 0, payload: bytes = b"\x01\x02\x03") -> bytes:
    first = 0x80 | csrcs | (0x10 if extensions else 0)
    data = struct.pack("!BBHII", first, 0x80 | 96, 4242, 900000, 0x11223344)
    data += b"".join(struct.pack("!I", 7 + i) for i in range(csrcs))
    if extensions:
        padded = extensions + b"\x00" * (-len(extensions) % 4)
        data += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    return data + payload


def test_header_fields_are_read_from_the_fixed_header() -> None:
    header = rtp.parse_header(packet())
    assert (header.marker, header.payload_type, header.sequence, header.timestamp,
            header.ssrc) == (True, 96, 4242, 900000, 0x11223344)
    assert header.payload_offset == 12
    assert header.extension_offset == -1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00", "RTP packet length is less than 12 bytes"),
        (b"\x40" + b"\x00" * 11, "RTP packet has invalid version"),
        (b"\x8f" + b"\x00" * 11, "RTP packet is truncated"),
        (b"\x90" + b"\x00" * 11, "RTP packet is truncated in its extension header"),
        (b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05", "RTP packet is truncated"),
        (b"\xa0" + b"\x00" * 11 + b"\x05", "RTP packet has invalid padding"),
    ],
)
def test_malformed_packets_raise_value_error_with_exact_messages(
    data: bytes, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        rtp.parse_header(data)
    assert str(info.value) == message


def test_rewrite_sets_new_header_fields_and_strips_extensions() -> None:
    data = packet(extensions=b"\x10\xaa\x22\x01\x02\x03", csrcs=2, payload=b"payload")
    header = rtp.parse_header(data)
    out = rtp.rewrite(data, header, 100, 7, 123456, 0xCAFEBABE)
    parsed = RtpPacket.parse(out)
    assert (parsed.payload_type, parsed.sequence_number, parsed.timestamp, parsed.ssrc) == (
        100, 7, 123456, 0xCAFEBABE)
    assert parsed.marker == 1
    assert parsed.csrc == [7, 8]
    assert parsed.payload == b"payload"
    assert not out[0] & 0x10


def test_one_byte_extensions_are_found_by_id() -> None:
    data = packet(extensions=b"\x10\xaa\x00\x22\x01\x02\x03")
    assert rtp.extensions(data, rtp.parse_header(data)) == {1: b"\xaa", 2: b"\x01\x02\x03"}


def test_a_truncated_extension_element_is_reported() -> None:
    data = packet(extensions=b"\x1f\xaa")  # claims 16 bytes
    with pytest.raises(ValueError, match="one-byte extension is truncated"):
        rtp.extensions(data, rtp.parse_header(data))


def test_audio_level_reads_voice_activity_and_level() -> None:
    assert rtp.audio_level(b"\x9e") == (True, 30)
    assert rtp.audio_level(b"\x7f") == (False, 127)
    with pytest.raises(ValueError):
        rtp.audio_level(b"")


def test_rtcp_is_told_apart_from_rtp_by_packet_type() -> None:
    assert rtp.is_rtcp(b"\x80\xc8")
    assert not rtp.is_rtcp(b"\x80\x60")
