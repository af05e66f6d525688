"""RED (RFC 2198) audio: parsing, the primary frame for consumers without RED, renumbering; and
the SDP that asks for Opus FEC, DTX and RED."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from townhall.sfu import audio_sdp, red, rtp
from townhall.sfu.producer import Producer
from townhall.sfu.router import Router
from townhall.sfu.transport import Codec, IncomingTrack, parse_sdp

# One RED packet as a browser sends it: RTP header with the audio level extension (id 1,
# -30 dBov), payload type 63, then a redundant Opus block (PT 111, 960 samples earlier,
# 3 bytes "old") and the primary Opus block (PT 111, "new!").
RED_PACKET = bytes.fromhex(
    "90 3f 0102 0000f000 11223344"  # V=2 X=1, PT 63, sequence 258, timestamp 61440, SSRC
    "bede 0001 109e 0000"  # one-byte extensions: id 1 = audio level 30
    "ef 0f0003"  # F=1, PT 111, timestamp offset 960, length 3
    "6f"  # F=0, PT 111: the primary block
    "6f6c64"  # "old"
    "6e657721"  # "new!"
)
# The same with 3 bytes of RTP padding.
RED_PADDED = bytes([RED_PACKET[0] | 0x20]) + RED_PACKET[1:] + b"\x00\x00\x03"


def test_a_red_payload_is_read_as_its_blocks_redundant_first() -> None:
    header = rtp.parse_header(RED_PACKET)
    assert red.blocks(RED_PACKET[header.payload_offset:]) == [
        red.Block(111, 960, b"old"), red.Block(111, 0, b"new!")]


def test_the_primary_block_is_found_with_or_without_padding() -> None:
    header = rtp.parse_header(RED_PACKET)
    assert red.primary(RED_PACKET, header.payload_offset) == (111, len(RED_PACKET) - 4)
    padded = rtp.parse_header(RED_PADDED)
    block_type, start = red.primary(RED_PADDED, padded.payload_offset)
    assert (block_type, RED_PADDED[start:-3]) == (111, b"new!")


def test_blocks_are_renumbered_for_a_consumer_with_another_opus_payload_type() -> None:
    header = rtp.parse_header(RED_PACKET)
    renumbered = red.retype(RED_PACKET, header.payload_offset, 111, 96)
    assert red.blocks(renumbered[header.payload_offset:]) == [
        red.Block(96, 960, b"old"), red.Block(96, 0, b"new!")]
    assert renumbered[:header.payload_offset] == RED_PACKET[:header.payload_offset]


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "RED header is truncated"),
    (b"\xef\x0f", "RED block header is truncated"),
    (b"\xef\x0f\x00\x09\x6fabc", "RED block lengths exceed the packet"),
    (b"\xef\x0f\x00\x01", "RED header is truncated"),
])
def test_malformed_red_payloads_raise_value_error(payload: bytes, message: str) -> None:
    packet = RED_PACKET[:20] + payload
    with pytest.raises(ValueError, match=message):
        red.primary(packet, 20)
    with pytest.raises(ValueError, match=message):
        red.blocks(payload)


def test_encoding_round_trips() -> None:
    payload = red.encode([red.Block(111, 1920, b"a"), red.Block(111, 960, b"bc")],
                         red.Block(111, 0, b"def"))
    assert red.blocks(payload) == [red.Block(111, 1920, b"a"), red.Block(111, 960, b"bc"),
                                   red.Block(111, 0, b"def")]


async def test_a_producer_gives_red_consumers_red_and_the_others_the_primary_frame() -> None:
    router = Router("room")
    try:
        transport = router.create_transport("a")
        track = IncomingTrack(mid="0", kind="audio", codec=Codec("audio/opus", 48000, 111, 2),
                              ssrcs=(0x11223344,), mid_extension=None, audio_level_extension=1,
                              rtcp_ssrc=1, red_payload_type=63)
        producer = Producer("a", "microphone", track, transport, lambda: 0.0)
        header = rtp.parse_header(RED_PACKET)

        variant = producer.red_variant(RED_PACKET, header, None, 96)
        assert variant is not None
        data, plain, payload_type = variant
        opus = rtp.rewrite(data, plain, payload_type, 7, 9600, 0xABCD)
        assert rtp.parse_header(opus).payload_type == 96
        assert opus[12:] == b"new!", "the primary frame alone, as plain Opus"

        variant = producer.red_variant(RED_PACKET, header, 100, 96)
        assert variant is not None
        data, same, payload_type = variant
        forwarded = rtp.rewrite(data, same, payload_type, 8, 9600, 0xABCD)
        assert rtp.parse_header(forwarded).payload_type == 100
        assert red.blocks(forwarded[12:]) == [red.Block(96, 960, b"old"),
                                             red.Block(96, 0, b"new!")]
        again = producer.red_variant(RED_PACKET, header, 100, 96)
        assert again is not None and again[0] is data, "worked out once per packet"

        broken = RED_PACKET[:20] + b"\xef\x0f"
        assert producer.red_variant(broken, rtp.parse_header(broken), None, 96) is None
    finally:
        await router.close()


# -- SDP ------------------------------------------------------------------------------------------


async def _browser_like_offer() -> str:
    """An offer of one audio track whose Opus may be sent as RED, as Chrome makes it."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
    finally:
        await pc.close()
    sdp = re.sub(r"(m=audio \d+ \S+) 96", r"\1 96 63", sdp)
    return sdp.replace("a=rtpmap:96 opus/48000/2\r\n",
                       "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 minptime=10;useinbandfec=1\r\n"
                       "a=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96\r\n")


