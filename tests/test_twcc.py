"""Transport-wide congestion control: feedback parsing, the offer, and the estimate from it.

The estimate's tests run on both paths: feedback read in Python, and in C (``_twcc.c``) when the
native piece is built; a twin test feeds both the same traffic and wants the same numbers.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from support import Clock, build_feedback, require_native_fanout
from townhall.sfu import bandwidth, congestion, rtcp, twcc
from townhall.sfu import router as router_module
from townhall.sfu.router import Router
from townhall.sfu.transport import Transport


@pytest.fixture(params=["python", "c"])
def native(request: pytest.FixtureRequest) -> bool:
    """Whether a sender reads feedback in C."""
    if request.param == "c":
        require_native_fanout()
    return bool(request.param == "c")

# A feedback packet as Chromium sends it: base 100, 6 packets, reference time 2 (128 ms),
# feedback count 7; one two-bit status vector chunk (small, small, lost, large, small, small
# as 01 01 00 10 01 01 00) then the deltas: 4 (1 ms), 8 (2 ms), -4 (-1 ms, two bytes), 0, 40.
FEEDBACK = bytes.fromhex(
    "8f cd 00 06"  # RTPFB fmt 15, length 6 words
    "00 00 00 01"  # sender SSRC
    "00 00 00 02"  # media SSRC
    "00 64 00 06"  # base sequence 100, status count 6
    "00 00 02 07"  # reference time 2, feedback count 7
    "d4 94"        # 1 1 01 01 00 10 01 01 00
    "04 08 ff fc 00 28"  # deltas
)


def test_a_two_bit_status_vector_with_small_large_and_lost_packets_is_read() -> None:
    feedback = twcc.parse_feedback(FEEDBACK)
    assert (feedback.base_sequence, feedback.count) == (100, 6)
    assert feedback.packets == [
        (100, 128_000 + 1000), (101, 128_000 + 3000), (102, None), (103, 128_000 + 2000),
        (104, 128_000 + 2000), (105, 128_000 + 12000)]


def test_run_length_and_one_bit_chunks_are_read() -> None:
    data = bytes.fromhex(
        "8f cd 00 07" "00000001" "00000002"
        "ff fe 00 13"  # base 65534 (wraps), 19 packets
        "00 00 01 00"  # reference time 1 (64 ms)
        "20 03"        # run length: 3 packets received with small deltas
        "00 02"        # run length: 2 lost
        "a0 00"        # 1-bit vector: received, then 13 lost (14 symbols, only 14 needed)
        "01 02 03 04"  # deltas of the 4 received packets
        "00 00"        # padding to a word
    )
    packets = twcc.parse_feedback(data).packets
    assert [s for s, _ in packets][:6] == [65534, 65535, 0, 1, 2, 3]
    assert packets[:6] == [(65534, 64_250), (65535, 64_750), (0, 65_500), (1, None), (2, None),
                           (3, 66_500)]
    assert all(arrival is None for _, arrival in packets[6:])
    assert len(packets) == 19


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (FEEDBACK[:19], "RTCP transport feedback is truncated"),
        (FEEDBACK[:21], "RTCP transport feedback is truncated in its status chunks"),
        (FEEDBACK[:25], "RTCP transport feedback is truncated in its deltas"),
        (FEEDBACK[:20] + b"\xf0\x00" + b"\x00" * 4,  # 2-bit vector starting with 3
         "RTCP transport feedback has a reserved status symbol"),
    ],
)
def test_malformed_feedback_raises_value_error_with_exact_messages(
    data: bytes, message: str, native: bool
) -> None:
    with pytest.raises(ValueError) as info:
        twcc.parse_feedback(data)
    assert str(info.value) == message
    sender, untouched = twcc.TwccSender(5, native=native), twcc.TwccSender(5, native=native)
    for each in (sender, untouched):
        for index in range(120):
            each.block(1000, 1.0 + index * 0.01)
    with pytest.raises(ValueError) as info:
        sender.feedback(data)
    assert str(info.value) == message
    # ... and the bad packet changed nothing: what follows reads as if it never came
    arrivals = [2_000_000 + index * 10_000 for index in range(100)]
    assert sender.feedback(build_feedback(0, arrivals)) == \
        untouched.feedback(build_feedback(0, arrivals)) is not None


def test_feedback_inside_a_compound_rtcp_packet_is_found() -> None:
    receiver_report = bytes.fromhex("80 c9 00 01 00 00 00 01")
    found = rtcp.parse(receiver_report + FEEDBACK)
    assert [f.kind for f in found] == ["twcc"]
    assert found[0].raw == FEEDBACK


def test_the_offer_adds_the_extension_and_feedback_to_video_sections_only() -> None:
    offer = "\r\n".join([
        "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=rtpmap:96 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 99", "a=mid:1", "a=rtcp-fb:97 goog-remb",
        "m=video 0 UDP/TLS/RTP/SAVPF 97", "a=mid:2", ""])
    completed = twcc.complete_offer(offer)
    audio, video, closed = completed.split("m=")[1:]
    assert twcc.URI not in audio and twcc.URI not in closed
    assert f"a=extmap:5 {twcc.URI}\r\na=rtcp-fb:97 transport-cc\r\na=rtcp-fb:99 transport-cc" \
        in video
    assert twcc.complete_offer(completed) == completed


def test_the_answer_takes_the_extension_where_the_offer_has_it_under_the_offers_id() -> None:
    offer = "\r\n".join([
        "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", f"a=extmap:3 {twcc.URI}",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", f"a=extmap:3/recvonly {twcc.URI}",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=extmap:4 urn:other", ""])
    answer = "\r\n".join([
        "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=mid:1", "a=rtcp-fb:96 goog-remb",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:2", ""])
    completed = twcc.complete_answer(answer, offer)
    audio, video, unoffered = completed.split("m=")[1:]
    assert twcc.URI not in audio and twcc.URI not in unoffered
    assert f"a=extmap:3 {twcc.URI}\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:97 transport-cc" \
        in video
    assert twcc.complete_answer(completed, offer) == completed


def test_an_answer_to_an_offer_without_the_extension_or_with_its_id_taken_is_left_as_it_is(
) -> None:
    answer = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v",
                           "a=extmap:3 urn:other", ""])
    without = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v", ""])
    taken = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v",
                          f"a=extmap:3 {twcc.URI}", ""])
    closed = answer.replace("m=video 9", "m=video 0")
    assert twcc.complete_answer(answer, without) == answer
    assert twcc.complete_answer(answer, taken) == answer
    assert twcc.complete_answer(closed, taken.replace("urn:other", "")) == closed


def test_built_feedback_reads_back() -> None:
    arrivals = [1_000_000, 1_000_500, None, 1_200_000, 1_100_000]
    feedback = twcc.parse_feedback(build_feedback(7, arrivals))
    assert [a for _, a in feedback.packets] == arrivals


def simulate(sender: twcc.TwccSender, send_rate: int, capacity: int, seconds: float,
             start: float = 100.0, size: int = 1000) -> list[int]:
    """Send ``size``-byte packets at ``send_rate`` through a bottleneck of ``capacity`` bit/s
    (its queue delays them), with feedback every 100 ms; returns the estimates."""
    return [e for e in simulate_feedback(sender, send_rate, capacity, seconds, start, size)
            if e is not None]


def simulate_feedback(sender: twcc.TwccSender, send_rate: int, capacity: int, seconds: float,
                      start: float = 100.0, size: int = 1000) -> list[int | None]:
    """:func:`simulate`, returning what each feedback packet gave (None: no estimate)."""
    interval = size * 8 / send_rate
    service = size * 8 / capacity
    now, queue_free = start, 0.0
    pending: list[tuple[int, int]] = []
    estimates: list[int | None] = []
    next_feedback = start + 0.1
    while now < start + seconds:
        block = sender.block(size, now)
        sequence = struct.unpack_from("!H", block, 5)[0]
        arrival = max(now, queue_free) + service + 0.02
        queue_free = arrival - 0.02
        pending.append((sequence, int(arrival * 1_000_000)))
        now += interval
        if now >= next_feedback:
            next_feedback += 0.1
            done = [p for p in pending if p[1] <= now * 1_000_000]
            pending = [p for p in pending if p[1] > now * 1_000_000]
            if done:
                estimates.append(sender.feedback(build_feedback(done[0][0],
                                                                [a for _, a in done])))
    return estimates


def test_what_gets_through_without_queueing_is_taken_as_available_at_once(native: bool) -> None:
    sender = twcc.TwccSender(5, native=native)
    estimates = simulate(sender, send_rate=800_000, capacity=5_000_000, seconds=1.5)
    assert estimates and estimates[-1] >= 0.9 * 800_000
    delivered = sender.delivered()
    assert delivered is not None and 0.95 * 800_000 < delivered < 1.1 * 800_000, delivered


def test_a_small_layer_of_fifteen_packets_a_second_is_measured_over_its_last_ten_packets(
    native: bool
) -> None:
    """Fewer packets than the delivered rate needs arrive in half a second: the window reaches
    back to ten of them, and what gets through is taken as available."""
    sender = twcc.TwccSender(5, native=native)
    estimates = simulate(sender, send_rate=120_000, capacity=5_000_000, seconds=3)
    assert estimates, "no estimate from a stream of 15 packets a second"
    assert 0.9 * 120_000 <= estimates[-1] <= 1.5 * 120_000, estimates


def test_a_stream_too_sparse_to_measure_gives_no_estimate_rather_than_the_last_one(
    native: bool
) -> None:
    """Once fewer than ten packets arrive in two seconds, feedback gives no estimate: the one
    from when video flowed would be taken for a fresh report."""
    sender = twcc.TwccSender(5, native=native)
    estimates = simulate(sender, send_rate=800_000, capacity=5_000_000, seconds=1.5)
    assert estimates and estimates[-1] >= 0.9 * 800_000
    sparse = simulate_feedback(sender, send_rate=16_000, capacity=5_000_000, seconds=4,
                               start=101.5)  # two packets a second
    assert sparse and all(e is None for e in sparse[-4:]), sparse
    assert sender.delivered() is None


def test_a_queue_growing_at_the_bottleneck_brings_the_estimate_below_its_capacity(
    native: bool
) -> None:
    sender = twcc.TwccSender(5, native=native)
    estimates = simulate(sender, send_rate=2_000_000, capacity=600_000, seconds=6)
    assert estimates
    assert estimates[-1] < 600_000 * 1.1, estimates[-10:]


def _twins(seed: int) -> list[tuple[int | None, int | None]]:
    """The estimates a sender in C and one in Python give for the same traffic: loss,
    reordering, a sequence number wrap, late and repeated feedback, feedback about packets long
    gone, a queue that grows and drains."""
    c, python = twcc.TwccSender(5, native=True), twcc.TwccSender(5, native=False)
    assert c._native is not None and python._native is None
    c._sequence = python._sequence = 65_000
    chance = random.Random(seed)
    now, queue_free, capacity = 10.0, 0.0, 3_000_000
    sent: list[tuple[int, float]] = []
    results: list[tuple[int | None, int | None]] = []
    for step in range(460):
        if step % 100 == 50:
            capacity = 800_000 if capacity > 1_000_000 else 4_000_000
        # from step 400: a small layer at a low frame rate, then hardly anything (the delivered
        # window reaching back, then no delivered rate)
        frame = chance.randint(1, 12) if step < 400 else 1
        if step >= 400:
            now += 0.02 if step < 430 else 0.3
        for _ in range(frame):  # a frame's packets, sent together
            size = chance.randint(200, 1200)
            assert c.block(size, now) == python.block(size, now)
            queue_free = max(now, queue_free) + size * 8 / capacity
            sequence = (c._sequence - 1) & 0xFFFF
            sent.append((sequence, queue_free + 0.02 + chance.random() * 0.003))
            now += chance.random() * 0.004
        now += 0.033
        if step % 3:
            continue
        report, sent = sent, []
        if chance.random() < 0.1:
            report.reverse()  # arrivals out of order: negative deltas
        arrivals: list[int | None] = [
            None if chance.random() < 0.05 else int(arrival * 1_000_000)
            for _, arrival in report]
        feedback = build_feedback(report[0][0], arrivals, step)
        if chance.random() < 0.05:
            feedback = build_feedback((report[0][0] - 5000) & 0xFFFF, arrivals)  # long gone
        results.append((c.feedback(feedback), python.feedback(feedback)))
        assert c.delivered() == python.delivered(), step
        if chance.random() < 0.05:
            results.append((c.feedback(feedback), python.feedback(feedback)))  # repeated
    return results


def test_the_estimate_in_c_is_the_estimate_python_gives() -> None:
    """Step for step the same estimate, drops and recoveries included."""
    require_native_fanout()
    for seed in (7, 8, 10):
        results = _twins(seed)
        assert [a for a, _ in results] == [b for _, b in results], seed
        estimates = [a for a, _ in results if a is not None]
        assert len(estimates) > 100
        assert min(estimates) < 1_000_000 < max(estimates)  # the drops and recoveries happened


def test_the_estimate_in_c_follows_every_constant_of_congestion_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C estimate takes its constants from congestion.py: changed there, both paths still
    agree, and the estimates differ from those with the constants as they are."""
    require_native_fanout()
    before = _twins(7)
    for name, value in (("BURST_MS", 2.0), ("DELIVERED_WINDOW_MS", 400.0),
                        ("DELIVERED_MIN_PACKETS", 5), ("WINDOW", 12), ("SMOOTHING", 0.8),
                        ("GAIN", 3.0), ("THRESHOLD", 10.0), ("MIN_THRESHOLD", 5.0),
                        ("MAX_THRESHOLD", 500.0), ("K_UP", 0.01), ("K_DOWN", 0.03),
                        ("OUTLIER", 12.0), ("THRESHOLD_STEP_MS", 80.0), ("MAX_DELTAS", 50),
                        ("OVERUSE_TIME_MS", 8.0), ("DELIVERED_SHARE", 0.9), ("DECREASE", 0.8),
                        ("INCREASE_PER_SECOND", 1.1), ("MAX_GROWTH", 1.4),
                        ("GROWTH_HEADROOM", 20_000), ("RTT_MS", 150.0),
                        ("DROP_QUIET_MS", 1500.0), ("DELIVERED_MAX_WINDOW_MS", 1500.0)):
        monkeypatch.setattr(congestion, name, value)
    monkeypatch.setattr(twcc, "_PARAMETERS", twcc.parameters())
    after = _twins(7)
    assert [a for a, _ in after] == [b for _, b in after]
    assert [a for a, _ in after] != [a for a, _ in before]


