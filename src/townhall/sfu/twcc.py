"""Transport-wide congestion control (draft-holmer-rmcat-transport-wide-cc-extensions-01).

When a receiving page accepts the ``transport-wide-cc`` header extension, every video packet the
SFU sends on that transport (media, retransmissions, probe padding) carries a transport-wide
sequence number, and the receiver reports back, every 50–100 ms, when each one arrived (RTCP
transport feedback). A :class:`TwccSender` per transport numbers the packets, remembers when
each left and how large it was, and feeds the reported arrivals to a send-side estimate
(``congestion.py``: delay-based overuse detection, and the delivered rate, so that a probe that
got through raises the estimate at once, where a receiver's REMB grows 8 % a second).

Feedback about packets sent more than ``HISTORY`` packets ago is ignored. Times come in as
arguments (the router's clock), so tests never sleep.

The history is one ``bytearray`` of ``(sent at, size, sequence number)`` records, so that the
native piece (``native.py``) writes it as it sends copies and reads it when feedback comes: with
the piece built, a feedback packet is read, matched and grouped and the estimate run in C
(``_twcc.c``, the same steps as ``congestion.py``, whose constants it is handed), and Python
gets the estimate. Without it, :func:`parse_feedback` and
:class:`~townhall.sfu.congestion.DelayBasedEstimate` do all of it.

The other way round, a publisher that numbers its video gets the feedback from the SFU: a
:class:`TwccReceiver` per publish transport notes when each numbered packet arrived, and the
router sends :meth:`TwccReceiver.feedback` every tick, from which the publisher's browser
estimates its uplink.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from townhall.sfu import congestion, native, rtp, sdp_text
from townhall.sfu.congestion import DELIVERED_SHARE, DelayBasedEstimate
from townhall.sfu.fields import TwccFields

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
#: The id the server offers the extension with (aiortc uses 1–3 for its own).
EXTENSION_ID = 5
#: Packets remembered for matching feedback (a power of two).
HISTORY = 4096

__all__ = ["DELIVERED_SHARE", "URI", "Feedback", "TwccReceiver", "TwccSender", "alone",
           "build_feedback", "complete_answer", "complete_offer", "is_feedback", "parse_feedback"]

_BLOCK = struct.Struct("!HHBHB")
_HEADER = struct.Struct("!HHI")
#: One record of ``TwccSender.history`` (``TwccSent`` in ``_twcc.h``): sent at (s), size,
#: sequence number (-1: never used).
_SENT = struct.Struct("=dii")
#: The delivered rate the last feedback gave, the last field of the estimate's state in C
#: (``EstimateState.delivered_rate`` in ``_twcc.c``): bit/s, 0 or less for none.
_DELIVERED = struct.Struct("=d")

#: The feedback in C and the size of its state, when the native piece is built.
native_feedback = native.twcc_feedback()
#: The feedback to publishers in C (``TwccReceiver.feedback``), when the native piece is built.
native_take = native.twcc_take()


def parameters() -> bytes:
    """``congestion.py``'s constants for the estimate in C, packed as its ``Parameters``."""
    return struct.pack(
        "=23d", congestion.BURST_MS, congestion.DELIVERED_WINDOW_MS,
        congestion.DELIVERED_MIN_PACKETS, congestion.WINDOW, congestion.SMOOTHING,
        congestion.GAIN, congestion.THRESHOLD, congestion.MIN_THRESHOLD,
        congestion.MAX_THRESHOLD, congestion.K_UP, congestion.K_DOWN, congestion.OUTLIER,
        congestion.THRESHOLD_STEP_MS, congestion.MAX_DELTAS, congestion.OVERUSE_TIME_MS,
        congestion.DELIVERED_SHARE, congestion.DECREASE, congestion.INCREASE_PER_SECOND,
        congestion.MAX_GROWTH, congestion.GROWTH_HEADROOM, congestion.RTT_MS,
        congestion.DROP_QUIET_MS, congestion.DELIVERED_MAX_WINDOW_MS,
    )


_PARAMETERS = parameters()


