"""The captions worker's place in one room: a participant that receives audio and sends captions.

A :class:`RoomSession` joins the room through ``GET /ws`` like a page does (``docs/protocol.md``),
with the short-lived ``caption`` token from the worker's room list. It answers every
``subscribe-offer``, refusing video (those transceivers answer ``inactive``, so the SFU forwards
none), and turns each audio consumer into a :class:`~townhall.captions.scheduler.Speaker` for the
consumer's participant. Decoded frames go to the scheduler; captions come back through
:meth:`RoomSession._emit` into a :class:`~townhall.captions.outbox.CaptionOutbox` and out as
``caption`` messages.

When the socket drops, the open utterances are closed (their finals wait in the outbox), and the
session joins again, with its ``resume`` secret while the token it joined with is valid. It rejoins
only once the worker's room list has named the room again since the drop (or, while the list
is current, after a pause), so that it never brings back a meeting that ended while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from townhall.captions.audio import to_pcm16k
from townhall.captions.outbox import CaptionOutbox
from townhall.captions.pipeline import Caption
from townhall.captions.scheduler import Pipeline, Scheduler, Speaker

logger = logging.getLogger(__name__)

#: A producer that sends no audio for this long has its utterance closed.
STALL = 1.0
#: After a drop, how long to wait for the room list to name the room again.
RELIST_WAIT = 10.0
#: Close codes that refuse this token; another try needs a fresh one from the room list.
REFUSED = frozenset({4401, 4403, 4404})
#: How long ``close`` waits for open utterances to be captioned and sent (``townhall serve``
#: gives its worker 5 s after SIGTERM).
CLOSE_TIMEOUT = 3.0
#: The same when the room is left while the worker goes on (captions turned off, the meeting
#: over, the server restarting): long enough for the last utterance's recognition on a busy
#: machine, whose final is kept for delivery after that.
LEAVE_TIMEOUT = 20.0


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before reconnection attempt ``attempt`` (0-based): 0.5 s doubling to 5 s, ±20 %."""
    base: float = min(5.0, 0.5 * 2.0 ** min(attempt, 10))
    return float(base * (0.8 + 0.4 * rand()))