def _through_both(arrival_of: Callable[[int], int], batches: list[range],
                  ) -> tuple[list[int | None], list[int | None], int]:
    """Estimates from 500-byte packets sent 0.1 ms apart, ``arrival_of(index)`` µs after the
    receiver's origin, each of ``batches`` reported in one feedback packet, by a sender in C and
    one in Python; and how many packets the Python window held at the end."""
    c, python = twcc.TwccSender(5, native=True), twcc.TwccSender(5, native=False)
    in_c: list[int | None] = []
    in_python: list[int | None] = []
    for indices in batches:
        for index in indices:
            c.block(500, 1.0 + index * 0.0001)
            python.block(500, 1.0 + index * 0.0001)
        feedback = build_feedback(indices[0], [arrival_of(index) for index in indices])
        in_c.append(c.feedback(feedback))
        in_python.append(python.feedback(feedback))
    assert python._estimate is not None
    return in_c, in_python, len(python._estimate._delivered)


def test_both_paths_agree_past_a_full_window_and_after_an_arrival_that_jumps_back() -> None:
    """The window holds DELIVERED_SLOTS packets in Python as in C: past that the oldest leave,
    and the rate is over what is left however short; one arrival far ahead of the rest (a
    receiver's clock gone wrong) therefore does not keep every later packet in the window."""
    require_native_fanout()
    in_c, in_python, _ = _through_both(lambda index: 2_000_000 + index * 100,
                                       [range(first, min(first + 400, 2_100))
                                        for first in range(0, 2_100, 400)])
    assert in_c == in_python and in_c[-1] is not None
    in_c, in_python, held = _through_both(
        lambda index: 100_000_000 if index == 0 else 10_000_000 + index * 100,
        [range(0, 1)] + [range(first, first + 300) for first in range(1, 3_001, 300)])
    assert in_c == in_python and in_c[-1] is not None
    assert held <= congestion.DELIVERED_SLOTS


