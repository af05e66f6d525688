"""Renegotiating a large meeting's receiving connections stays cheap: the certificate's
fingerprints are computed once per connection, not for every section of every offer, and an
answer is parsed once."""

from __future__ import annotations

import re

import pytest
from aiortc import rtcdtlstransport

from support import NoMedia
from townhall.sfu import transport as transport_module
from townhall.sfu.transport import Codec, Transport

VP8 = Codec("video/VP8", 90000, 96)
OPUS = Codec("audio/opus", 48000, 111, 2)


async def test_offers_of_many_sections_reuse_the_fingerprints_computed_at_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digests = 0
    digest = rtcdtlstransport.certificate_digest

    def counting_digest(certificate: object, algorithm: str) -> str:
        nonlocal digests
        digests += 1
        return digest(certificate, algorithm)  # type: ignore[arg-type]

    monkeypatch.setattr(rtcdtlstransport, "certificate_digest", counting_digest)
    transport = Transport(NoMedia(), name="fingerprints")
    try:
        at_start = digests
        for _ in range(10):
            transport.add_outgoing(VP8)
            transport.add_outgoing(OPUS)
        offers = [await transport.offer() for _ in range(2)]
        certificate = transport.pc._RTCPeerConnection__certificates[0]  # type: ignore[attr-defined]
        real = digest(certificate._cert, "sha-256")
    finally:
        await transport.close()
    assert at_start == 3  # sha-256, -384 and -512, once
    assert digests == at_start
    for offer in offers:
        fingerprints = re.findall(r"a=fingerprint:sha-256 (\S+)", offer)
        assert len(fingerprints) == 20 and set(fingerprints) == {real}


async def test_an_answer_is_not_parsed_again_after_the_peer_connection_parsed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offerer = Transport(NoMedia(), name="offers")
    answerer = Transport(NoMedia(), name="answers")
    try:
        offerer.add_outgoing(VP8)
        offerer.add_outgoing(OPUS)
        offer = await offerer.offer()
        await answerer.pc.setRemoteDescription(
            transport_module.RTCSessionDescription(sdp=offer, type="offer"))
        await answerer.pc.setLocalDescription(await answerer.pc.createAnswer())
        answer = answerer.pc.localDescription.sdp

        def no_second_parse(text: str) -> None:
            raise AssertionError("the answer was parsed twice")

        monkeypatch.setattr(transport_module, "parse_sdp", no_second_parse)
        await offerer.accept_answer(answer)
        first_payload_types = [int(pt) for pt in re.findall(r"m=\w+ \d+ \S+ (\d+)", answer)]
        assert [slot.payload_type for slot in offerer._slots] == first_payload_types
    finally:
        await offerer.close()
        await answerer.close()