async def test_a_publishers_answer_asks_for_fec_and_dtx_and_accepts_red_first() -> None:
    router = Router("room")
    try:
        transport = router.create_transport("a")
        answer, tracks = await transport.answer(await _browser_like_offer())
        audio = answer[answer.index("m=audio"):]
        assert re.search(r"m=audio \d+ \S+ 63 96[ \r]", audio), "RED first: the browser sends it"
        assert "a=rtpmap:63 red/48000/2" in audio and "a=fmtp:63 96/96" in audio
        assert re.search(r"a=fmtp:96 .*useinbandfec=1;usedtx=1", audio)
        assert tracks[0].codec.mime_type == "audio/opus"
        assert tracks[0].red_payload_type == 63
    finally:
        await router.close()


async def test_without_red_offered_or_wanted_the_answer_has_only_opus() -> None:
    router = Router("room", red=False)
    try:
        transport = router.create_transport("a")
        answer, tracks = await transport.answer(await _browser_like_offer())
        assert "red/48000" not in answer and tracks[0].red_payload_type is None
        assert "usedtx=1" in answer
    finally:
        await router.close()


def test_an_offer_to_a_receiving_page_lists_red_after_opus_on_a_free_payload_type() -> None:
    offer = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 opus/48000/2\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 97 63\r\na=mid:1\r\na=rtpmap:97 VP8/90000\r\n"
             "a=rtpmap:63 H264/90000\r\n"
             "m=audio 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=rtpmap:96 opus/48000/2\r\n")
    completed = audio_sdp.complete_offer(offer)
    sections = completed.split("m=")
    assert sections[1].startswith("audio 9 UDP/TLS/RTP/SAVPF 96 62\r\n"), "63 is taken"
    assert "a=rtpmap:62 red/48000/2\r\na=fmtp:62 96/96\r\n" in sections[1]
    assert "a=fmtp:96 useinbandfec=1;usedtx=1\r\n" in sections[1]
    assert sections[2] == offer.split("m=")[2], "video untouched"
    assert sections[3] == offer.split("m=")[3], "a rejected section untouched"
    media = parse_sdp(completed).media[0]
    assert audio_sdp.red_payload_type(media, 96) == 62
    assert audio_sdp.red_payload_type(media, 111) is None


async def test_a_consumer_slot_learns_red_from_the_pages_answer() -> None:
    router = Router("room")
    try:
        transport = router.create_transport("b")
        slot = transport.add_outgoing(Codec("audio/opus", 48000, 111, 2))
        offer = await transport.offer()
        assert "red/48000/2" in offer
        page = RTCPeerConnection()
        try:
            await page.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await page.setLocalDescription(await page.createAnswer())
            answer = str(page.localDescription.sdp)
        finally:
            await page.close()
        red_answer = re.sub(r"(m=audio \d+ \S+ 96)", r"\1 63", answer).replace(
            "a=rtpmap:96 opus/48000/2\r\n",
            "a=rtpmap:96 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96\r\n")
        await transport.accept_answer(red_answer)
        assert (slot.payload_type, slot.red_payload_type) == (96, 63)
    finally:
        await router.close()
