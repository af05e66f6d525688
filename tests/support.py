"""A meeting participant made of aiortc and aiohttp, speaking the page's protocol.

Used by integration tests: it joins through the real signalling, publishes a moving test pattern
and a tone, answers the server's offers, and decodes what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av import AudioFrame, VideoFrame

from townhall.auth import tokens
from townhall.config import Config
from townhall.server import app as server_app
from townhall.server.api import invite_url

VIDEO_RATE = 90000
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def make_config(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        http_host="127.0.0.1",
        http_port=0,
        media_addresses=("127.0.0.1",),
        media_udp_port=0,
        media_tcp_port=0,
        reconnect_grace=3.0,
    )


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
    """A loud 440 Hz tone in 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(960) + self.count * 960) / 48000
        samples = (np.sin(2 * math.pi * 440 * t) * 12000).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        return frame


class Attendee:
    """One participant in a meeting, driven from a test."""

    def __init__(self, ws_url: str, token: str, name: str) -> None:
        self.ws_url, self.token, self.name = ws_url, token, name
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.joined: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
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
                       where: Any = None) -> dict[str, Any]:
        for message in self.messages:
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
                      video_codec: str | None = None) -> dict[str, Any]:
        self.publish_pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sources = []
        if audio:
            sources.append((pc.addTransceiver(ToneTrack(), direction="sendonly"), "microphone"))
        if video:
            transceiver = pc.addTransceiver(PatternTrack(), direction="sendonly")
            if video_codec is not None:
                transceiver.setCodecPreferences([
                    c for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType == video_codec])
            sources.append((transceiver, "camera"))
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "publish", "sdp": pc.localDescription.sdp,
                         "tracks": [{"mid": t.mid, "source": s} for t, s in sources]})
        answer = await self.wait_for("publish-answer")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return answer

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self.subscribe_pc is None:
            self.subscribe_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.subscribe_pc.on("track", self._track)
        for consumer in offer["consumers"]:
            self.consumers[consumer["mid"]] = consumer
        pc = self.subscribe_pc
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if self.rtp_filter is not None:
            self.rtp_filter(pc)
        sdp = pc.localDescription.sdp
        if not self.estimates_bandwidth:
            sdp = "".join(line for line in sdp.splitlines(keepends=True)
                          if ABS_SEND_TIME_URI not in line)
        await self.send({"type": "subscribe-answer", "sdp": sdp})

    def _track(self, track: Any) -> None:
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