@dataclass(frozen=True, slots=True)
class Feedback:
    """One transport feedback packet: arrival times in microseconds (None: lost)."""

    base_sequence: int
    count: int
    #: (sequence number, arrival time in µs on the receiver's clock) for every reported packet.
    packets: list[tuple[int, int | None]]


def complete_offer(sdp: str, extension_id: int = EXTENSION_ID) -> str:
    """``sdp`` (an offer of the server's) offering transport-wide congestion control in each
    video section: the header extension and ``a=rtcp-fb:<pt> transport-cc`` for its codecs."""
    return _complete(sdp, lambda mid: extension_id)


def complete_answer(answer: str, offer: str) -> str:
    """``answer`` (the server's, to ``offer``: a publisher's or a WHEP viewer's) accepting
    transport-wide congestion control in each video section whose offer has it, under the
    offer's id (an answer keeps the offerer's ids, RFC 8285). aiortc's answers leave out
    extensions it does not know; the SFU numbers, notes and reports the packets itself."""
    offered: dict[str, int] = {}
    for section in sdp_text.sections(offer)[1:]:
        ident = _extension_in(section)
        if ident is not None:
            offered[sdp_text.mid_of(section)] = ident
    return _complete(answer, offered.get)


def _extension_in(section: list[str]) -> int | None:
    """The one-byte id ``section`` gives the extension, if it has it."""
    for line in section:
        if line.startswith("a=extmap:"):
            value, _, rest = line[9:].partition(" ")
            if rest.split()[:1] == [URI]:
                ident = value.partition("/")[0]
                return int(ident) if ident.isdigit() and 0 < int(ident) < 15 else None
    return None


def _complete(sdp: str, id_for_mid: Callable[[str], int | None]) -> str:
    """``sdp`` with the extension and its feedback added to each open video section that
    lacks it and for whose mid ``id_for_mid`` gives an id not used there already."""
    sections = sdp_text.sections(sdp)
    out = sections[0]
    for section in sections[1:]:
        out.extend(section)
        parts = section[0].split()
        if parts[0] != "m=video" or parts[1:2] == ["0"] or any(
                line.startswith("a=extmap:") and URI in line for line in section):
            continue
        ident = id_for_mid(sdp_text.mid_of(section))
        if ident is None or any(line.startswith((f"a=extmap:{ident} ", f"a=extmap:{ident}/"))
                                for line in section):
            continue
        out.append(f"a=extmap:{ident} {URI}")
        out.extend(f"a=rtcp-fb:{pt} transport-cc" for pt in parts[3:])
    return "\r\n".join(out) + "\r\n"


def parse_feedback(data: bytes) -> Feedback:
    """Read one RTCP transport feedback packet (RTPFB, FMT 15); raises ``ValueError``."""
    if len(data) < 20:
        raise ValueError("RTCP transport feedback is truncated")
    base, count = struct.unpack_from("!HH", data, 12)
    reference = int.from_bytes(data[16:19], "big", signed=True)
    symbols: list[int] = []
    pos = 20
    while len(symbols) < count:
        if pos + 2 > len(data):
            raise ValueError("RTCP transport feedback is truncated in its status chunks")
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length
            symbols.extend([(chunk >> 13) & 0x3] * (chunk & 0x1FFF))
        elif not chunk & 0x4000:  # fourteen 1-bit symbols
            symbols.extend((chunk >> (13 - i)) & 0x1 for i in range(14))
        else:  # seven 2-bit symbols
            symbols.extend((chunk >> (12 - 2 * i)) & 0x3 for i in range(7))
    del symbols[count:]
    arrival = reference * 64000
    packets: list[tuple[int, int | None]] = []
    for index, symbol in enumerate(symbols):
        sequence = (base + index) & 0xFFFF
        if symbol == 0:
            packets.append((sequence, None))
            continue
        if symbol == 1:
            if pos + 1 > len(data):
                raise ValueError("RTCP transport feedback is truncated in its deltas")
            arrival += data[pos] * 250
            pos += 1
        elif symbol == 2:
            if pos + 2 > len(data):
                raise ValueError("RTCP transport feedback is truncated in its deltas")
            arrival += struct.unpack_from("!h", data, pos)[0] * 250
            pos += 2
        else:
            raise ValueError("RTCP transport feedback has a reserved status symbol")
        packets.append((sequence, arrival))
    return Feedback(base, count, packets)


