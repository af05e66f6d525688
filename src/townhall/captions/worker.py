"""The captions worker: a separate process that captions every room with captions on.

    townhall captions --server URL --token T [--asr-model PATH|NAME]
                      [--translation-models DIR] [--threads N] [--speech-languages en,ru,uk]

It loads the models first (a missing model fails here, before anything is joined), then opens the
control socket ``GET /ws/captions``, says ``hello`` with its worker token, and follows the ``rooms``
lists the server sends: a :class:`~townhall.captions.session.RoomSession` per listed room, closed
when the room leaves the list. Each list also renews the worker token, which the next connection
uses. Recognition runs on the :class:`~townhall.captions.scheduler.Scheduler`'s threads, never on
the event loop.

The worker reconnects after any drop (0.5 s doubling to 5 s); only a refused worker token
(close 4401/4403 on the control socket) stops it, with the server's reason. Finals of a room that
leaves the list while unreachable are kept and sent if it comes back (for a restarting server).
Logs name rooms and participants by id; they never contain tokens or caption text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from townhall.captions.outbox import CaptionOutbox
from townhall.captions.scheduler import Pipeline, Scheduler
from townhall.captions.session import CLOSE_TIMEOUT, LEAVE_TIMEOUT, RoomSession, backoff
from townhall.errors import BadRequest, Unauthorized
from townhall.languages import is_language

logger = logging.getLogger(__name__)

#: Close codes of the control socket that refuse the worker token.
TOKEN_REFUSED = frozenset({4401, 4403})
#: How long finals of a room that left the list are kept for its return.
ORPHAN_KEEP = 600.0


def socket_urls(server: str) -> tuple[str, str]:
    """The control and room socket URLs of a server's base URL (``http[s]://host:port``)."""
    parts = urlsplit(server.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise BadRequest(f"--server must be an http:// or https:// URL, not {server!r}")
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    base = parts.path.rstrip("/")
    return (urlunsplit((scheme, parts.netloc, f"{base}/ws/captions", "", "")),
            urlunsplit((scheme, parts.netloc, f"{base}/ws", "", "")))


class Worker:
    """Follows the server's room list and keeps a :class:`RoomSession` in each listed room."""

    def __init__(
        self,
        server: str,
        token: str,
        pipelines: Callable[[], Pipeline],
        *,
        scheduler: Scheduler | None = None,
        name: str = "Captions",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control_url, self.room_url = socket_urls(server)
        self.token = token
        self.name = name
        self.scheduler = scheduler or Scheduler()
        self.sessions: dict[str, RoomSession] = {}
        #: A room list has arrived on the current control connection.
        self.listed = asyncio.Event()
        self._pipelines = pipelines
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._orphans: dict[str, tuple[CaptionOutbox, float]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def undelivered(self) -> int:
        """Final captions not yet known to be stored (queued, or sent just before a drop)."""
        return sum(s.outbox.unconfirmed for s in self.sessions.values()) + sum(
            outbox.unconfirmed for outbox, _ in self._orphans.values())

    async def run(self) -> None:
        """Until cancelled; :class:`~townhall.errors.Unauthorized` if the token is refused."""
        self._http = aiohttp.ClientSession()
        attempt = 0
        try:
            while True:
                try:
                    if await self._control():
                        attempt = 0
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    logger.info("cannot reach the server: %s", exc.__class__.__name__)
                finally:
                    self.listed.clear()
                delay = backoff(attempt)
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            await self.close()

    async def close(self) -> None:
        """Leave every room (closing open utterances), then stop the threads. Idempotent."""
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), self._stop_leaving(),
                             return_exceptions=True)
        await self.scheduler.close(timeout=1.0)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _stop_leaving(self) -> None:
        """Rooms being left get the time a closing room gets, not the longer leaving time."""
        leaving = set(self._closing)
        if not leaving:
            return
        _, late = await asyncio.wait(leaving, timeout=CLOSE_TIMEOUT)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- the control socket ---------------------------------------------------------------------

    async def _control(self) -> bool:
        """One control connection; True if a room list arrived on it."""
        assert self._http is not None
        listed = False
        async with self._http.ws_connect(self.control_url, heartbeat=20, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "hello", "token": self.token}))
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    logger.warning("ignoring a control message that is not JSON")
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "rooms":
                    listed = True
                    self._rooms(message)
                elif message.get("type") == "error":
                    logger.warning("the server refused %s: %s %s",
                                   str(message.get("request"))[:40], message.get("code"),
                                   str(message.get("message"))[:200])
            code = ws.close_code or 1006
            reason = str(msg.extra or "") if msg.type == aiohttp.WSMsgType.CLOSE else ""
        logger.info("control socket closed (%d%s)", code, f" {reason}" if reason else "")
        if code in TOKEN_REFUSED:
            raise Unauthorized(f"the server refused the captions worker token ({code} {reason})")
        if code == 4400:
            raise BadRequest(f"the server does not understand this worker ({code} {reason})")
        return listed

    def _rooms(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if isinstance(token, str) and token:
            self.token = token
        rooms = {
            r["id"]: r["token"] for r in message.get("rooms") or []
            if isinstance(r, dict) and isinstance(r.get("id"), str)
            and isinstance(r.get("token"), str)
        }
        for room_id, room_token in rooms.items():
            session = self.sessions.get(room_id)
            if session is not None:
                session.listed(room_token)
                continue
            session = RoomSession(
                self.room_url, room_id, room_token, http=self._http_session(),
                scheduler=self.scheduler, pipelines=self._pipelines,
                list_is_current=self.listed.is_set, name=self.name)
            orphan = self._orphans.pop(room_id, None)
            if orphan is not None:
                session.outbox.take_over(orphan[0])
            self.sessions[room_id] = session
            logger.info("room %s: captions on, joining", room_id)
            session.start()
        for room_id in set(self.sessions) - set(rooms):
            logger.info("room %s: no longer listed, leaving", room_id)
            self._leave(self.sessions.pop(room_id))
        self.listed.set()

    def _http_session(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    def _leave(self, session: RoomSession) -> None:
        async def leave() -> None:
            await session.close(LEAVE_TIMEOUT)
            if session.outbox.finals:
                successor = self.sessions.get(session.room_id)
                if successor is not None:  # the room came back while this one was leaving
                    successor.outbox.take_over(session.outbox)
                else:
                    # Could not be delivered (the server is restarting?): keep them a while.
                    self._orphans[session.room_id] = (session.outbox, self._clock())
            now = self._clock()
            for room_id, (_, since) in list(self._orphans.items()):
                if now - since > ORPHAN_KEEP:
                    logger.warning("room %s: %d final captions could not be delivered",
                                   room_id, self._orphans.pop(room_id)[0].finals)

        task = asyncio.get_running_loop().create_task(leave())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


# -- the process -----------------------------------------------------------------------------


def run(server: str, token: str, asr_model: str, translation_models: Path | None = None,
        threads: int = 0, log_level: str = "INFO",
        speech_languages: frozenset[str] | None = None) -> None:
    """``townhall captions``: load the models, then caption until SIGINT or SIGTERM.

    A missing or broken model raises :class:`~townhall.errors.CaptionsError` here, before the
    server is contacted. ``speech_languages`` limits language detection to those languages.
    """
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    socket_urls(server)  # a bad URL fails before the models load
    if not token:
        raise Unauthorized("no worker token: pass --token (townhall captions-token prints one)")
    from townhall.captions.pipeline import Engine, EngineOptions, SpeakerPipeline

    options = EngineOptions(speech_languages=speech_languages) if speech_languages else None
    engine = Engine.load(asr_model, translation_models, threads, options=options)
    try:
        asyncio.run(_main(Worker(server, token, lambda: SpeakerPipeline(engine))))
    finally:
        engine.close()


def parse_languages(text: str) -> frozenset[str]:
    """``"en,ru,uk"`` → the set of codes; :class:`~townhall.errors.BadRequest` for a bad one."""
    codes = frozenset(c.strip().lower() for c in text.split(",") if c.strip())
    unknown = sorted(c for c in codes if not is_language(c))
    if unknown or not codes:
        raise BadRequest(f"--speech-languages takes ISO 639-1 codes like en,ru,uk, not {text!r}")
    return codes


async def _main(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(worker.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    logger.info("stopped")
