"""Packet cache, sequence rewriting and reception statistics: the SFU's per-packet state."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtcpPacket, RtcpRrPacket

from support import Clock
from townhall.sfu import rtcp, sequence
from townhall.sfu.packet_cache import PacketCache
from townhall.sfu.sequence import SequenceRewriter


def test_packet_cache_returns_what_it_stored_until_overwritten() -> None:
    cache = PacketCache(8)
    for seq in range(65530, 65536):
        cache.store(seq, bytes([seq & 0xFF]))
    cache.store(0, b"wrapped")
    assert cache.get(65535) == b"\xff"
    assert cache.get(0) == b"wrapped"
    cache.store(8, b"later")  # same slot as 0
    assert cache.get(0) is None
    assert cache.get(1234) is None


def test_packet_cache_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        PacketCache(100)


def test_rewriter_passes_a_first_run_through_unchanged() -> None:
    rewriter = SequenceRewriter(90000, Clock(100.0))
    assert rewriter.rewrite(1000, 5000) == (1000, 5000)
    assert rewriter.rewrite(1001, 8000) == (1001, 8000)


def test_rewriter_continues_after_a_restart_with_the_elapsed_time() -> None:
    clock = Clock(100.0)
    rewriter = SequenceRewriter(90000, clock)
    rewriter.rewrite(65535, 4294967000)
    clock.now += 0.5
    rewriter.restart()
    assert rewriter.rewrite(20, 77) == (0, (4294967000 + 45000) & 0xFFFFFFFF)
    assert rewriter.rewrite(21, 3077) == (1, (4294967000 + 48000) & 0xFFFFFFFF)


def test_rewriter_maps_output_sequence_numbers_back_for_nacks() -> None:
    clock = Clock(100.0)
    rewriter = SequenceRewriter(48000, clock)
    rewriter.rewrite(10, 0)
    rewriter.restart()
    out, _ = rewriter.rewrite(500, 0)
    rewriter.rewrite(501, 960)
    assert rewriter.input_sequence(out) == 500
    assert rewriter.input_sequence((out + 1) & 0xFFFF) == 501
    assert rewriter.input_sequence((out + 50) & 0xFFFF) is None  # not sent yet


def test_late_packets_do_not_move_the_rewriter_backwards() -> None:
    rewriter = SequenceRewriter(90000, Clock(100.0))
    rewriter.rewrite(10, 0)
    rewriter.rewrite(12, 6000)
    rewriter.rewrite(11, 3000)  # reordered
    assert rewriter.last_output == (12, 6000)


def test_reception_stats_count_loss_per_interval_and_in_total() -> None:
    stats = rtcp.ReceptionStats()
    for seq in [65530, 65531, 65533, 65534, 0, 1, 3]:
        stats.add(seq)
    assert stats.extended_highest == 0x10000 + 3
    assert stats.cumulative_lost == 3
    fraction, lost = stats.interval_loss()
    assert lost == 3 and fraction == (3 << 8) // 10
    assert stats.interval_loss() == (0, 0)


def test_feedback_is_read_from_the_packets_the_sfu_builds() -> None:
    stats = rtcp.ReceptionStats()
    stats.add(1)
    compound = (rtcp.nack(1, 2, [9, 5, 5]) + rtcp.pli(1, 3)
                + rtcp.sender_report(4, 1 << 40, 99, 3, 300)
                + rtcp.receiver_report(1, [(2, stats)], 0.0))
    kinds = [(f.kind, f.media_ssrc) for f in rtcp.parse(compound)]
    assert kinds == [("nack", 2), ("keyframe", 3), ("sender-report", 4), ("report", 2)]
    assert rtcp.parse(rtcp.nack(1, 2, [9, 5, 5]))[0].lost == (5, 9)


def test_feedback_beside_a_description_of_several_sources_is_read() -> None:
    # two chunks of an SDES, each a CNAME of 6 bytes and four null octets (RFC 3550 6.5)
    chunks = b"".join(struct.pack("!IBB", ssrc, 1, 6) + b"camera" + bytes(4)
                      for ssrc in (7, 0x1FF))
    description = struct.pack("!BBH", 0x82, 202, len(chunks) // 4) + chunks
    compound = rtcp.sender_report(7, 1 << 40, 99, 3, 300) + description + rtcp.pli(7, 3)
    kinds = [(f.kind, f.media_ssrc) for f in rtcp.parse(compound)]
    assert kinds == [("sender-report", 7), ("keyframe", 3)]


def test_a_producers_receiver_report_reads_back_block_by_block_with_its_delays() -> None:
    received, lossy, doubled = rtcp.ReceptionStats(), rtcp.ReceptionStats(), rtcp.ReceptionStats()
    for number in range(65530, 65536 + 4):
        received.add(number & 0xFFFF)
    lossy.add(1)
    lossy.add(10)  # 8 lost of 10
    lossy.sender_report(0x1234_5678_9ABC << 16 | 0xDEF0, now=10.0)  # LSR: the middle 32 bits
    doubled.add(7)
    doubled.add(7)  # a duplicate: more received than expected, reported as no loss
    report = rtcp.receiver_report(99, [(1, received), (2, lossy), (3, doubled)], now=10.75)
    parsed = RtcpPacket.parse(report)
    assert len(parsed) == 1 and isinstance(parsed[0], RtcpRrPacket) and parsed[0].ssrc == 99
    blocks = [(b.ssrc, b.fraction_lost, b.packets_lost, b.highest_sequence, b.lsr, b.dlsr)
              for b in parsed[0].reports]
    # the delay since the last sender report in 1/65536 s (0 where none came)
    assert blocks == [(1, 0, 0, 0x10003, 0, 0),
                      (2, (8 << 8) // 10, 8, 10, 0x56789ABC, 49152),
                      (3, 0, 0, 7, 0, 0)]


def test_a_receiver_report_holds_one_to_31_blocks() -> None:
    stats = rtcp.ReceptionStats()
    stats.add(1)
    assert len(rtcp.receiver_report(1, [(n, stats) for n in range(31)], 0.0)) == 8 + 31 * 24
    for count in (0, 32):
        with pytest.raises(ValueError):
            rtcp.receiver_report(1, [(n, stats) for n in range(count)], 0.0)


def test_malformed_rtcp_raises_value_error() -> None:
    with pytest.raises(ValueError):
        rtcp.parse(b"\x80\xc9\x00\x07\x00")


def test_padding_moves_later_output_on_and_nacks_still_map_to_the_right_packets() -> None:
    rewriter = SequenceRewriter(90000, Clock(100.0))
    assert rewriter.rewrite(100, 3000) == (100, 3000)
    assert rewriter.rewrite(101, 3000) == (101, 3000)
    assert rewriter.pad() == (102, 3000)
    assert rewriter.pad() == (103, 3000)
    assert rewriter.rewrite(102, 6000) == (104, 6000)
    assert rewriter.rewrite(104, 9000) == (106, 9000)
    assert rewriter.rewrite(103, 6000) == (105, 6000)  # late: after the padding, in its place
    assert [rewriter.input_sequence(out) for out in range(100, 107)] == [
        100, 101, None, None, 102, 103, 104]


def test_a_late_packet_from_before_the_padding_keeps_its_place() -> None:
    rewriter = SequenceRewriter(90000, Clock(100.0))
    rewriter.rewrite(10, 0)
    rewriter.rewrite(12, 0)  # 11 is late
    assert rewriter.pad() == (13, 0)
    assert rewriter.rewrite(11, 0) == (11, 0)
    assert rewriter.rewrite(13, 3000) == (14, 3000)
    assert rewriter.input_sequence(11) == 11 and rewriter.input_sequence(14) == 13


def test_padding_the_rewriter_forgot_makes_older_nacks_unanswerable() -> None:
    rewriter = SequenceRewriter(90000, Clock(100.0))
    rewriter.rewrite(0, 0)
    for _ in range(sequence.MAX_PADDING + 1):
        rewriter.pad()
    out, _ = rewriter.rewrite(1, 3000)
    assert rewriter.input_sequence(out) == 1
    assert rewriter.input_sequence(0) is None