def alone(data: bytes) -> bool:
    """Whether a compound RTCP packet is one transport feedback packet and nothing else
    (reduced-size RTCP, as browsers send it)."""
    return len(data) >= 4 and is_feedback(data[0], data[1]) and \
        (((data[2] << 8) | data[3]) + 1) * 4 == len(data)


def is_feedback(first: int, packet_type: int) -> bool:
    """Whether an RTCP packet whose first two bytes are these is transport feedback."""
    return packet_type == 205 and first & 0x1F == 15


class TwccSender(TwccFields):
    """Transport-wide sequence numbers for one transport, and the estimate from its feedback."""

    __slots__ = ("_estimate", "_native", "history", "native_state")

    #: ``congestion.py``'s constants as the estimate in C takes them.
    parameters = _PARAMETERS

    def __init__(self, extension_id: int, *, native: bool = True) -> None:
        """``native``: read feedback and run the estimate in C when the native piece is
        built."""
        self.extension_id = extension_id
        self._sequence = 0
        self.history = bytearray(_SENT.pack(0.0, 0, -1) * HISTORY)
        found = native_feedback if native else None
        self._native = None if found is None else found[0]
        #: The estimate's state when it runs in C (the socket's native reader runs it too, on
        #: feedback it reads itself); None when it runs in Python.
        self.native_state = None if found is None else bytearray(found[1])
        self._estimate = DelayBasedEstimate() if found is None else None

    def block(self, size: int, now: float) -> bytes:
        """The extension block for the next packet sent (``size`` bytes, at ``now``)."""
        sequence = self._sequence
        self._sequence = (sequence + 1) & 0xFFFF
        _SENT.pack_into(self.history, (sequence & (HISTORY - 1)) * _SENT.size, now, size,
                        sequence)
        return _BLOCK.pack(0xBEDE, 1, (self.extension_id << 4) | 1, sequence, 0)

    def feedback(self, data: bytes) -> int | None:
        """Take one transport feedback packet as it came; returns the estimate in bit/s when
        there is one. Raises ``ValueError`` if the packet is malformed (nothing changes)."""
        if self._native is not None:
            assert self.native_state is not None
            result = self._native(data, self.history, self.native_state, _PARAMETERS)
        else:
            estimate = self._estimate
            assert estimate is not None
            newest = self._match(estimate, parse_feedback(data))
            result = None if newest is None else estimate.update(newest)
        return None if result is None else int(result)

    def delivered(self) -> float | None:
        """Bit/s of the numbered packets that arrived over the window of the last feedback
        (``congestion.DelayBasedEstimate.delivered``); None when it had none."""
        if self.native_state is not None:
            (rate,) = _DELIVERED.unpack_from(self.native_state, len(self.native_state)
                                             - _DELIVERED.size)
            return rate if rate > 0 else None
        assert self._estimate is not None
        return self._estimate.delivered_rate

    def _match(self, estimate: DelayBasedEstimate, feedback: Feedback) -> float | None:
        """Hand ``estimate`` every reported packet still in the history; the newest arrival
        (ms), or None if there was none."""
        history, unpack = self.history, _SENT.unpack_from
        newest = None
        for sequence, arrival in feedback.packets:
            if arrival is None:
                continue
            sent_at, size, sent = unpack(history, (sequence & (HISTORY - 1)) * _SENT.size)
            if sent != sequence:
                continue  # sent too long ago, or never
            newest = arrival / 1000
            estimate.packet(sent_at * 1000, newest, size)
        return newest


# -- the receiving side: feedback to a publisher ------------------------------------------------