def test_feedback_in_c_keeps_a_rate_when_more_packets_arrive_than_its_window_holds() -> None:
    """The C window holds 2048 packets: past that the oldest leave early, and the rate over
    what is left is still the rate."""
    require_native_fanout()
    sender = twcc.TwccSender(5, native=True)
    result = None
    for batch in range(8):  # 8 x 600 packets of 500 bytes, one every 0.1 ms: 40 Mbit/s
        first = batch * 600
        for index in range(600):
            sender.block(500, 1.0 + (first + index) * 0.0001)
        arrivals = [2_000_000 + (first + index) * 100 for index in range(600)]
        result = sender.feedback(build_feedback(first, arrivals))
    assert result is not None and 0.9 * 40_000_000 <= result <= 1.6 * 40_000_000


async def test_the_router_takes_transport_feedback_alone_or_in_a_compound_packet() -> None:
    """Browsers send transport feedback alone (reduced-size RTCP), which skips the compound
    parse; inside a compound packet it is found too, and a malformed one is dropped alone."""
    router = Router("feedback")
    transport = router.create_transport("reader")
    video = router._transports[transport].video
    video.twcc = twcc.TwccSender(5)
    try:
        arrivals: list[int | None] = []
        for index in range(120):  # twelve frames of ten packets, 33 ms apart
            video.twcc.block(1000, 1.0 + (index // 10) * 0.033 + (index % 10) * 0.0005)
            arrivals.append(int((1.02 + (index // 10) * 0.033 + (index % 10) * 0.0005) * 1e6))
        receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 1)  # RR without report blocks
        router.rtcp_received(transport, build_feedback(0, arrivals[:90], 0))
        assert video.estimate.reports == 1
        router.rtcp_received(transport, receiver_report + build_feedback(90, arrivals[90:], 1))
        assert video.estimate.reports == 2
        dropped = router.counters.packets_dropped
        truncated = build_feedback(0, arrivals[:20], 2)
        truncated = truncated[:2] + struct.pack("!H", 4) + truncated[4:20]  # ends in its chunks
        router.rtcp_received(transport, truncated)
        assert router.counters.packets_dropped == dropped + 1
        assert video.estimate.reports == 2
    finally:
        await router.close()


async def test_an_estimate_the_socket_reader_hands_the_router_is_taken_as_feedback_is() -> None:
    """The native reader runs the estimate on transport feedback itself and gives the router
    the result: it counts as a report, and a drop reallocates at once."""
    router = Router("estimated")
    transport = router.create_transport("reader")
    reallocated: list[object] = []
    router._allocate_on = reallocated.append  # type: ignore[method-assign]
    try:
        plain = router.native_receive(transport)
        if plain is None:
            pytest.skip("the native piece is not built")
        video, estimated = plain[5], plain[6]
        assert video is router._transports[transport].video
        estimated(2_000_000.0)
        assert video.estimate.reports == 1 and video.estimate.bitrate == 2_000_000
        assert reallocated == []
        estimated(500_000.0)
        assert video.estimate.bitrate == 500_000 and reallocated == [transport]
    finally:
        await router.close()


def _publisher_packet(sequence: int, extension_id: int = 3) -> bytes:
    """An RTP packet carrying transport-wide sequence number ``sequence``."""
    return struct.pack("!BBHII", 0x90, 96, 7, 0, 1234) + \
        struct.pack("!HHBHB", 0xBEDE, 1, (extension_id << 4) | 1, sequence, 0) + b"payload"


@pytest.fixture(params=["python", "c"])
def reports_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which path writes the feedback to a publisher: Python, or C (``twcc_take``)."""
    if request.param == "c":
        require_native_fanout()
    else:
        monkeypatch.setattr(twcc, "native_take", None)
    return str(request.param)


def _receiver(extension_id: int = 3) -> twcc.TwccReceiver:
    receiver = twcc.TwccReceiver()
    receiver.extension_id = extension_id
    return receiver


def test_feedback_to_a_publisher_reports_each_arrival_and_each_loss(reports_in: str) -> None:
    receiver = _receiver()
    arrived = {s: 100.0 + s * 0.004 for s in range(10, 21) if s != 15}
    for sequence, at in arrived.items():
        receiver.record(_publisher_packet(sequence), at)
    receiver.record(_publisher_packet(21, extension_id=4), 101.0)  # another extension: not it
    [packet] = receiver.feedback(101.0, 1, 2)
    assert struct.unpack_from("!II", packet, 4) == (1, 2)
    feedback = twcc.parse_feedback(packet)
    assert (feedback.base_sequence, feedback.count) == (10, 11)
    for sequence, arrival in feedback.packets:
        if sequence == 15:
            assert arrival is None
        else:
            assert arrival is not None
            assert abs(arrival - arrived[sequence] * 1_000_000) < 250


def test_feedback_goes_on_from_the_last_and_is_empty_when_nothing_arrived(reports_in: str) -> None:
    receiver = _receiver()
    for sequence in (65533, 65534, 65535):
        receiver.record(_publisher_packet(sequence), 5.0 + sequence / 1e6)
    first = receiver.feedback(5.1, 1, 2)
    assert receiver.feedback(5.2, 1, 2) == []
    for sequence in (0, 2):
        receiver.record(_publisher_packet(sequence), 5.3)
    [second] = receiver.feedback(5.4, 1, 2)
    assert [twcc.parse_feedback(p).base_sequence for p in first] == [65533]
    feedback = twcc.parse_feedback(second)
    assert feedback.base_sequence == 0 and [s for s, a in feedback.packets if a is None] == [1]
    # the feedback packet count (byte 19) goes up by one per packet
    assert (first[0][19], second[19]) == (0, 1)


def test_feedback_reaches_the_highest_number_that_arrived_even_when_it_came_before_others(
        reports_in: str) -> None:
    receiver = _receiver()
    receiver.record(_publisher_packet(98), 1.0)
    receiver.feedback(1.0, 1, 2)
    for sequence in (100, 101, 102, 99):  # 99 overtaken on the way
        receiver.record(_publisher_packet(sequence), 1.01)
    receiver.record(_publisher_packet(97), 1.02)  # reported lost already: too late
    [packet] = receiver.feedback(1.05, 1, 2)
    feedback = twcc.parse_feedback(packet)
    assert feedback.base_sequence == 99
    assert [s for s, a in feedback.packets if a is not None] == [99, 100, 101, 102]
    receiver.record(_publisher_packet(96), 1.06)
    assert receiver.feedback(1.1, 1, 2) == []


def test_an_arrival_too_far_from_the_last_for_one_delta_starts_another_feedback_packet(
        reports_in: str) -> None:
    receiver = _receiver()
    receiver.record(_publisher_packet(1), 10.0)
    receiver.record(_publisher_packet(2), 10.001)
    receiver.record(_publisher_packet(3), 19.5)  # 9.5 s later: beyond 16 bits of 250 µs
    packets = receiver.feedback(19.6, 1, 2)
    parsed = [twcc.parse_feedback(p) for p in packets]
    assert [(f.base_sequence, f.count) for f in parsed] == [(1, 2), (3, 1)]
    assert parsed[1].packets[0][1] is not None and \
        abs(parsed[1].packets[0][1] - 19_500_000) < 250


@pytest.mark.parametrize("start", [50.0, -3.0])  # a test's clock may start before 0
def test_feedback_to_a_publisher_in_c_is_byte_for_byte_what_python_writes(
        monkeypatch: pytest.MonkeyPatch, start: float) -> None:
    require_native_fanout()
    native_take = twcc.native_take
    rng = random.Random(7)
    in_c, in_python = _receiver(), _receiver()
    sequence, at, made = 65000, start, 0
    for tick in range(400):
        for _ in range(rng.randrange(0, 40) if tick % 50 else 900):  # now and then a backlog
            sequence = (sequence + rng.choice((1, 1, 1, 2, 5, -3))) & 0xFFFF  # loss, reorder
            at += rng.choice((0.0, 0.0002, 0.004, 0.02, -0.001))  # bursts, late stamps
            if rng.random() < 0.01:
                at += rng.choice((9.0, 20.0))  # a gap no delta spans
            for receiver in (in_c, in_python):
                receiver.record(_publisher_packet(sequence), at)
        now = at + 0.1
        expected_count = in_c.count
        monkeypatch.setattr(twcc, "native_take", None)
        python_packets = in_python.feedback(now, 11, 22)
        monkeypatch.setattr(twcc, "native_take", native_take)
        c_packets = in_c.feedback(now, 11, 22)
        assert c_packets == python_packets, f"tick {tick}"
        assert in_c.count == in_python.count == expected_count + len(c_packets)
        assert in_c.arrivals == in_python.arrivals, f"tick {tick}: the headers differ"
        made += len(c_packets)
    assert made > 300  # most ticks reported something, some in more than one packet


def test_a_backlog_of_arrivals_is_reported_in_feedback_packets_that_fit_a_datagram(
        reports_in: str) -> None:
    receiver = _receiver()
    for sequence in range(1000):  # what a long hold of the loop leaves to report
        receiver.record(_publisher_packet(sequence), 1.0 + sequence * 0.005)
    packets = receiver.feedback(6.5, 1, 2)
    parsed = [twcc.parse_feedback(p) for p in packets]
    assert [(f.base_sequence, f.count) for f in parsed] == [(0, 400), (400, 400), (800, 200)]
    assert max(len(p) for p in packets) < 1200
    assert all(a is not None for f in parsed for _, a in f.packets)


def test_a_publisher_without_the_extension_negotiated_gets_no_feedback() -> None:
    receiver = twcc.TwccReceiver()
    receiver.record(_publisher_packet(1), 1.0)
    assert receiver.feedback(1.1, 1, 2) == []


def test_the_answer_to_a_publisher_gives_the_id_the_router_reads_packets_with() -> None:
    offer = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0",
                         f"a=extmap:9 {twcc.URI}", ""])
    answer = "\r\n".join(["v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", ""])
    assert twcc.answered_id(answer) == 0
    assert twcc.answered_id(twcc.complete_answer(answer, offer)) == 9
    assert twcc.sequence_in(_publisher_packet(77, 9), 9) == 77
    assert twcc.sequence_in(_publisher_packet(77, 9), 3) is None
    assert twcc.sequence_in(_publisher_packet(77, 9)[:18], 9) is None  # cut short
    one_byte = bytearray(_publisher_packet(77, 9))
    one_byte[16] = (9 << 4) | 0  # the element says it holds one byte: not a sequence number
    assert twcc.sequence_in(bytes(one_byte), 9) is None
    receiver = _receiver(9)
    receiver.record(bytes(one_byte), 1.0)
    assert receiver.feedback(1.1, 1, 2) == []


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
async def test_the_router_notes_a_publishers_numbered_packets_and_tells_it_on_the_tick(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if native:
        require_native_fanout()
    else:
        monkeypatch.setattr(router_module, "receive", None)
    router = Router("publisher feedback")
    transport = router.create_transport("publisher")
    sent: list[bytes] = []
    monkeypatch.setattr(transport, "send_rtcp", sent.append)
    state = router._transports[transport]
    state.arrivals.extension_id = 3
    layer = SimpleNamespace(ssrc=1234)
    state.producers_by_mid["0"] = SimpleNamespace(  # type: ignore[assignment]
        layers=[layer], track=SimpleNamespace(rtcp_ssrc=99, mid_extension=None))
    try:
        for sequence in (40, 41, 43):
            router.rtp_received(transport, _publisher_packet(sequence))
        router._send_transport_feedback()
        router._send_transport_feedback()  # nothing new: nothing sent
        [packet] = sent
        assert struct.unpack_from("!II", packet, 4) == (99, 1234)
        feedback = twcc.parse_feedback(packet)
        assert feedback.base_sequence == 40
        assert [a is not None for _, a in feedback.packets] == [True, True, False, True]
    finally:
        state.producers_by_mid.clear()
        await router.close()


async def test_reported_heavy_video_loss_bounds_the_estimate_until_no_loss_lifts_it() -> None:
    """On a link that drops rather than queues, delays stop growing and transport feedback
    alone would let the estimate grow on; the receiver's reports of loss bound it."""
    clock = Clock(100.0)
    router = Router("loss", clock=clock)
    transport = router.create_transport("viewer")
    state = router._transports[transport]
    video = state.video
    allocated: list[Transport] = []
    router._allocate_on = allocated.append  # type: ignore[method-assign]
    streams = {ssrc: SimpleNamespace(producer=SimpleNamespace(kind=kind), packets=0,
                                     packets_at_receiver_report=0)
               for ssrc, kind in ((11, "video"), (12, "video"), (13, "audio"))}
    state.consumers_by_ssrc.update(streams)  # type: ignore[arg-type]

    def report(*blocks: tuple[int, int]) -> bytes:
        body = b"".join(struct.pack("!IB3xIIII", ssrc, lost, 0, 0, 0, 0) for ssrc, lost in blocks)
        return struct.pack("!BBHI", 0x80 | len(blocks), 201, 1 + 6 * len(blocks), 1) + body

    try:
        video.estimate.update(1_000_000)
        streams[11].packets, streams[12].packets, streams[13].packets = 90, 10, 50
        # 90 packets with 0 lost and 10 with all lost: a tenth of the video, not over it
        router.rtcp_received(transport, report((11, 0), (12, 255), (13, 255)))
        assert video.estimate.loss_bound is None and allocated == []
        streams[11].packets, streams[12].packets = 180, 20
        router.rtcp_received(transport, report((11, 77), (12, 77)))  # 30 %
        bounded = int(1_000_000 * (1 - 77 / 256 / 2))
        assert video.estimate.value() == bounded
        assert allocated == [transport]
        # Reports that each cover a few packets (one comes with every NACK) add up.
        clock.now += bandwidth.LOSS_INTERVAL  # a bound drops at most once in it
        streams[11].packets += 8
        router.rtcp_received(transport, report((11, 128),))
        assert video.estimate.value() == bounded
        streams[11].packets += 12
        router.rtcp_received(transport, report((11, 128),))
        assert video.estimate.loss_bound == int(bounded * (1 - 0.5 / 2))
        # Numbered packets got through at 800 kbit/s, and a report says none were lost: the
        # bound is lifted to that rate at once.
        video.twcc = twcc.TwccSender(5)
        simulate(video.twcc, send_rate=800_000, capacity=5_000_000, seconds=1.5)
        delivered = video.twcc.delivered()
        assert delivered is not None and delivered > video.estimate.loss_bound * 1.1
        streams[11].packets += 100
        router.rtcp_received(transport, report((11, 0),))
        assert video.estimate.loss_bound == int(delivered)
    finally:
        state.consumers_by_ssrc.clear()
        await router.close()
