"""A meeting participant made of aiortc and aiohttp, speaking the page's protocol.

Used by integration tests: it joins through the real signalling, publishes a moving test pattern
and a tone, answers the server's offers, and decodes what it receives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import itertools
import json
import math
import os
import re
import time
import wave
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    pack_remb_fci,
)
from av import AudioFrame, VideoFrame

from townhall.auth import tokens
from townhall.config import Config
from townhall.server import app as server_app
from townhall.server.api import invite_url
from townhall.sfu.transport import Transport
from townhall.sfu.twcc import build_feedback as build_feedback

VIDEO_RATE = 90000
AUDIO_RATE = 48000
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

#: Debian's Chromium and the flags the browser tests run it with (``tests/browser``).
CHROMIUM = os.environ.get("TOWNHALL_CHROMIUM", "/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Clock:
    """A clock the test moves by hand (``clock.now``), for code that takes a ``clock`` callable."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pc_config() -> RTCConfiguration:
    """aiortc's configuration for a participant: no ICE servers, and max-bundle.

    With aiortc's default "balanced" policy, an answer to a first offer holding two sections of
    one kind (audio, video, audio, video) leaves the second video section on a transport that
    the BUNDLE step stops (its answer shows port 9) and its receiver never gets packets.
    """
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def make_config(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        http_host="127.0.0.1",
        http_port=0,
        media_addresses=("127.0.0.1",),
        media_udp_port=0,
        media_tcp_port=0,
        reconnect_grace=3.0,
        captions_worker=False,
    )


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[RunningServer]:
    """A townhall server started on ``config`` (its HTTP port chosen by the system), stopped
    at the end."""
    running = await server_app.start(config)
    running.services.config = running.services.config.replace(http_port=running.port)
    try:
        yield RunningServer(running)
    finally:
        await running.stop()


@dataclass
class RunningServer:
    running: server_app.Running

    @property
    def base_url(self) -> str:
        return self.running.base_url

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/ws"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/?admin={self.admin_token}"

    @property
    def admin_token(self) -> str:
        return self.token("*", "admin")

    def token(self, room_id: str, role: str, ttl: int = 3600) -> str:
        return tokens.sign(self.running.services.secret, room_id, role, ttl, time.time())

    async def create_room(self, name: str) -> str:
        record = await self.running.services.store.create_room(name)
        return record.id

    async def invite(self, room_id: str, role: str) -> str:
        return invite_url(self.base_url, room_id, self.token(room_id, role))


