"""Synthetic participants that cost the benchmark client as little CPU as possible.

A **producer** publishes VP8 (one 640x360 stream, or three simulcast layers ``q``/``h``/``f`` the
way a browser does) and Opus without encoding anything live: it replays the pre-encoded clip of
``clip.py`` in a loop. The peer connection is an ordinary aiortc ``RTCPeerConnection`` whose
sender tracks never yield a frame (so aiortc's encoders never run); the RTP packets are built here
(own sequence numbers and timestamps; the VP8 payload descriptor with a 15-bit picture id,
TL0PICIDX and TID per layer; header extensions: ``sdes:mid``, with simulcast ``sdes:rtp-stream-id``,
and on audio ``ssrc-audio-level`` whose level the harness sets) and handed to the DTLS transport
for SRTP and sending. A PLI or FIR makes the replay jump to the clip's next keyframe (in every
layer: the clip has its keyframes at the same frames), and there is a keyframe every two seconds.
By default a frame's packets leave together; with ``pace=True`` they leave as a browser's pacer
lets them (see :class:`Pacer`).

Simulcast is negotiated as a browser does it (RFC 8851/8853): the video section of aiortc's offer
gets ``a=rid:q send``, ``a=rid:h send``, ``a=rid:f send``, ``a=simulcast:send q;h;f`` and the
``rtp-stream-id`` extension, and loses its ``a=ssrc`` lines; each layer is an SSRC of its own that
the server learns from the rid.

A **consumer** answers the server's offers with an ordinary ``RTCPeerConnection``. By default it
counts the RTP packets it receives per SSRC after SRTP, at the DTLS transport, without parsing or
decoding them. With ``raw=True`` it takes each SRTP datagram straight off its ICE connection and
counts it by the header's SSRC and sequence number (sent in the clear) without decrypting it: far
cheaper, so one client process can play a whole meeting; it also finds gaps in each stream's
sequence numbers (packets lost on the way). Either way the counting is done in C
(``_arrivals.c``, compiled into ``OUT_DIR`` on first use): in Python it cost about 1.6 µs a
packet, a tenth of a core at 27 rooms of 19 consumers. With ``remb`` it sends a REMB with that
bitrate every second, as a browser's bandwidth estimate.

Every use of aiortc's and aioice's private API is in this module:

- ``RTCDtlsTransport._send_rtp(data)``: coroutine; SRTP-protects one RTP (or RTCP) packet and sends
  it on the nominated ICE pair (the producer's RTCP, the consumers' REMB).
- ``RTCDtlsTransport._tx_srtp`` (pylibsrtp ``Session``, and its ``_srtp``) and
  ``aioice.Connection._nominated``: the producer protects and sends its media itself, at once.
- ``RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)``: coroutine the transport calls with
  each decrypted RTP packet (it normally parses and routes it to a receiver). Replaced per instance.
- ``RTCDtlsTransport._handle_rtcp_data(data)``: coroutine the transport calls with each decrypted
  RTCP compound packet. Wrapped per instance to notice PLI/FIR, then passed on unchanged.
- ``RTCIceTransport._connection`` (the ``aioice.Connection``) and its ``data_received(data,
  component)``, which every datagram of the connection goes through: wrapped per instance in raw
  mode.
- ``aioice.ice.CONSENT_FAILURES``: set so high that the participants never give up consent on
  their own. They run on loopback, where the server always answers; but with 100 peer
  connections on one core the client process gets to the answers late, its consent checks time
  out after aioice's 0.5 s, and it closed its own connections (50 people).

SSRCs, payload types and header-extension ids are read from the SDP, not from aiortc's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import random
import struct
import subprocess
import sysconfig
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from clip import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    LAYERS,
    OUT_DIR,
    VIDEO_FPS,
    Clip,
    load_clip,
)

__all__ = ["OUT_DIR", "Clip", "SyntheticConsumer", "SyntheticProducer", "load_clip"]

logger = logging.getLogger(__name__)

_RIDS = [rid for rid, *_ in LAYERS]

# The benchmark's participants never give up consent themselves (see the list above); the
# server's own consent checks still find a participant that is gone.
aioice.ice.CONSENT_FAILURES = 1_000_000

VIDEO_CLOCK_STEP = 90_000 // VIDEO_FPS
AUDIO_CLOCK_STEP = AUDIO_FRAME_SAMPLES
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
#: Extension ids the simulcast offer gives its video section (aiortc's audio section uses 1, 2).
SIMULCAST_MID_ID = 1
SIMULCAST_RID_ID = 10
#: The id a producer with ``twcc`` offers transport-wide sequence numbers with.
PRODUCER_TWCC_ID = 11
#: A browser's pacer sends at this multiple of its target rate (libwebrtc's pacing factor)...
PACING_FACTOR = 2.5
#: ... in a burst every this many seconds.
PACING_INTERVAL = 0.005
#: RFC 6464 levels (-dBov) the producer sends while ``speaking`` and while not.
SPEAKING_LEVEL = 25
SILENT_LEVEL = 127

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTCP_RTPFB = 205
RTCP_FMT_TWCC = 15
RTCP_PSFB = 206
RTCP_FMT_PLI = 1
RTCP_FMT_FIR = 4
RTCP_FMT_REMB = 15
#: How often a raw consumer sends transport feedback (seconds), as a browser does, and the
#: phases consumers are spread over within that interval.
FEEDBACK_INTERVAL = 0.1
FEEDBACK_SLOTS = 10


# --------------------------------------------------------------------------------------------
# SDP reading (just what the participants need)
# --------------------------------------------------------------------------------------------


@dataclass
class MediaSection:
    kind: str
    mid: str | None = None
    payload_types: list[int] = field(default_factory=list)
    codecs: dict[int, str] = field(default_factory=dict)  # payload type -> "vp8", "opus", ...
    extensions: dict[str, int] = field(default_factory=dict)  # uri -> id
    ssrcs: list[int] = field(default_factory=list)
    direction: str = "sendrecv"

    def payload_type_for(self, codec: str) -> int:
        for pt in self.payload_types:
            if self.codecs.get(pt) == codec:
                return pt
        raise ValueError(f"codec {codec} not negotiated in m={self.kind} (mid {self.mid})")


def parse_media_sections(sdp: str) -> list[MediaSection]:
    sections: list[MediaSection] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            section = MediaSection(kind=parts[0])
            section.payload_types = [int(p) for p in parts[3:] if p.isdigit()]
            sections.append(section)
        elif not sections:
            continue
        elif line.startswith("a=mid:"):
            sections[-1].mid = line[6:]
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            sections[-1].codecs[int(pt)] = rest.split("/")[0].lower()
        elif line.startswith("a=extmap:"):
            ident, _, uri = line[9:].partition(" ")
            sections[-1].extensions[uri.split()[0]] = int(ident.split("/")[0])
        elif line.startswith("a=ssrc:"):
            ssrc = int(line[7:].split()[0])
            if ssrc not in sections[-1].ssrcs:
                sections[-1].ssrcs.append(ssrc)
        elif line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"):
            sections[-1].direction = line[2:]
    return sections


def simulcast_offer(sdp: str, rids: tuple[str, ...]) -> str:
    """aiortc's offer with its video section turned into a browser's simulcast offer."""
    out: list[str] = []
    kind = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split()[0]
        if kind == "video" and line.startswith(("a=ssrc", "a=extmap")):
            continue  # no SSRCs: layers are found by rid; the extension ids are set below
        out.append(line)
        if kind == "video" and line.startswith("a=mid:"):
            out += [
                f"a=extmap:{SIMULCAST_MID_ID} {MID_EXTENSION_URI}",
                f"a=extmap:{SIMULCAST_RID_ID} {RID_EXTENSION_URI}",
                *(f"a=rid:{rid} send" for rid in rids),
                f"a=simulcast:send {';'.join(rids)}",
            ]
    return "\r\n".join(out) + "\r\n"


def twcc_offer(sdp: str) -> str:
    """An offer with transport-wide sequence numbers offered on its video, as a browser's."""
    out: list[str] = []
    kind = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split()[0]
            payload_types = line.split()[3:]
        out.append(line)
        if kind == "video" and line.startswith("a=mid:"):
            out.append(f"a=extmap:{PRODUCER_TWCC_ID} {TWCC_URI}")
            out += [f"a=rtcp-fb:{pt} transport-cc" for pt in payload_types]
    return "\r\n".join(out) + "\r\n"


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


