"""Media sections an offer rejects stay rejected in the answer."""

from __future__ import annotations

from townhall.sfu.rejected_sdp import rejected_as_offered

OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=sendonly",
    "m=video 0 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=inactive",
]) + "\r\n"
ANSWER = "\r\n".join([
    "v=0", "o=- 3 4 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=audio 49037 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=recvonly",
    "m=video 49037 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=recvonly",
    "m=video 49037 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=inactive",
]) + "\r\n"


def test_a_section_the_offer_rejected_is_rejected_and_unbundled_in_the_answer() -> None:
    lines = rejected_as_offered(OFFER, ANSWER).splitlines()
    assert "a=group:BUNDLE 0 1" in lines
    assert [line for line in lines if line.startswith("m=")] == [
        "m=audio 49037 UDP/TLS/RTP/SAVPF 111", "m=video 49037 UDP/TLS/RTP/SAVPF 96",
        "m=video 0 UDP/TLS/RTP/SAVPF 96"]


def test_an_answer_to_an_offer_that_rejects_nothing_is_left_as_it_is() -> None:
    offer = OFFER.replace("m=video 0 ", "m=video 9 ").replace("BUNDLE 0 1", "BUNDLE 0 1 2")
    assert rejected_as_offered(offer, ANSWER) == ANSWER


def test_a_bundle_group_left_empty_is_dropped() -> None:
    offer = OFFER.replace("m=audio 9 ", "m=audio 0 ").replace("m=video 9 ", "m=video 0 ") \
        .replace("a=group:BUNDLE 0 1\r\n", "")
    answer = rejected_as_offered(offer, ANSWER)
    assert "a=group:BUNDLE" not in answer
    assert answer.count(" 0 UDP/TLS/RTP/SAVPF") == 3



def test_a_bundle_only_section_is_not_taken_for_a_rejected_one() -> None:
    # RFC 9143: port 0 with a=bundle-only, its mid in the group (GStreamer offers so)
    offer = OFFER.replace("m=video 0 ", "m=video 9 ").replace("BUNDLE 0 1", "BUNDLE 0 1 2") \
        .replace("m=audio 9 ", "m=audio 0 ").replace("a=mid:0", "a=mid:0\r\na=bundle-only")
    assert rejected_as_offered(offer, ANSWER) == ANSWER