class PatternTrack(MediaStreamTrack):  # type: ignore[misc]
    """Video whose frames carry their number in the first row's brightness."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        self.count += 1
        delay = self._start + self.count / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = np.full((self.height, self.width, 3), 16, np.uint8)
        x = (self.count * 4) % self.width
        image[:, x:x + 16, :] = 235
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = self.count * (VIDEO_RATE // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        return frame


class ToneTrack(MediaStreamTrack):  # type: ignore[misc]
    """A loud 440 Hz tone in 20 ms frames, or digital silence while ``loud`` is false (its
    audio level extension then says 127, silence)."""

    kind = "audio"

    def __init__(self, loud: bool = True) -> None:
        super().__init__()
        self.count = 0
        self.loud = loud
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(960) + self.count * 960) / 48000
        samples = (np.sin(2 * math.pi * 440 * t) * (12000 if self.loud else 0)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        return frame


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether an RTP payload of VP8 (RFC 7741) starts a keyframe."""
    if not payload:
        return False
    descriptor, offset = payload[0], 1
    if descriptor & 0x80 and len(payload) > 1:
        extended, offset = payload[1], 2
        if extended & 0x80 and len(payload) > offset:
            offset += 2 if payload[offset] & 0x80 else 1
        if extended & 0x40:
            offset += 1
        if extended & 0x30:
            offset += 1
    start = bool(descriptor & 0x10) and descriptor & 0x0F == 0
    return start and len(payload) > offset and not payload[offset] & 0x01


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """The samples (int16, mono) and rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM is read")
        samples = np.frombuffer(f.readframes(f.getnframes()), np.int16)
        channels, rate = f.getnchannels(), f.getframerate()
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples, rate


@dataclass
class Spoken:
    """One clip a :class:`SpeechTrack` plays: when its first and last samples went out."""

    samples: np.ndarray
    started: float | None = None
    ended: float | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / AUDIO_RATE


class SpeechTrack(MediaStreamTrack):  # type: ignore[misc]
    """A microphone that plays queued speech in real time, and silence in between.

    ``say`` queues a clip and returns its :class:`Spoken`, whose ``started``/``ended`` (unix
    seconds) are set as the clip's first and last 20 ms frames are handed to the encoder.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._start: float | None = None
        self._queue: collections.deque[Spoken] = collections.deque()
        self._position = 0
        self.finished = asyncio.Event()

    def say(self, path: Path, pause: float = 0.0) -> Spoken:
        """Queue ``path`` (after ``pause`` seconds more of silence)."""
        samples, rate = read_wav(path)
        if rate != AUDIO_RATE:
            positions = np.arange(0, len(samples) * AUDIO_RATE // rate) * rate / AUDIO_RATE
            samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)
        if pause > 0:
            self._queue.append(Spoken(np.zeros(int(pause * AUDIO_RATE), np.int16)))
        spoken = Spoken(samples)
        self._queue.append(spoken)
        self.finished.clear()
        return spoken

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        out = np.zeros(960, np.int16)
        filled = 0
        while filled < 960 and self._queue:
            spoken = self._queue[0]
            if self._position == 0:
                spoken.started = now + filled / AUDIO_RATE
            chunk = spoken.samples[self._position:self._position + 960 - filled]
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            self._position += len(chunk)
            if self._position >= len(spoken.samples):
                spoken.ended = now + filled / AUDIO_RATE
                self._queue.popleft()
                self._position = 0
                if not self._queue:
                    self.finished.set()
        frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.count * 960
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.count += 1
        return frame


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (letters, digits and apostrophes kept)."""
    return re.findall(r"[\w']+", text.lower().replace("ё", "е"))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


class PacketCounts:
    """What a counting attendee received, per (participant id, source), without decoding."""

    def __init__(self) -> None:
        self.packets: dict[tuple[str, str], int] = defaultdict(int)
        #: arrival times (time.monotonic) of the packets that start a VP8 keyframe
        self.keyframes: dict[tuple[str, str], list[float]] = defaultdict(list)

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self.packets)


#: Request ids for ``publish`` (the server echoes them in ``publish-answer``).
_request_ids = itertools.count(1)


class Attendee:
    """One participant in a meeting, driven from a test.

    With ``count_only`` nothing is decoded: RTP packets are counted per sender and source as
    they reach the receivers (``counts``), which keeps large test meetings light.
    """

    def __init__(self, ws_url: str, token: str, name: str, count_only: bool = False) -> None:
        self.ws_url, self.token, self.name = ws_url, token, name
        self.count_only = count_only
        self.counts = PacketCounts()
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.joined: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        #: unix time each of ``messages`` arrived
        self.received_at: list[float] = []
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        #: The server's number for ``subscribe_pc`` (``connection`` in its offers).
        self.subscribe_connection: int | None = None
        self.consumers: dict[str, dict[str, Any]] = {}
        #: (participant id, source) → decoded frames
        self.frames: dict[tuple[str, str], int] = defaultdict(int)
        self.frame_sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._waiters: list[tuple[Any, asyncio.Future[dict[str, Any]]]] = []
        self.closed: tuple[int | None, str] | None = None
        self.rtp_filter: Any = None
        #: Whether this participant's receiving side estimates bandwidth (REMB). Off by
        #: default: aiortc estimates from arrival times taken on the test's own busy event
        #: loop, which measure the test process more than the network.
        self.estimates_bandwidth = False
        #: Called with (participant id, source) and each decoded video frame.
        self.on_video: Any = None

    async def join(self, resume: str | None = None) -> dict[str, Any]:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url)
        message: dict[str, Any] = {"type": "join", "token": self.token, "name": self.name}
        if resume:
            message["resume"] = resume
        await self.ws.send_json(message)
        self._tasks.append(asyncio.ensure_future(self._read()))
        self.joined = await self.wait_for("joined")
        return self.joined

    @property
    def id(self) -> str:
        return str(self.joined["participant"]["id"])

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_json(message)

    async def wait_for(self, kind: str, timeout: float = 10.0,
                       where: Any = None, since: int = 0) -> dict[str, Any]:
        """The first message of ``kind`` (matching ``where``) from the ``since``-th on, waiting
        for it if none has come yet."""
        for message in self.messages[since:]:
            if message.get("type") == kind and (where is None or where(message)):
                return message
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(((kind, where), future))
        return await asyncio.wait_for(future, timeout)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            self.messages.append(message)
            self.received_at.append(time.time())
            if message["type"] == "subscribe-offer":
                await self._answer(message)
            for (kind, where), future in list(self._waiters):
                if message["type"] == kind and (where is None or where(message)) \
                        and not future.done():
                    future.set_result(message)
                    self._waiters.remove(((kind, where), future))
        self.closed = (self.ws.close_code, "")
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(ConnectionError(f"closed with {self.ws.close_code}"))

    async def publish(self, video: bool = True, audio: bool = True,
                      video_codec: str | None = None,
                      audio_track: MediaStreamTrack | None = None,
                      pattern: PatternTrack | None = None,
                      restart: bool = False) -> dict[str, Any]:
        """Publish a tone (or ``audio_track``) and a test pattern (or ``pattern``); with
        ``restart``, on a new connection after ``publish-restart``, as a page does."""
        if restart and self.publish_pc is not None:
            await self.publish_pc.close()
        self.publish_pc = pc = RTCPeerConnection(pc_config())
        sources = []
        if audio:
            track = audio_track if audio_track is not None else ToneTrack()
            sources.append((pc.addTransceiver(track, direction="sendonly"), "microphone"))
        if video:
            transceiver = pc.addTransceiver(pattern or PatternTrack(), direction="sendonly")
            if video_codec is not None:
                transceiver.setCodecPreferences([
                    c for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType == video_codec])
            sources.append((transceiver, "camera"))
        await pc.setLocalDescription(await pc.createOffer())
        request_id = next(_request_ids)
        message: dict[str, Any] = {
            "type": "publish", "id": request_id, "sdp": pc.localDescription.sdp,
            "tracks": [{"mid": t.mid, "source": s} for t, s in sources]}
        if restart:
            message["restart"] = True
        await self.send(message)
        # the answer to this offer, not an earlier one's, as a page tells them apart
        answer = await self.wait_for("publish-answer", where=lambda m: m.get("id") == request_id)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return answer

    async def _answer(self, offer: dict[str, Any]) -> None:
        connection = offer.get("connection")
        if self.subscribe_pc is not None and connection != self.subscribe_connection:
            # the server lost the receiving connection and offers a new one, as a page sees
            old, self.subscribe_pc = self.subscribe_pc, None
            self.consumers.clear()
            await old.close()
        self.subscribe_connection = connection
        if self.subscribe_pc is None:
            self.subscribe_pc = RTCPeerConnection(pc_config())
            self.subscribe_pc.on("track", self._track)
        for consumer in offer["consumers"]:
            self.consumers[consumer["mid"]] = consumer
        pc = self.subscribe_pc
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if self.count_only:
            self._count(pc)
        if self.rtp_filter is not None:
            self.rtp_filter(pc)
        sdp = pc.localDescription.sdp
        if not self.estimates_bandwidth:
            sdp = "".join(line for line in sdp.splitlines(keepends=True)
                          if ABS_SEND_TIME_URI not in line)
        answer: dict[str, Any] = {"type": "subscribe-answer", "sdp": sdp}
        if connection is not None:
            answer["connection"] = connection
        await self.send(answer)

    def _count(self, pc: RTCPeerConnection) -> None:
        """Count what reaches each receiver instead of decoding it."""
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            if getattr(receiver, "_test_counting", False):
                continue
            receiver._test_counting = True
            mid = transceiver.mid

            async def count(packet: Any, arrival_time_ms: int, mid: str | None = mid) -> None:
                consumer = self.consumers.get(mid or "", {})
                key = (consumer.get("participant", "?"), consumer.get("source", "?"))
                self.counts.packets[key] += 1
                if consumer.get("kind") == "video" and vp8_keyframe_start(packet.payload):
                    self.counts.keyframes[key].append(time.monotonic())

            receiver._handle_rtp_packet = count

    def _track(self, track: Any) -> None:
        if self.count_only:
            return
        mid = next((t.mid for t in self.subscribe_pc.getTransceivers()  # type: ignore[union-attr]
                    if t.receiver.track is track), None)
        self._tasks.append(asyncio.ensure_future(self._pull(track, mid)))

    async def _pull(self, track: Any, mid: str | None) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                consumer = self.consumers.get(mid or "", {})
                key = (consumer.get("participant", "?"), consumer.get("source", "?"))
                self.frames[key] += 1
                if isinstance(frame, VideoFrame):
                    self.frame_sizes[key] = (frame.width, frame.height)
                    if self.on_video is not None:
                        self.on_video(key, frame)

    async def wait_frames(self, key: tuple[str, str], count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.frames[key] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.frames[key]} of {count} frames "
                                     f"from {key} within {timeout} s; have {dict(self.frames)}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"


class _SilentTrack(MediaStreamTrack):  # type: ignore[misc]
    kind = "video"

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()


@dataclass
class _SimulcastLayer:
    rid: str
    width: int
    height: int
    bitrate: int
    ssrc: int
    encoder: Vp8Encoder
    sequence: int
    timestamp_origin: int
    keyframe_wanted: bool = True
    sent: dict[int, bytes] | None = None
    keyframes: int = 0


class SimulcastPublisher:
    """Publishes a camera the way a browser does with simulcast: three VP8 encodings (rids
    ``q``, ``h``, ``f``) on one video section, each layer an SSRC the SDP does not list,
    identified by the MID and RID header extensions.

    aiortc has no simulcast sender, so this negotiates with ``a=rid``/``a=simulcast`` lines
    added to aiortc's offer, then encodes each layer with aiortc's VP8 encoder and sends the
    packets itself on the negotiated DTLS transport (aiortc internals, in test code only). It
    answers PLIs (a keyframe on that layer) and NACKs (from its own cache).
    """

    LAYERS = (("q", 160, 90, 120_000), ("h", 320, 180, 350_000), ("f", 640, 360, 1_000_000))

    def __init__(self, attendee: Attendee, fps: int = 15) -> None:
        self.attendee = attendee
        self.fps = fps
        self.pc: RTCPeerConnection | None = None
        self.layers: list[_SimulcastLayer] = []
        self.sending = {rid: True for rid, *_ in self.LAYERS}
        self._task: asyncio.Task[None] | None = None
        self._dtls: Any = None
        self._extensions = HeaderExtensionsMap()
        self._mid = ""
        self._vp8 = 0

    async def publish(self) -> dict[str, Any]:
        self.pc = pc = RTCPeerConnection(pc_config())
        transceiver = pc.addTransceiver(_SilentTrack(), direction="sendonly")
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                         if c.mimeType == "video/VP8"])
        await pc.setLocalDescription(await pc.createOffer())
        offer = self._simulcast_offer(pc.localDescription.sdp)
        self._mid = transceiver.mid
        await self.attendee.send({"type": "publish", "sdp": offer,
                                  "tracks": [{"mid": transceiver.mid, "source": "camera"}]})
        answer = await self.attendee.wait_for("publish-answer")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        self._vp8 = next(int(line.split()[0][9:]) for line in answer["sdp"].splitlines()
                         if line.startswith("a=rtpmap:") and "VP8/90000" in line)
        self._extensions.configure(RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI),
            RTCRtpHeaderExtensionParameters(id=10, uri=RID_URI),
        ]))
        rng = np.random.default_rng()
        for rid, width, height, bitrate in self.LAYERS:
            encoder = Vp8Encoder()
            encoder.target_bitrate = bitrate
            self.layers.append(_SimulcastLayer(
                rid, width, height, bitrate, int(rng.integers(1, 2**31)), encoder,
                int(rng.integers(0, 65536)), int(rng.integers(0, 2**32)), sent={}))
        self._dtls = transceiver.sender.transport
        self._dtls._handle_rtcp_data = self._rtcp_received  # type: ignore[method-assign]
        self._task = asyncio.ensure_future(self._run())
        return answer

    @staticmethod
    def _simulcast_offer(sdp: str) -> str:
        lines = []
        for line in sdp.splitlines():
            if line.startswith(("a=ssrc", "a=extmap")):
                continue  # no SSRCs: layers are found by rid; our own extension ids below
            lines.append(line)
            if line.startswith("a=mid:"):
                lines += [f"a=extmap:1 {MID_URI}", f"a=extmap:10 {RID_URI}",
                          "a=rid:q send", "a=rid:h send", "a=rid:f send",
                          "a=simulcast:send q;h;f"]
        return "\r\n".join(lines) + "\r\n"

    async def _connected(self) -> None:
        for _ in range(500):
            if self._dtls is not None and self._dtls.state == "connected" and \
                    self._dtls._tx_srtp is not None:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the simulcast publisher never connected")

    async def _run(self) -> None:
        await self._connected()
        start = time.monotonic()
        count = 0
        rng = np.random.default_rng(1)
        while True:
            count += 1
            delay = start + count / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # A moving bar over a little noise: the encoders have detail to spend bits on, and
            # keyframes stay a sensible size.
            image = rng.integers(0, 24, (360, 640, 3), dtype=np.uint8)
            x = (count * 8) % 640
            image[:, x:x + 32, :] = 235
            full = VideoFrame.from_ndarray(image, format="bgr24")
            pts = int(count * VIDEO_RATE / self.fps)
            for layer in self.layers:
                if not self.sending[layer.rid]:
                    continue
                frame = full.reformat(width=layer.width, height=layer.height)
                frame.pts = pts
                frame.time_base = fractions.Fraction(1, VIDEO_RATE)
                keyframe = layer.keyframe_wanted
                layer.keyframe_wanted = False
                payloads, timestamp = await asyncio.to_thread(
                    layer.encoder.encode, frame, keyframe)
                if keyframe:
                    layer.keyframes += 1
                for n, payload in enumerate(payloads):
                    await self._send(layer, payload, timestamp, n == len(payloads) - 1)

    async def _send(self, layer: _SimulcastLayer, payload: bytes, timestamp: int,
                    marker: bool) -> None:
        packet = RtpPacket(payload_type=self._payload_type(), sequence_number=layer.sequence,
                           timestamp=(layer.timestamp_origin + timestamp) & 0xFFFFFFFF,
                           ssrc=layer.ssrc, marker=int(marker))
        packet.payload = payload
        packet.extensions.mid = self._mid
        packet.extensions.rtp_stream_id = layer.rid
        data = packet.serialize(self._extensions)
        assert layer.sent is not None
        layer.sent[layer.sequence] = data
        layer.sent.pop((layer.sequence - 512) & 0xFFFF, None)
        layer.sequence = (layer.sequence + 1) & 0xFFFF
        await self._dtls._send_rtp(data)

    def _payload_type(self) -> int:
        return self._vp8

    async def _rtcp_received(self, data: bytes) -> None:
        by_ssrc = {layer.ssrc: layer for layer in self.layers}
        for packet in RtcpPacket.parse(data):
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                layer = by_ssrc.get(packet.media_ssrc)
                if layer is not None:
                    layer.keyframe_wanted = True
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                layer = by_ssrc.get(packet.media_ssrc)
                if layer is not None and layer.sent is not None:
                    for sequence in packet.lost:
                        again = layer.sent.get(sequence)
                        if again is not None:
                            await self._dtls._send_rtp(again)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.pc is not None:
            await self.pc.close()


async def send_remb(attendee: Attendee, bitrate: int) -> None:
    """Send, from ``attendee``'s receiving transport, a REMB saying ``bitrate`` bit/s reach it
    (the test controls the bandwidth estimate; aiortc internals, test code only)."""
    assert attendee.subscribe_pc is not None
    dtls = attendee.subscribe_pc.getTransceivers()[0].receiver.transport
    packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=0x5EED, media_ssrc=0,
                            fci=pack_remb_fci(bitrate, [0x5EED]))
    await dtls._send_rtp(bytes(packet))


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for ``condition``; fails with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def require_native_fanout() -> None:
    """Skip (fail on CI, where ``pip install`` builds it) when the native fan-out is not built."""
    from townhall.sfu import producer

    if producer.fanout is None:
        skip_or_fail("the native fan-out is not built "
                     "(pip install -e ., or python -m townhall.sfu.native)")


def skip_or_fail(reason: str) -> NoReturn:
    """A test that needs what this machine lacks: skipped with the reason printed, failed on
    CI (where everything a test needs is installed)."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


class NoMedia:
    """A ``MediaHandler`` that ignores everything: for transports that are only negotiated."""

    def rtp_received(self, transport: Transport, data: bytes) -> None: ...

    def rtcp_received(self, transport: Transport, data: bytes) -> None: ...

    def transport_ready(self, transport: Transport) -> None: ...

    def transport_closed(self, transport: Transport) -> None: ...


