"""Synthetic participants that cost the benchmark client as little CPU as possible.

A **producer** publishes VP8 640x360 (~600 kbit/s, 30 fps) and Opus (20 ms frames) without encoding
anything live: a few seconds of a moving test pattern are encoded once with PyAV (libvpx, libopus),
cached under ``bench/out/``, and the encoded frames are replayed in a loop. The peer connection is
an ordinary aiortc ``RTCPeerConnection`` whose sender tracks never yield a frame (so aiortc's
encoders never run); the RTP packets are built here and handed to the DTLS transport for SRTP and
sending.
A PLI or FIR from the server makes the replay jump to the clip's next keyframe; the clip also has a
keyframe every two seconds.

A **consumer** answers the server's offer with an ordinary ``RTCPeerConnection`` and counts the RTP
packets and bytes it receives per SSRC at the transport level, without parsing or decoding them.

Every use of aiortc's private API is in this module:

- ``RTCDtlsTransport._send_rtp(data)``: coroutine; SRTP-protects one RTP (or RTCP) packet and sends
  it on the nominated ICE pair.
- ``RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)``: coroutine the transport calls with
  each decrypted RTP packet (it normally parses and routes it to a receiver). Replaced per instance.
- ``RTCDtlsTransport._handle_rtcp_data(data)``: coroutine the transport calls with each decrypted
  RTCP compound packet. Wrapped per instance to notice PLI/FIR, then passed on unchanged.

SSRCs, payload types and header-extension ids are read from the SDP, not from aiortc's objects.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import json
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

logger = logging.getLogger(__name__)

OUT_DIR = Path(__file__).resolve().parent / "out"

VIDEO_WIDTH = 640
VIDEO_HEIGHT = 360
VIDEO_FPS = 30
VIDEO_BITRATE = 600_000
KEYFRAME_INTERVAL_FRAMES = 60  # two seconds
CLIP_FRAMES = 120  # four seconds, a multiple of the keyframe interval
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms
AUDIO_BITRATE = 32_000
CLIP_AUDIO_FRAMES = 200  # four seconds

RTP_PAYLOAD_MAX = 1200  # VP8 bytes per packet, after the payload descriptor
VIDEO_CLOCK_STEP = 90_000 // VIDEO_FPS
AUDIO_CLOCK_STEP = AUDIO_FRAME_SAMPLES
MID_EXTENSION_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"

RTCP_PSFB = 206
RTCP_FMT_PLI = 1
RTCP_FMT_FIR = 4


# --------------------------------------------------------------------------------------------
# The pre-encoded clip
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """Encoded media to replay: VP8 frames (payload chunks per frame) and Opus packets."""

    video: list[list[bytes]]  # per frame: the VP8 frame split into packet-sized chunks
    keyframes: list[int]  # indices into ``video`` that are keyframes
    audio: list[bytes]  # one Opus packet per 20 ms

    @property
    def video_bitrate(self) -> float:
        size = sum(len(chunk) for frame in self.video for chunk in frame)
        return size * 8 * VIDEO_FPS / len(self.video)

    @property
    def video_packets_per_second(self) -> float:
        return sum(len(frame) for frame in self.video) * VIDEO_FPS / len(self.video)


def _test_pattern_frames(count: int) -> list[Any]:
    """Moving test pattern: scrolling noise texture, a sweeping bar and a slow colour change."""
    import numpy as np
    from av import VideoFrame

    rng = np.random.default_rng(1234)
    texture = rng.integers(0, 256, size=(VIDEO_HEIGHT, VIDEO_WIDTH * 2), dtype=np.uint8)
    texture = (texture // 4 + 96).astype(np.uint8)  # keep it mid-grey so the encoder copes
    frames = []
    for i in range(count):
        y = texture[:, (i * 4) % VIDEO_WIDTH : (i * 4) % VIDEO_WIDTH + VIDEO_WIDTH].copy()
        bar = (i * 8) % VIDEO_WIDTH
        y[:, bar : bar + 40] = 235
        u = np.full((VIDEO_HEIGHT // 2, VIDEO_WIDTH // 2), 128 + (i % 60), dtype=np.uint8)
        v = np.full((VIDEO_HEIGHT // 2, VIDEO_WIDTH // 2), 180 - (i % 60), dtype=np.uint8)
        planes = np.concatenate([y, u.reshape(-1, VIDEO_WIDTH), v.reshape(-1, VIDEO_WIDTH)])
        frame = VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = i
        frame.time_base = fractions.Fraction(1, VIDEO_FPS)
        frames.append(frame)
    return frames


def _encode_video() -> tuple[list[bytes], list[int]]:
    import av

    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width = VIDEO_WIDTH
    codec.height = VIDEO_HEIGHT
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.framerate = fractions.Fraction(VIDEO_FPS, 1)
    codec.bit_rate = VIDEO_BITRATE
    codec.gop_size = KEYFRAME_INTERVAL_FRAMES
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(VIDEO_BITRATE),
        "maxrate": str(VIDEO_BITRATE),
        "bufsize": str(VIDEO_BITRATE),
        "undershoot-pct": "95",
        "overshoot-pct": "15",
    }
    frames: list[bytes] = []
    keyframes: list[int] = []
    pictures = _test_pattern_frames(CLIP_FRAMES)
    for i, picture in enumerate(pictures):
        if i % KEYFRAME_INTERVAL_FRAMES == 0:
            picture.pict_type = av.video.frame.PictureType.I
        packets = list(codec.encode(picture))
        if len(packets) != 1:
            raise RuntimeError(f"VP8 encoder returned {len(packets)} packets for frame {i}")
        if packets[0].is_keyframe:
            keyframes.append(i)
        frames.append(bytes(packets[0]))
    if 0 not in keyframes:
        raise RuntimeError("the first frame of the clip is not a keyframe")
    return frames, keyframes


def _encode_audio() -> list[bytes]:
    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = AUDIO_BITRATE
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip", "frame_duration": "20"}
    out: list[bytes] = []
    t = np.arange(AUDIO_FRAME_SAMPLES) / AUDIO_RATE
    for i in range(CLIP_AUDIO_FRAMES + 4):
        tone = 440.0 * (1 + (i // 50) % 4 / 4)
        phase = 2 * np.pi * tone * (t + i * AUDIO_FRAME_SAMPLES / AUDIO_RATE)
        mono = (np.sin(phase) * 8000).astype(np.int16)
        stereo = np.repeat(mono, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        out.extend(bytes(p) for p in codec.encode(frame))
    return out[:CLIP_AUDIO_FRAMES]


def _chunk(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def load_clip(cache: Path | None = None) -> Clip:
    """Return the replay clip, encoding it once and caching it as JSON (base64) under out/."""
    cache = cache or OUT_DIR / "clip-vp8-640x360-opus.json"
    if cache.exists():
        stored = json.loads(cache.read_text())
        video = [base64.b64decode(s) for s in stored["video"]]
        keyframes = [int(i) for i in stored["keyframes"]]
        audio = [base64.b64decode(s) for s in stored["audio"]]
    else:
        logger.info("encoding the replay clip once into %s", cache)
        video, keyframes = _encode_video()
        audio = _encode_audio()
        cache.parent.mkdir(parents=True, exist_ok=True)
        stored = {
            "video": [base64.b64encode(f).decode() for f in video],
            "keyframes": keyframes,
            "audio": [base64.b64encode(a).decode() for a in audio],
        }
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(cache)
    return Clip(
        video=[_chunk(frame, RTP_PAYLOAD_MAX) for frame in video],
        keyframes=keyframes,
        audio=audio,
    )


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
    # No ICE servers: aiortc would otherwise ask a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


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


def _one_byte_extension(ext_id: int, value: bytes) -> bytes:
    """RFC 8285 one-byte header extension block holding one element, padded to 32 bits."""
    element = bytes([(ext_id << 4) | (len(value) - 1)]) + value
    element += b"\x00" * (-len(element) % 4)
    return struct.pack("!HH", 0xBEDE, len(element) // 4) + element


# --------------------------------------------------------------------------------------------
# Producer
# --------------------------------------------------------------------------------------------


@dataclass
class _Stream:
    """One outgoing RTP stream (audio or video) of the producer."""

    ssrc: int
    payload_type: int
    extension: bytes  # header-extension block (mid), or b""
    sequence: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    timestamp: int = field(default_factory=lambda: random.randint(0, 0xFFFFFFFF))
    packets: int = 0
    octets: int = 0

    def header(self, marker: bool) -> bytes:
        first = 0x90 if self.extension else 0x80
        second = (0x80 if marker else 0) | self.payload_type
        head = struct.pack("!BBHI", first, second, self.sequence, self.timestamp)
        self.sequence = (self.sequence + 1) & 0xFFFF
        return head + struct.pack("!I", self.ssrc) + self.extension


class SyntheticProducer:
    """Publishes the pre-encoded clip (audio + video) on one peer connection."""

    def __init__(self, clip: Clip, *, audio: bool = True, video: bool = True) -> None:
        self.clip = clip
        self.pc = new_peer_connection()
        self._kinds = [k for k, on in (("audio", audio), ("video", video)) if on]
        self._streams: dict[str, _Stream] = {}
        self._send_task: asyncio.Task[None] | None = None
        self._keyframe_requested = False
        self.keyframe_requests = 0
        self.send_errors = 0
        self.mids: dict[str, str] = {}

    # -- negotiation ---------------------------------------------------------------------

    async def create_offer(self) -> str:
        for kind in self._kinds:
            self.pc.addTransceiver(SilentTrack(kind), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        for section in parse_media_sections(self.pc.localDescription.sdp):
            if section.mid is not None:
                self.mids[section.kind] = section.mid
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str, *, timeout: float = 20.0) -> None:
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
            extension = _one_byte_extension(mid_id, str(remote.mid).encode()) if mid_id else b""
            self._streams[remote.kind] = _Stream(
                ssrc=mine.ssrcs[0],
                payload_type=remote.payload_type_for(codec),
                extension=extension,
            )
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
            while pos + 4 <= len(data):
                fmt = data[pos] & 0x1F
                ptype = data[pos + 1]
                length = (struct.unpack_from("!H", data, pos + 2)[0] + 1) * 4
                if ptype == RTCP_PSFB and fmt in (RTCP_FMT_PLI, RTCP_FMT_FIR):
                    self._keyframe_requested = True
                    self.keyframe_requests += 1
                pos += length
            await original(data)

        transport._handle_rtcp_data = handle_rtcp_data

    # -- replay --------------------------------------------------------------------------

    @property
    def packets_sent(self) -> int:
        return sum(s.packets for s in self._streams.values())

    def packets_sent_by_kind(self) -> dict[str, int]:
        return {kind: s.packets for kind, s in self._streams.items()}

    async def _send(self, transport: Any, stream: _Stream, packet: bytes) -> None:
        try:
            await transport._send_rtp(packet)
        except ConnectionError:
            self.send_errors += 1
            return
        stream.packets += 1
        stream.octets += len(packet)

    async def _run(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        video = self._streams.get("video")
        audio = self._streams.get("audio")
        frame_index = 0
        audio_index = 0
        picture_id = random.randint(0, 0x7FFF)
        start = loop.time()
        next_video = start
        next_audio = start
        last_keyframe_jump = -1.0
        while True:
            now = loop.time()
            if video is not None and now >= next_video:
                if self._keyframe_requested and now - last_keyframe_jump > 0.5:
                    self._keyframe_requested = False
                    last_keyframe_jump = now
                    if frame_index not in self.clip.keyframes:
                        later = [k for k in self.clip.keyframes if k > frame_index]
                        frame_index = later[0] if later else self.clip.keyframes[0]
                chunks = self.clip.video[frame_index]
                for n, chunk in enumerate(chunks):
                    # VP8 payload descriptor: X, S on the first packet; I with a 15-bit picture id
                    descriptor = struct.pack(
                        "!BBH", 0x90 if n == 0 else 0x80, 0x80, 0x8000 | picture_id
                    )
                    header = video.header(marker=n == len(chunks) - 1)
                    await self._send(transport, video, header + descriptor + chunk)
                video.timestamp = (video.timestamp + VIDEO_CLOCK_STEP) & 0xFFFFFFFF
                picture_id = (picture_id + 1) & 0x7FFF
                frame_index = (frame_index + 1) % len(self.clip.video)
                next_video += 1 / VIDEO_FPS
            if audio is not None and now >= next_audio:
                payload = self.clip.audio[audio_index]
                await self._send(transport, audio, audio.header(marker=False) + payload)
                audio.timestamp = (audio.timestamp + AUDIO_CLOCK_STEP) & 0xFFFFFFFF
                audio_index = (audio_index + 1) % len(self.clip.audio)
                next_audio += AUDIO_FRAME_SAMPLES / AUDIO_RATE
            deadlines = [d for d, s in ((next_video, video), (next_audio, audio)) if s]
            delay = min(deadlines) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

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


class SyntheticConsumer:
    """Answers the server's offers and counts received RTP per SSRC without decoding."""

    def __init__(self) -> None:
        self.pc = new_peer_connection()
        self.packets: dict[int, int] = {}
        self.bytes: dict[int, int] = {}
        self.kinds: dict[int, str] = {}  # SSRC -> kind, from the server's offers
        self.created_at = time.monotonic()
        self.first_packet_at: float | None = None
        self._hooked: set[int] = set()

    async def answer(self, offer_sdp: str, *, timeout: float = 20.0) -> str:
        """Apply a server offer and return the answer SDP; call again on each renegotiation."""
        for section in parse_media_sections(offer_sdp):
            for ssrc in section.ssrcs:
                self.kinds[ssrc] = section.kind
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._hook_rtp(_dtls_transport(self.pc))
        return str(self.pc.localDescription.sdp)

    def _hook_rtp(self, transport: Any) -> None:
        if id(transport) in self._hooked:
            return
        self._hooked.add(id(transport))
        packets = self.packets
        sizes = self.bytes

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            ssrc = int.from_bytes(data[8:12], "big")
            packets[ssrc] = packets.get(ssrc, 0) + 1
            sizes[ssrc] = sizes.get(ssrc, 0) + len(data)
            if self.first_packet_at is None:
                self.first_packet_at = time.monotonic()

        transport._handle_rtp_data = handle_rtp_data

    async def wait_connected(self, timeout: float = 20.0) -> None:
        await _wait_dtls_connected(_dtls_transport(self.pc), timeout)

    @property
    def total_packets(self) -> int:
        return sum(self.packets.values())

    def packets_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ssrc, count in self.packets.items():
            kind = self.kinds.get(ssrc, "unknown")
            out[kind] = out.get(kind, 0) + count
        return out

    async def close(self) -> None:
        await self.pc.close()