class SilentTrack(MediaStreamTrack):
    """A sender track that never yields a frame, so aiortc never starts an encoder."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise RuntimeError("unreachable")


def new_peer_connection() -> RTCPeerConnection:
    # No ICE servers: aiortc would otherwise ask a public STUN server. max-bundle: with aiortc's
    # default ("balanced"), answering an offer of many sections of one kind leaves some on
    # transports the BUNDLE step then closes.
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def _dtls_transport(pc: RTCPeerConnection) -> Any:
    """The (BUNDLE) DTLS transport of a peer connection, through public attributes."""
    for transceiver in pc.getTransceivers():
        if transceiver.sender.transport is not None:
            return transceiver.sender.transport
        if transceiver.receiver.transport is not None:
            return transceiver.receiver.transport
    raise RuntimeError("the peer connection has no transport yet")


async def _wait_dtls_connected(transport: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while transport.state != "connected":
        if transport.state in ("closed", "failed") or time.monotonic() > deadline:
            raise ConnectionError(f"DTLS transport {transport.state} before connecting")
        await asyncio.sleep(0.01)


def _one_byte_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte header extension block holding ``elements``, padded to 32 bits."""
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def _remb(sender_ssrc: int, bitrate: int) -> bytes:
    """A REMB (draft-alvestrand-rmcat-remb) for ``bitrate`` bit/s, about no particular SSRC."""
    exponent = 0
    while bitrate >= 1 << 18:
        bitrate >>= 1
        exponent += 1
    return struct.pack(
        "!BBHII4sBBHI", 0x80 | RTCP_FMT_REMB, RTCP_PSFB, 5, sender_ssrc, 0, b"REMB", 1,
        (exponent << 2) | (bitrate >> 16), bitrate & 0xFFFF, sender_ssrc,
    )