class FrameClock:
    """The unix time of a decoded frame's first sample.

    The frame's RTP-derived ``pts`` spaces the frames exactly; the arrival time of the first frame
    anchors them. A jump of more than ``tolerance`` (the producer restarted, a long gap) anchors
    again.
    """

    def __init__(self, tolerance: float = 0.5) -> None:
        self.tolerance = tolerance
        self._origin: float | None = None

    def at(self, frame: AudioFrame, now: float) -> float:
        estimate = now - frame.samples / (frame.sample_rate or 48000)
        if frame.pts is None or frame.time_base is None:
            return estimate
        media = float(frame.pts * frame.time_base)
        if self._origin is None or abs(self._origin + media - estimate) > self.tolerance:
            self._origin = estimate - media
        return self._origin + media


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class RoomSession:
    """One room: join, receive audio, send captions, rejoin after drops, until closed."""

    def __init__(
        self,
        ws_url: str,
        room_id: str,
        token: str,
        *,
        http: aiohttp.ClientSession,
        scheduler: Scheduler,
        pipelines: Callable[[], Pipeline],
        list_is_current: Callable[[], bool] = lambda: True,
        name: str = "Captions",
    ) -> None:
        self.ws_url = ws_url
        self.room_id = room_id
        self.name = name
        self.outbox = CaptionOutbox()
        #: The participant id of the current (or last) join.
        self.participant: str | None = None
        self.meeting: str | None = None
        self.languages: frozenset[str] = frozenset()
        self.joined = asyncio.Event()
        self.joins = 0
        self._http = http
        self._scheduler = scheduler
        self._pipelines = pipelines
        self._list_is_current = list_is_current
        self._token = token
        self._lists = 0  # how many room lists named this room
        self._listed = asyncio.Event()
        self._resume: tuple[str, str] | None = None  # (token joined with, resume secret)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._pc: RTCPeerConnection | None = None
        #: The server's number for ``_pc`` (``connection`` in its offers).
        self._connection: int | None = None
        self._consumers: dict[str, dict[str, Any]] = {}
        self._speakers: dict[str, Speaker] = {}
        #: Speakers gone whose last utterance is still being captioned (its final is to come).
        self._finishing: set[Speaker] = set()
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._sender: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def listed(self, token: str) -> None:
        """The worker's room list names this room again, with a fresh token."""
        self._token = token
        self._lists += 1
        self._listed.set()

    @property
    def connected(self) -> bool:
        return self.joined.is_set() and self._ws is not None and not self._ws.closed

    @property
    def speakers(self) -> list[Speaker]:
        return list(self._speakers.values())

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Leave the room: close open utterances, send what is left (up to ``timeout``)."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._leave(timeout)
        finally:  # even when cancelled: nothing of the session is left running
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._detach()

    async def _leave(self, timeout: float) -> None:
        """Close open utterances, send what is left and say ``leave`` (up to ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        speakers = list(self._speakers.values())
        for speaker in speakers:
            self._scheduler.finish(speaker, retire=True)
        speakers += [s for s in self._finishing if not s.done.is_set()]
        if speakers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*(s.done.wait() for s in speakers))
        while self.connected and len(self.outbox) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await self._send({"type": "leave"})
            # The server closes with 1000 once it has read everything before `leave`. The
            # session task is the socket's only reader: wait for it to see the close.
            task = self._task
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(max(deadline, loop.time() + 2.0)):
                    if task is not None and not task.done():
                        await asyncio.shield(task)
                    else:
                        while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                            pass
            if ws.close_code == 1000:
                self.outbox.confirmed()
            with contextlib.suppress(Exception):
                await ws.close()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            refused: Refused | None = None
            try:
                if await self._session():
                    attempt = 0
            except Refused as exc:
                refused = exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                logger.info("room %s: cannot reach the server: %s", self.room_id,
                            exc.__class__.__name__)
            finally:
                seen = self._lists
                await self._detach()
            if self._closing:
                return
            if refused is not None and self._resume is not None and refused.code == 4401:
                # The token we joined with expired: join afresh with the newest one.
                self._resume = None
                continue
            if refused is not None:
                logger.warning("room %s: refused (%d %s); waiting for a fresh token",
                               self.room_id, refused.code, refused.reason)
            await asyncio.sleep(backoff(attempt))
            attempt += 1
            await self._wait_for_list(seen, fresh_token_needed=refused is not None)

    async def _wait_for_list(self, seen: int, fresh_token_needed: bool) -> None:
        """Until a room list after the drop names this room (or, while it is current, a pause)."""
        while self._lists == seen:
            self._listed.clear()
            try:
                async with asyncio.timeout(RELIST_WAIT):
                    await self._listed.wait()
            except TimeoutError:
                if not fresh_token_needed and self._list_is_current():
                    return

    # -- one connection -------------------------------------------------------------------------

    async def _session(self) -> bool:
        """Join and serve until the socket closes; True if it joined."""
        token, resume = self._resume or (self._token, None)
        ws = await self._http.ws_connect(self.ws_url, heartbeat=20, max_msg_size=0)
        self._ws = ws
        joined = False
        join: dict[str, Any] = {"type": "join", "token": token, "name": self.name}
        if resume is not None:
            join["resume"] = resume
        await self._send(join)
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                message = json.loads(msg.data)
            except ValueError:
                logger.warning("room %s: ignoring a message that is not JSON", self.room_id)
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "joined":
                joined = True
                self._joined(token, message)
            try:
                await self._dispatch(message)
            except ConnectionResetError:
                break  # the socket closed under the reply (the server stopping): reconnect
            except Exception:
                # Most likely an offer aiortc cannot take: start again on a fresh connection.
                logger.exception("room %s: cannot handle %s", self.room_id,
                                 str(message.get("type"))[:40])
                await ws.close()
                break
        code = ws.close_code or 1006
        reason = msg.extra if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra else ""
        logger.info("room %s: socket closed (%d%s)", self.room_id, code,
                    f" {reason}" if reason else "")
        if code in REFUSED:
            raise Refused(code, str(reason))
        return joined

    def _joined(self, token: str, message: dict[str, Any]) -> None:
        participant = message.get("participant") or {}
        self.participant = str(participant.get("id", ""))
        self.meeting = str((message.get("meeting") or {}).get("id", ""))
        secret = message.get("resume")
        self._resume = (token, secret) if isinstance(secret, str) else None
        self.joins += 1
        self.joined.set()
        logger.info("room %s: joined as %s (%s)", self.room_id, self.participant,
                    "resumed" if message.get("resumed") else "new place")
        assert self._ws is not None
        self._sender = asyncio.get_running_loop().create_task(self._send_captions(self._ws))

    async def _detach(self) -> None:
        """The socket is gone: close the media, keep finals, stop sending."""
        self.joined.clear()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        pulls = list(self._pulls.values())
        self._pulls.clear()
        for task in pulls:
            task.cancel()
        for task in pulls:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._consumers.clear()
        pc, self._pc = self._pc, None
        if pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pc.close())  # see sfu.transport.Transport.close
        self.outbox.disconnected()

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionResetError("not connected")
        async with self._send_lock:
            await ws.send_str(json.dumps(message))

    async def _send_captions(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await self.outbox.wait()
            message = self.outbox.peek()
            if message is None:
                continue
            try:
                await self._send(message)
            except Exception:
                return  # the reading side notices the close; the message stays queued
            self.outbox.sent(message)

    # -- messages -------------------------------------------------------------------------------

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe-offer":
            await self._answer(message)
        elif kind == "caption-languages":
            languages = message.get("languages")
            if isinstance(languages, list):
                self.languages = frozenset(x for x in languages if isinstance(x, str))
        elif kind == "participant-left":
            self._finish_participant(str(message.get("participant")), retire=True)
        elif kind == "participant-updated":
            participant = message.get("participant") or {}
            if isinstance(participant, dict) and participant.get("audio") is False:
                self._finish_participant(str(participant.get("id")), retire=False)
        elif kind == "error":
            logger.info("room %s: the server refused %s: %s %s", self.room_id,
                        str(message.get("request"))[:40], message.get("code"),
                        str(message.get("message"))[:200])

    def _finish_participant(self, participant: str, retire: bool) -> None:
        for speaker in self._speakers.values():
            if speaker.participant == participant:
                self._scheduler.finish(speaker, retire=retire)

    async def _answer(self, offer: dict[str, Any]) -> None:
        consumers = {
            c["mid"]: c for c in offer.get("consumers") or []
            if isinstance(c, dict) and isinstance(c.get("mid"), str)
            and isinstance(c.get("participant"), str)
        }
        connection = offer.get("connection")
        if self._pc is not None and connection != self._connection:
            # The server lost the receiving connection and offers everything on a new one.
            for task in self._pulls.values():
                task.cancel()
            self._pulls.clear()
            old, self._pc = self._pc, None
            await old.close()
        self._connection = connection if isinstance(connection, int) else None
        for mid in set(self._pulls) - set(consumers):
            self._pulls.pop(mid).cancel()
        self._consumers = consumers
        if self._pc is None:
            # max-bundle: with aiortc's default policy, the answer to a first offer holding two
            # audio sections leaves the second on a transport that bundling stops.
            self._pc = RTCPeerConnection(RTCConfiguration(
                iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
            self._pc.on("track", self._track)
        pc = self._pc
        await pc.setRemoteDescription(RTCSessionDescription(str(offer.get("sdp")), "offer"))
        for transceiver in pc.getTransceivers():
            if consumers.get(transceiver.mid or "", {}).get("kind") != "audio":
                transceiver.direction = "inactive"
        await pc.setLocalDescription(await pc.createAnswer())
        answer: dict[str, Any] = {"type": "subscribe-answer", "sdp": pc.localDescription.sdp}
        if self._connection is not None:
            answer["connection"] = self._connection
        await self._send(answer)

    def _track(self, track: Any) -> None:
        if track.kind != "audio" or self._pc is None:
            return
        mid = next((t.mid for t in self._pc.getTransceivers() if t.receiver.track is track), None)
        consumer = self._consumers.get(mid or "")
        if mid is None or consumer is None or mid in self._pulls:
            return
        speaker = Speaker(consumer["participant"], str(consumer.get("producer", mid)),
                          self._pipelines(), self._emit, lambda: self.languages)
        self._pulls[mid] = asyncio.get_running_loop().create_task(self._pull(mid, track, speaker))

    async def _pull(self, mid: str, track: Any, speaker: Speaker) -> None:
        """Decoded frames of one consumer into its speaker, until the track ends."""
        self._speakers[mid] = speaker
        clock = FrameClock()
        logger.info("room %s: captioning %s", self.room_id, speaker.participant)
        try:
            while True:
                try:
                    async with asyncio.timeout(STALL):
                        frame = await track.recv()
                except TimeoutError:
                    self._scheduler.finish(speaker)
                    continue
                self._scheduler.feed(speaker, to_pcm16k(frame), clock.at(frame, time.time()))
        except MediaStreamError:
            pass
        finally:
            self._scheduler.finish(speaker, retire=True)
            if self._speakers.get(mid) is speaker:
                del self._speakers[mid]
            if not speaker.done.is_set():  # ``close`` waits for its final
                self._finishing = {s for s in self._finishing if not s.done.is_set()}
                self._finishing.add(speaker)

    def _emit(self, speaker: Speaker, caption: Caption) -> None:
        self.outbox.post({
            "type": "caption",
            "participant": speaker.participant,
            "utterance": caption.utterance,
            "final": caption.final,
            "language": caption.language,
            "text": caption.text,
            "start": caption.start,
            "end": caption.end,
            "translations": dict(caption.translations),
        }, self.connected)