#: Whether publish answers accept transport-wide sequence numbers (and publishers get
#: feedback, from which a browser estimates its uplink). An arrival is the kernel's receive time
#: of the datagram where the socket's native reader reads it (SO_TIMESTAMPNS, ``_read.c``), so
#: a hold of the event loop does not reach the publisher's browser as queueing on its uplink.
#: (It was off for a while after a browser test of replaced connections failed now and then;
#: the test's wait for video had returned at once, see ``architecture.md``, *Publishers'
#: uplinks*.)
PUBLISHER_FEEDBACK = True
#: Arrivals a publish transport remembers between two feedback packets (a power of two).
ARRIVALS = 1024
#: Least time between two feedback packets to a publisher, in seconds: the router sends them on
#: its tick, the socket's native reader on the first arrival this long after the last
#: (``FEEDBACK_INTERVAL_US`` in ``_twcc.h``).
FEEDBACK_INTERVAL = 0.1
#: ``TwccReceiver.arrivals``' header (``ArrivalsHeader`` in ``_twcc.h``), the feedback's whole
#: state, which the Python path and the socket's native reader share: the extension id (0: not
#: negotiated), the first sequence number recorded and the highest (modulo 2^16; -1: none yet),
#: whether the reader records the arrivals and sends the feedback (1) or Python does (0), how
#: many arrivals were recorded; the next number to report (-1: none reported yet), how many
#: feedback packets were made, the arrivals recorded when feedback was last made and when that
#: was (µs, the router's clock); the SSRCs feedback carries and whether they are known (1).
#: Then ``ARRIVALS`` records of (sequence number, arrival in µs).
_ARRIVALS_HEADER = struct.Struct("=iiiiqiiqqIIii")
#: The header's fields, by their place in it.
(_EXTENSION_ID, _FIRST, _HIGHEST, _READER, _RECORDED, _NEXT, _COUNT, _REPORTED, _LAST_US,
 _SENDER_SSRC, _MEDIA_SSRC, _SSRCS, _UNUSED) = range(13)
_ARRIVAL = struct.Struct("=iq")


def _low_byte(field: int) -> int:
    """Where the header's 4-byte field ``field`` keeps its low byte: for a field that is 0 or
    1, that byte tells which."""
    offset = struct.calcsize(_ARRIVALS_HEADER.format[:field + 1])  # "=" and the fields before
    return offset if sys.byteorder == "little" else offset + 3


_READER_BYTE = _low_byte(_READER)
_SSRCS_BYTE = _low_byte(_SSRCS)
#: A record older than this is taken for a lost packet (µs): the ring has gone round since.
_ARRIVAL_AGE = 10_000_000
#: The largest receive delta a feedback packet carries (signed 16 bits of 250 µs).
_MAX_DELTA = 0x7FFF
#: The most packets one feedback packet reports (``FEEDBACK_MOST`` in ``_twcc.c``): at most
#: 939 bytes, inside what a linked transport protects in one go (a long hold of the loop can
#: leave more than that to report at once).
FEEDBACK_MOST = 400


def sequence_in(packet: bytes, extension_id: int) -> int | None:
    """The transport-wide sequence number in header extension ``extension_id`` of an RTP
    packet, or None (``transport_sequence`` in ``_read.c``, which reads the one-byte form
    browsers use)."""
    try:
        value = rtp.extensions(packet, rtp.parse_header(packet)).get(extension_id)
    except ValueError:
        return None
    return None if value is None or len(value) != 2 else int.from_bytes(value, "big")


def answered_id(answer: str) -> int:
    """The id an answer gives the extension in its first open video section that has it (0:
    none)."""
    for section in sdp_text.sections(answer)[1:]:
        parts = section[0].split()
        if parts[0] == "m=video" and parts[1:2] != ["0"]:
            ident = _extension_in(section)
            if ident is not None:
                return ident
    return 0