def _sender(transport: Any, rtcp: bool = False) -> Callable[[bytes], str]:
    """Protect and send one RTP packet (``rtcp``: one RTCP packet, as a receiver sends its
    feedback) at once, without aiortc's coroutines: libsrtp through pylibsrtp's cffi binding
    into a buffer made once, then ``sendto`` on the nominated pair's socket. One client process
    then plays a large meeting's producers. Returns "" when sent, else why not."""
    from pylibsrtp._binding import ffi, lib

    session = transport._tx_srtp
    srtp = session._srtp[0]
    protect = lib.srtp_protect_rtcp if rtcp else lib.srtp_protect
    buffer = ffi.new("char[]", 1500)
    view = ffi.buffer(buffer)
    size = ffi.new("int *")
    pairs = transport.transport._connection._nominated

    def send(data: bytes, _session: Any = session) -> str:
        pair = pairs.get(1)
        if pair is None or pair.protocol.transport is None:
            return "no ICE pair"
        if len(data) > 1300:
            return "too long"
        view[0:len(data)] = data
        size[0] = len(data)
        if protect(srtp, buffer, size):
            return "SRTP refused"
        pair.protocol.transport.sendto(view[0:size[0]], pair.remote_addr)
        return ""

    return send


class _FeedbackTicker:
    """Sends the transport feedback of every raw consumer on one event loop from one task, each
    consumer every ``FEEDBACK_INTERVAL`` at a phase of its own (one of ``FEEDBACK_SLOTS`` in the
    interval, so that they do not all send at once), and without aiortc's coroutines. A task
    per consumer, each sending through aiortc, was one of the client's largest costs: 5,000
    wake-ups and sends a second at 27 rooms of 19."""

    def __init__(self) -> None:
        self.slots: list[list[SyntheticConsumer]] = [[] for _ in range(FEEDBACK_SLOTS)]
        self.task: asyncio.Task[None] | None = None

    def add(self, consumer: SyntheticConsumer) -> None:
        self.slots[random.randrange(FEEDBACK_SLOTS)].append(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, consumer: SyntheticConsumer) -> None:
        for slot in self.slots:
            if consumer in slot:
                slot.remove(consumer)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step = FEEDBACK_INTERVAL / FEEDBACK_SLOTS
        at = loop.time()
        slot = 0
        while any(self.slots):
            at += step
            await asyncio.sleep(max(0.0, at - loop.time()))
            for consumer in list(self.slots[slot]):
                try:
                    consumer._send_feedback()
                except Exception:  # one consumer's failure stops no one else's feedback
                    logger.exception("sending a consumer's transport feedback failed")
            slot = (slot + 1) % FEEDBACK_SLOTS


_FEEDBACK_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FeedbackTicker] = \
    weakref.WeakKeyDictionary()


def _feedback_ticker() -> _FeedbackTicker:
    loop = asyncio.get_running_loop()
    ticker = _FEEDBACK_TICKERS.get(loop)
    if ticker is None:
        ticker = _FEEDBACK_TICKERS[loop] = _FeedbackTicker()
    return ticker


def accept_twcc(offer: str, answer: str) -> tuple[str, int | None]:
    """``answer`` with transport-wide congestion control accepted in each video section where
    ``offer`` offers it (aiortc's answers leave it out), and the extension id."""
    offered: dict[str, tuple[int, list[str]]] = {}
    mid, ext_id = "", None
    pts: list[str] = []
    for line in [*offer.splitlines(), "m="]:
        if line.startswith("m="):
            if ext_id is not None:
                offered[mid] = (ext_id, pts)
            mid, ext_id, pts = "", None, []
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=extmap:") and TWCC_URI in line:
            ext_id = int(line[9:].split()[0].split("/")[0])
        elif line.startswith("a=rtpmap:"):
            pts.append(line[9:].split()[0])
    out: list[str] = []
    found: int | None = None
    for line in answer.splitlines():
        out.append(line)
        if line.startswith("a=mid:") and line[6:] in offered:
            found, answered_pts = offered[line[6:]]
            out.append(f"a=extmap:{found} {TWCC_URI}")
            out += [f"a=rtcp-fb:{pt} transport-cc" for pt in answered_pts]
    return "\r\n".join(out) + "\r\n", found


def twcc_feedback(sender: int, media: int, count: int, arrivals: list[tuple[int, int]]) -> bytes:
    """An RTCP transport feedback packet (RTPFB 15) reporting ``arrivals``: (extended transport
    sequence number, arrival in µs), in order of sequence number."""
    base = arrivals[0][0]
    last = arrivals[-1][0]
    when = dict(arrivals)
    reference = arrivals[0][1] // 64000
    previous = reference * 64000
    symbols: list[int] = []
    deltas = bytearray()
    for sequence in range(base, last + 1):
        arrival = when.get(sequence)
        if arrival is None:
            symbols.append(0)
            continue
        delta = (arrival - previous) // 250
        if 0 <= delta <= 255:
            symbols.append(1)
            deltas.append(delta)
        else:
            delta = max(-32768, min(32767, delta))
            symbols.append(2)
            deltas += struct.pack("!h", delta)
        previous += delta * 250
    chunks = bytearray()
    start = 0
    while start < len(symbols):  # run-length chunks
        end = start
        while end < len(symbols) and symbols[end] == symbols[start] and end - start < 8191:
            end += 1
        chunks += struct.pack("!H", (symbols[start] << 13) | (end - start))
        start = end
    body = (struct.pack("!IIHH", sender, media, base & 0xFFFF, len(symbols))
            + (((reference & 0xFFFFFF) << 8) | (count & 0xFF)).to_bytes(4, "big")
            + chunks + deltas)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | RTCP_FMT_TWCC, RTCP_RTPFB, len(body) // 4) + body


# --------------------------------------------------------------------------------------------
# Producer
# --------------------------------------------------------------------------------------------


@dataclass
class _Stream:
    """One outgoing RTP stream of the producer: audio, or one video layer."""

    kind: str
    rid: str  # "" unless a simulcast layer
    ssrc: int
    payload_type: int
    #: (id, value) header extension elements every packet carries (mid, rid)
    extensions: list[tuple[int, bytes]]
    #: id of the audio-level extension, if negotiated (audio only)
    level_id: int | None = None
    #: where the transport-wide sequence number goes in each packet (0: not numbered)
    twcc_offset: int = 0
    sequence: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    timestamp: int = field(default_factory=lambda: random.randint(0, 0xFFFFFFFF))
    picture_id: int = field(default_factory=lambda: random.randint(0, 0x7FFF))
    tl0picidx: int = field(default_factory=lambda: random.randint(0, 0xFF))
    packets: int = 0
    octets: int = 0
    _blocks: dict[int, bytes] = field(default_factory=dict)

    def header(self, marker: bool, level: int = SILENT_LEVEL) -> bytes:
        block = self._blocks.get(level)
        if block is None:
            elements = list(self.extensions)
            if self.level_id is not None:
                voice = 0x80 if level < SILENT_LEVEL else 0
                elements.append((self.level_id, bytes([voice | level])))
            block = self._blocks[level] = _one_byte_extensions(elements) if elements else b""
        first = 0x90 if block else 0x80
        second = (0x80 if marker else 0) | self.payload_type
        head = struct.pack("!BBHII", first, second, self.sequence, self.timestamp, self.ssrc)
        self.sequence = (self.sequence + 1) & 0xFFFF
        return head + block