def build_feedback(base: int, arrivals: Sequence[int | None], count: int = 0,
                   sender_ssrc: int = 0, media_ssrc: int = 0) -> bytes:
    """One transport feedback packet about the packets numbered from ``base``: each one's
    arrival in µs on the receiver's clock, or None if it did not arrive. Two-bit status vectors;
    every delta must fit in 16 signed bits of 250 µs (``TwccReceiver`` splits where one does
    not). ``count``: the feedback packet's number (modulo 256)."""
    received = [a for a in arrivals if a is not None]
    reference = received[0] // 64000 if received else 0
    symbols: list[int] = []
    deltas = bytearray()
    previous = reference * 64000
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        delta = (arrival - previous) // 250
        previous += delta * 250
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas.append(delta)
        elif -_MAX_DELTA - 1 <= delta <= _MAX_DELTA:
            symbols.append(2)
            deltas += struct.pack("!h", delta)
        else:
            raise ValueError(f"a receive delta of {delta * 250} µs does not fit")
    chunks = bytearray()
    for start in range(0, len(symbols), 7):
        value = 0xC000
        for i, symbol in enumerate(symbols[start:start + 7]):
            value |= symbol << (12 - 2 * i)
        chunks += struct.pack("!H", value)
    body = _HEADER.pack(base & 0xFFFF, len(arrivals), ((reference & 0xFFFFFF) << 8)
                        | (count & 0xFF)) + chunks + deltas
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBHII", 0x8F, 205, (len(body) + 8) // 4, sender_ssrc,
                       media_ssrc) + body