class Pacer:
    """Video packets leave at ``rate`` bit/s, in bursts every ``PACING_INTERVAL``, as in a
    browser: libwebrtc queues each encoded frame's packets and lets them onto the network at
    ``PACING_FACTOR`` times its target rate, audio first (its pacer design notes,
    https://webrtc.googlesource.com/src/+/refs/heads/main/modules/pacing/g3doc/index.md).
    Here the target is taken to be what all the layers are encoded at (as if the estimate sat
    there), so a frame of the size the encoder aims for leaves within 1/2.5 of its frame
    interval, and a keyframe takes longer. The budget is a leaky bucket: each burst may spend
    what the interval earned, one packet may overdraw it, and an empty queue saves nothing
    up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.queue: deque[tuple[_Stream, bytes]] = deque()
        self._budget = rate / 8 * PACING_INTERVAL  # bytes
        self._at: float | None = None

    def add(self, stream: _Stream, packet: bytes) -> None:
        self.queue.append((stream, packet))

    def due(self, now: float) -> list[tuple[_Stream, bytes]]:
        """The packets whose turn has come at ``now`` (call at least every
        ``PACING_INTERVAL`` while ``queue`` is not empty)."""
        if self._at is not None:
            self._budget += (now - self._at) * self.rate / 8
        self._at = now
        self._budget = min(self._budget, self.rate / 8 * PACING_INTERVAL)
        out: list[tuple[_Stream, bytes]] = []
        while self.queue and self._budget > 0:
            item = self.queue.popleft()
            self._budget -= len(item[1])
            out.append(item)
        return out


class SyntheticProducer:
    """Publishes the pre-encoded clip (audio + video, optionally simulcast) on one peer
    connection. ``speaking`` sets the audio level the audio packets carry."""

    def __init__(
        self,
        clip: Clip,
        *,
        audio: bool = True,
        video: bool = True,
        simulcast: bool = False,
        pace: bool = False,
        twcc: bool = False,
    ) -> None:
        self.clip = clip
        #: Send video through a :class:`Pacer`, as a browser does.
        self.pace = pace
        #: Offer transport-wide sequence numbers on video, and number it if the answer takes
        #: them, as a browser does (the feedback that comes back is counted, not used).
        self.twcc = twcc
        self._twcc_sequence = 0
        self.transport_feedback = 0
        self.pc = new_peer_connection()
        self.simulcast = simulcast
        self.speaking = False
        self._kinds = [k for k, on in (("audio", audio), ("video", video)) if on]
        self._streams: list[_Stream] = []
        self._send_task: asyncio.Task[None] | None = None
        self._keyframe_requested = False
        self.keyframe_requests = 0
        #: The longest the sending loop has been behind its clock (seconds; the benchmark sets it
        #: to 0 when its window opens): a client too busy to send on time sends in bursts.
        self.most_late = 0.0
        #: How many simulcast layers, lowest first, the server asked for (``send-layers``).
        self.sent_layers = len(LAYERS)
        #: Packets numbered but not sent, by reason (see ``_sender``).
        self.failed_sends: dict[str, int] = {}
        self.mids: dict[str, str] = {}

    # -- negotiation ---------------------------------------------------------------------

    async def create_offer(self) -> str:
        for kind in self._kinds:
            self.pc.addTransceiver(SilentTrack(kind), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = str(self.pc.localDescription.sdp)
        for section in parse_media_sections(sdp):
            if section.mid is not None:
                self.mids[section.kind] = section.mid
        if self.simulcast and "video" in self._kinds:
            sdp = simulcast_offer(sdp, tuple(rid for rid, *_ in LAYERS))
        if self.twcc:
            sdp = twcc_offer(sdp)
        return sdp

    async def accept_answer(self, sdp: str, *, timeout: float = 60.0) -> None:
        """Apply the server's answer, wait for DTLS and start replaying the clip."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        local = {s.mid: s for s in parse_media_sections(self.pc.localDescription.sdp)}
        for remote in parse_media_sections(sdp):
            mine = local.get(remote.mid)
            if mine is None or remote.kind not in self._kinds or not mine.ssrcs:
                continue
            if remote.direction in ("inactive", "sendonly"):
                continue
            codec = "vp8" if remote.kind == "video" else "opus"
            mid_id = remote.extensions.get(MID_EXTENSION_URI)
            mid = [(mid_id, str(remote.mid).encode())] if mid_id else []
            payload_type = remote.payload_type_for(codec)
            rid_id = remote.extensions.get(RID_EXTENSION_URI)
            twcc_id = remote.extensions.get(TWCC_URI) if self.twcc else None
            numbered = [(twcc_id, b"\x00\x00")] if twcc_id and remote.kind == "video" else []
            if remote.kind == "video" and self.simulcast:
                if rid_id is None:
                    raise RuntimeError("the server did not accept simulcast (no rid extension)")
                for rid, *_ in LAYERS:
                    self._streams.append(_Stream(
                        "video", rid, random.randint(1, 0xFFFFFFFF), payload_type,
                        [*mid, (rid_id, rid.encode()), *numbered]))
            else:
                self._streams.append(_Stream(
                    remote.kind, "", mine.ssrcs[0], payload_type, [*mid, *numbered],
                    level_id=remote.extensions.get(AUDIO_LEVEL_URI)
                    if remote.kind == "audio" else None))
        for stream in self._streams:
            if numbered and stream.kind == "video":  # the number is the last element
                stream.twcc_offset = 12 + 4 + sum(1 + len(v) for _, v in stream.extensions) - 2
        if not self._streams:
            raise RuntimeError("the server accepted none of the producer's tracks")
        transport = _dtls_transport(self.pc)
        self._hook_rtcp(transport)
        await _wait_dtls_connected(transport, timeout)
        self._send_task = asyncio.create_task(self._run(transport))

    def _hook_rtcp(self, transport: Any) -> None:
        original: Callable[[bytes], Awaitable[None]] = transport._handle_rtcp_data

        async def handle_rtcp_data(data: bytes) -> None:
            pos = 0
            others = False
            while pos + 4 <= len(data):
                fmt = data[pos] & 0x1F
                ptype = data[pos + 1]
                length = (struct.unpack_from("!H", data, pos + 2)[0] + 1) * 4
                if ptype == RTCP_PSFB and fmt in (RTCP_FMT_PLI, RTCP_FMT_FIR):
                    self._keyframe_requested = True
                    self.keyframe_requests += 1
                if ptype == RTCP_RTPFB and fmt == RTCP_FMT_TWCC:
                    self.transport_feedback += 1
                else:
                    others = True
                pos += length
            if others:  # aiortc cannot read transport feedback: it comes alone from servers
                await original(data)

        transport._handle_rtcp_data = handle_rtcp_data

    # -- replay --------------------------------------------------------------------------

    @property
    def packets_sent(self) -> int:
        return sum(s.packets for s in self._streams)

    def packets_sent_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._streams:
            key = f"video-{s.rid}" if s.rid else s.kind
            out[key] = out.get(key, 0) + s.packets
        return out

    @property
    def send_errors(self) -> int:
        return sum(self.failed_sends.values())

    def _send(self, send: Callable[[bytes], str], stream: _Stream, packet: bytes) -> None:
        offset = stream.twcc_offset
        if offset:  # numbered as it leaves, as a browser's pacer does
            sequence = self._twcc_sequence
            self._twcc_sequence = (sequence + 1) & 0xFFFF
            packet = packet[:offset] + sequence.to_bytes(2, "big") + packet[offset + 2:]
        failure = send(packet)
        if failure:
            self.failed_sends[failure] = self.failed_sends.get(failure, 0) + 1
            return
        stream.packets += 1
        stream.octets += len(packet)

    async def _run(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        send = _sender(transport)
        video = [s for s in self._streams if s.kind == "video"]
        audio = next((s for s in self._streams if s.kind == "audio"), None)
        frames = len(self.clip.video)
        frame_index = 0
        audio_index = 0
        start = loop.time()
        # Participants' capture clocks are independent: a random phase for each, so that a
        # meeting's producers (joined at round intervals) do not send every frame in step.
        next_video = start + random.uniform(0, 1 / VIDEO_FPS)
        next_audio = start + random.uniform(0, AUDIO_FRAME_SAMPLES / AUDIO_RATE)
        last_keyframe_jump = -1.0
        pacer = Pacer(self._pacing_rate()) if self.pace and video else None

        def out(stream: _Stream, packet: bytes) -> None:
            if pacer is None:
                self._send(send, stream, packet)
            else:
                pacer.add(stream, packet)

        due = start  # when the next frame (audio or video) is due
        while True:
            now = loop.time()
            self.most_late = max(self.most_late, now - due)
            if video and now >= next_video:
                if self._keyframe_requested and now - last_keyframe_jump > 0.5:
                    self._keyframe_requested = False
                    last_keyframe_jump = now
                    if frame_index not in self.clip.keyframes:
                        later = [k for k in self.clip.keyframes if k > frame_index]
                        frame_index = later[0] if later else self.clip.keyframes[0]
                for stream in video:
                    if not stream.rid or _RIDS.index(stream.rid) < self.sent_layers:
                        self._send_frame(out, stream, frame_index)
                frame_index = (frame_index + 1) % frames
                next_video += 1 / VIDEO_FPS
            if audio is not None and now >= next_audio:
                payload = self.clip.audio[audio_index]
                level = SPEAKING_LEVEL if self.speaking else SILENT_LEVEL
                self._send(send, audio, audio.header(False, level) + payload)
                audio.timestamp = (audio.timestamp + AUDIO_CLOCK_STEP) & 0xFFFFFFFF
                audio_index = (audio_index + 1) % len(self.clip.audio)
                next_audio += AUDIO_FRAME_SAMPLES / AUDIO_RATE
            if pacer is not None:
                for stream, packet in pacer.due(now):
                    self._send(send, stream, packet)
            due = min(d for d, on in ((next_video, video), (next_audio, audio)) if on)
            wake = min(due, now + PACING_INTERVAL) if pacer is not None and pacer.queue else due
            delay = wake - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def send_layers(self, count: int) -> None:
        """Send only the lowest ``count`` layers, as a page does on ``send-layers``; a layer
        switched on again starts with a keyframe, as a browser's encoder does."""
        count = max(1, count)
        if count > self.sent_layers:
            self._keyframe_requested = True
        self.sent_layers = count

    def _pacing_rate(self) -> float:
        """The pacer's rate: ``PACING_FACTOR`` times the bitrate of all the layers. A browser
        paces at a multiple of its estimate, which does not fall when the server switches layers
        off; pacing the layers left at a multiple of their own bitrate alone made the keyframes
        of a producer sending one or two layers queue for seconds."""
        if not self.simulcast:
            return PACING_FACTOR * LAYERS[-1][3]
        return PACING_FACTOR * sum(bitrate for *_, bitrate in LAYERS)

    def _send_frame(self, out: Callable[[_Stream, bytes], None], stream: _Stream,
                    frame_index: int) -> None:
        layer = self.clip.layers[stream.rid] if stream.rid else self.clip.video
        chunks = layer[frame_index]
        for n, chunk in enumerate(chunks):
            # VP8 payload descriptor (RFC 7741): X, S on a frame's first packet; I (15-bit
            # picture id), L (TL0PICIDX), T (TID 0, Y set) as a browser sends them.
            descriptor = struct.pack(
                "!BBHBB", 0x90 if n == 0 else 0x80, 0xE0, 0x8000 | stream.picture_id,
                stream.tl0picidx, 0x20,
            )
            header = stream.header(marker=n == len(chunks) - 1)
            out(stream, header + descriptor + chunk)
        stream.timestamp = (stream.timestamp + VIDEO_CLOCK_STEP) & 0xFFFFFFFF
        stream.picture_id = (stream.picture_id + 1) & 0x7FFF
        stream.tl0picidx = (stream.tl0picidx + 1) & 0xFF

    async def close(self) -> None:
        if self._send_task is not None:
            self._send_task.cancel()
            try:
                await self._send_task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("producer send loop failed")
            self._send_task = None
        await self.pc.close()


# --------------------------------------------------------------------------------------------
# Consumer
# --------------------------------------------------------------------------------------------


@functools.cache
def _arrivals_module() -> Any:
    """The consumers' receiving in C (``_arrivals.c``), built into ``OUT_DIR`` when the source
    is newer than what is there."""
    source = Path(__file__).with_name("_arrivals.c")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = OUT_DIR / ("_arrivals" + suffix)
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        compiler = (sysconfig.get_config_var("CC") or "cc").split()
        subprocess.run([*compiler, "-O2", "-shared", "-fPIC", "-Wall",
                        f"-I{sysconfig.get_paths()['include']}", str(source),
                        "-o", str(target)], check=True)
    spec = importlib.util.spec_from_file_location("_arrivals", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ignore(_data: bytes, _where: Any) -> None:
    """What a consumer's count passes on where decrypted RTP alone reaches it."""


class SyntheticConsumer:
    """Answers the server's offers and counts received RTP per SSRC without decoding."""

    def __init__(self, *, raw: bool = False, remb: int | None = None, twcc: bool = False) -> None:
        self.pc = new_peer_connection()
        self.raw = raw
        self.remb = remb
        #: Accept transport-wide congestion control where offered and send its feedback every
        #: 100 ms, as a browser does (raw consumers only: the sequence numbers are read from
        #: each packet's header extension, which SRTP leaves in the clear).
        self.twcc = twcc and raw
        #: what arrived, counted in C by SSRC (``_arrivals.c``), and each transport-wide
        #: number's arrival since the last feedback
        self.arrivals = _arrivals_module().Arrivals()
        #: the transport feedback is sent on (the last hooked), its sender once connected, the
        #: feedback's own SSRC and count (``_FeedbackTicker``)
        self._twcc_transport: Any = None
        self._twcc_send: Callable[[bytes], str] | None = None
        self._twcc_sender_ssrc = random.randint(1, 0xFFFFFFFF)
        self._twcc_count = 0
        self.kinds: dict[int, str] = {}  # SSRC -> kind, from the server's offers
        self.created_at = time.monotonic()
        self._hooked: set[int] = set()
        self._remb_task: asyncio.Task[None] | None = None

    async def answer(self, offer_sdp: str, *, timeout: float = 20.0) -> str:
        """Apply a server offer and return the answer SDP; call again on each renegotiation."""
        for section in parse_media_sections(offer_sdp):
            for ssrc in section.ssrcs:
                self.kinds[ssrc] = section.kind
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._hook(_dtls_transport(self.pc))
        answer = str(self.pc.localDescription.sdp)
        if self.twcc:
            answer, self.arrivals.twcc_id = accept_twcc(offer_sdp, answer)
        return answer

    def _send_feedback(self) -> None:
        """The transport feedback on what arrived since the last (``_FeedbackTicker``)."""
        arrivals = self.arrivals.take()
        transport = self._twcc_transport
        if not arrivals or transport is None or transport.state != "connected":
            return
        if self._twcc_send is None:
            self._twcc_send = _sender(transport, rtcp=True)
        arrivals.sort()
        media = next((ssrc for ssrc, kind in self.kinds.items() if kind == "video"), 0)
        packet = twcc_feedback(self._twcc_sender_ssrc, media, self._twcc_count, arrivals)
        if self._twcc_send(packet) == "":
            self._twcc_count += 1

    def _hook(self, transport: Any) -> None:
        if id(transport) in self._hooked:
            return
        self._hooked.add(id(transport))
        hook = self.arrivals.hook

        if self.raw:
            # At the socket, before aioice, which tries to parse every datagram as STUN (the
            # exception that costs on each media packet made the client the limit on how hard
            # it could load the server); and behind aioice for whatever reaches it another way.
            # Media is counted, RTCP dropped, the rest (STUN, DTLS) passed on.
            connection = transport.transport._connection
            connection.data_received = hook(connection.data_received)
            for protocol in connection._protocols:
                protocol.datagram_received = hook(protocol.datagram_received)
        else:
            count = hook(_ignore)

            async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
                count(data, None)

            transport._handle_rtp_data = handle_rtp_data
        if self.remb is not None and self._remb_task is None:
            self._remb_task = asyncio.create_task(self._send_remb(transport, self.remb))
        if self.twcc and self._twcc_transport is None:
            self._twcc_transport, self._twcc_send = transport, None
            _feedback_ticker().add(self)

    async def _send_remb(self, transport: Any, bitrate: int) -> None:
        packet = _remb(random.randint(1, 0xFFFFFFFF), bitrate)
        while True:
            if transport.state == "connected":
                try:
                    await transport._send_rtp(packet)
                except ConnectionError:
                    return
            await asyncio.sleep(1.0)

    async def wait_connected(self, timeout: float = 60.0) -> None:
        await _wait_dtls_connected(_dtls_transport(self.pc), timeout)

    async def restart(self) -> None:
        """The server lost the receiving connection and offers a new one: answer the next
        offer on a new peer connection (what was counted so far stays counted)."""
        await self.close()
        self.pc = new_peer_connection()
        self._hooked.clear()
        self.arrivals.restart()

    @property
    def feedback_sent(self) -> int:
        """Transport feedback packets sent so far."""
        return self._twcc_count

    @property
    def first_packet_at(self) -> float | None:
        """``time.monotonic()`` of the first RTP packet, None before it."""
        first: float | None = self.arrivals.first_at
        return first

    @property
    def padding(self) -> int:
        """RTP packets with the padding bit: the server's bandwidth probes, not media (the
        producers here never pad). Counted with their SSRC too (they take sequence numbers)."""
        padding: int = self.arrivals.padding
        return padding

    def _streams(self) -> dict[int, tuple[int, int, int, list[tuple[float, int]]]]:
        """SSRC -> (packets, first and highest extended sequence numbers, jumps forward past
        missing numbers: when, and how many were missing then)."""
        streams: dict[int, tuple[int, int, int, list[tuple[float, int]]]] = \
            self.arrivals.streams()
        return streams

    @property
    def total_packets(self) -> int:
        """Media packets received (padding left out)."""
        return sum(count for count, *_ in self._streams().values()) - self.padding

    @property
    def lost_packets(self) -> int:
        """Sequence numbers between the first and the highest never seen, per SSRC
        (duplicates count against it)."""
        return sum(max(0, highest - first + 1 - count)
                   for count, first, highest, _ in self._streams().values())

    def jumps(self, since: float) -> list[tuple[float, str, int]]:
        """(when, kind, sequence numbers skipped) for each jump forward since ``since``; a
        number skipped that arrives later still shows here (``lost_packets`` has the count)."""
        return [(at, self.kinds.get(ssrc, "unknown"), missing)
                for ssrc, (*_, jumps) in self._streams().items()
                for at, missing in jumps if at >= since]

    def packets_by_kind(self) -> dict[str, int]:
        """Packets received per kind; padding (probes) on its own, out of video's count."""
        out: dict[str, int] = {}
        for ssrc, (count, *_) in self._streams().items():
            kind = self.kinds.get(ssrc, "unknown")
            out[kind] = out.get(kind, 0) + count
        padding = self.padding
        if padding:
            out["video"] = out.get("video", 0) - padding
            out["padding"] = padding
        return out

    async def close(self) -> None:
        task = self._remb_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._remb_task = None
        if self._twcc_transport is not None:
            _feedback_ticker().remove(self)
            self._twcc_transport = self._twcc_send = None
        await self.pc.close()