class TwccReceiver:
    """When a publisher's packets arrived, by transport-wide sequence number, and the feedback
    that tells the publisher (whose browser estimates its uplink from it).

    All of its state is in ``arrivals`` (a header, then the records), which the socket's native
    reader (``_read.c``) reads and writes too: where it reads a transport, it records the
    arrivals and sends the feedback itself, at most every ``FEEDBACK_INTERVAL`` on the first
    arrival after that; the Python path calls :meth:`record` and the router sends
    :meth:`feedback` on every tick. Whichever recorded the last arrival sends the feedback.
    """

    __slots__ = ("_extension_id", "arrivals")

    def __init__(self) -> None:
        self.arrivals = bytearray(_ARRIVALS_HEADER.pack(0, -1, -1, 0, 0, -1, 0, 0, 0, 0, 0, 0,
                                                        0)) + \
            bytearray(_ARRIVAL.pack(-1, 0) * ARRIVALS)
        self._extension_id = 0

    @property
    def extension_id(self) -> int:
        """The negotiated id of the extension in the publisher's packets (0: not negotiated)."""
        return self._extension_id

    @extension_id.setter
    def extension_id(self, value: int) -> None:
        header = list(_ARRIVALS_HEADER.unpack_from(self.arrivals))
        header[_EXTENSION_ID] = self._extension_id = value
        _ARRIVALS_HEADER.pack_into(self.arrivals, 0, *header)

    @property
    def by_reader(self) -> bool:
        """Whether the socket's native reader recorded the last arrival (and so sends the
        feedback). Read on every tick: one byte of the header's field, not the header."""
        return self.arrivals[_READER_BYTE] != 0

    @property
    def ssrcs_known(self) -> bool:
        """Whether the SSRCs the feedback carries were noted (the reader waits for them)."""
        return self.arrivals[_SSRCS_BYTE] != 0

    def note_ssrcs(self, sender_ssrc: int, media_ssrc: int) -> None:
        """The SSRCs the feedback carries from now on (the sender's RTCP SSRC, and the first
        of the publisher's media)."""
        header = list(_ARRIVALS_HEADER.unpack_from(self.arrivals))
        if header[_SENDER_SSRC:_SSRCS + 1] != [sender_ssrc, media_ssrc, 1]:
            header[_SENDER_SSRC:_SSRCS + 1] = [sender_ssrc, media_ssrc, 1]
            _ARRIVALS_HEADER.pack_into(self.arrivals, 0, *header)

    @property
    def count(self) -> int:
        """Feedback packets made so far (by either path)."""
        return int(_ARRIVALS_HEADER.unpack_from(self.arrivals)[_COUNT])

    def record(self, packet: bytes, at: float) -> None:
        """The RTP packet ``packet`` arrived at ``at`` (seconds, the router's clock): noted if
        it carries a transport-wide sequence number."""
        sequence = sequence_in(packet, self._extension_id)
        if sequence is None:
            return
        header = list(_ARRIVALS_HEADER.unpack_from(self.arrivals))
        _ARRIVAL.pack_into(self.arrivals, _ARRIVALS_HEADER.size
                           + (sequence & (ARRIVALS - 1)) * _ARRIVAL.size,
                           sequence, int(at * 1_000_000))
        highest = header[_HIGHEST]
        if highest < 0 or (sequence - highest) & 0xFFFF < 0x8000:
            header[_HIGHEST] = sequence
        if header[_FIRST] < 0:
            header[_FIRST] = sequence
        header[_READER] = 0  # Python recorded it: Python's tick sends the feedback
        header[_RECORDED] += 1
        _ARRIVALS_HEADER.pack_into(self.arrivals, 0, *header)

    def feedback(self, now: float, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """Feedback about every packet numbered since the last, up to the highest number
        that arrived (usually one packet; more where a delta does not fit in one). Empty when
        nothing newer arrived since, and where the socket's native reader sends the feedback
        (it sends it with these SSRCs, which this notes)."""
        self.note_ssrcs(sender_ssrc, media_ssrc)
        if self.by_reader:
            return []
        if native_take is not None:
            return native_take(self.arrivals, now)
        return self._take(now)

    def _take(self, now: float) -> list[bytes]:
        """The feedback due at ``now``, the header's bookkeeping updated (``twcc_take`` in C,
        which the reader calls)."""
        header = list(_ARRIVALS_HEADER.unpack_from(self.arrivals))
        highest, count = header[_HIGHEST], header[_COUNT]
        if header[_RECORDED] == header[_REPORTED] or highest < 0:
            return []
        header[_REPORTED] = header[_RECORDED]
        start = header[_FIRST] if header[_NEXT] < 0 else header[_NEXT]
        span = (highest - start) & 0xFFFF
        if span >= 0x8000:  # only packets reported already (as lost) came since
            _ARRIVALS_HEADER.pack_into(self.arrivals, 0, *header)
            return []
        if span >= ARRIVALS:
            start = (highest - ARRIVALS + 1) & 0xFFFF
            span = ARRIVALS - 1
        now_us = int(now * 1_000_000)
        oldest = now_us - _ARRIVAL_AGE
        packets = self._report(start, span + 1, oldest, count, header[_SENDER_SSRC],
                               header[_MEDIA_SSRC])
        header[_NEXT] = (highest + 1) & 0xFFFF
        header[_COUNT] = (count + len(packets)) & 0x7FFFFFFF
        header[_LAST_US] = now_us
        _ARRIVALS_HEADER.pack_into(self.arrivals, 0, *header)
        return packets

    def _report(self, start: int, count: int, oldest: int, number: int, sender_ssrc: int,
                media_ssrc: int) -> list[bytes]:
        """The feedback about ``count`` packets from ``start`` (``report_packets`` in C)."""
        arrivals: list[int | None] = []
        for offset in range(count):
            sequence = (start + offset) & 0xFFFF
            recorded_as, at = _ARRIVAL.unpack_from(
                self.arrivals, _ARRIVALS_HEADER.size + (sequence & (ARRIVALS - 1))
                * _ARRIVAL.size)
            arrivals.append(at if recorded_as == sequence and at >= oldest else None)
        return [build_feedback(base, part, number + n, sender_ssrc, media_ssrc)
                for n, (base, part) in enumerate(_parts(start, arrivals))]


def _parts(base: int, arrivals: list[int | None]) -> Iterator[tuple[int, list[int | None]]]:
    """``arrivals`` (from ``base``) cut where a receive delta would not fit in a feedback
    packet, and after every ``FEEDBACK_MOST``."""
    part: list[int | None] = []
    previous: int | None = None
    for arrival in arrivals:
        if len(part) == FEEDBACK_MOST:
            yield base, part
            base = (base + len(part)) & 0xFFFF
            part, previous = [], None
        if arrival is not None:
            if previous is None:
                previous = arrival // 64000 * 64000
            elif not -_MAX_DELTA * 250 <= arrival - previous <= _MAX_DELTA * 250:
                yield base, part
                base = (base + len(part)) & 0xFFFF
                part, previous = [], arrival // 64000 * 64000
            previous = arrival - (arrival - previous) % 250
        part.append(arrival)
    if part:
        yield base, part
