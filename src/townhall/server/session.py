"""One participant's WebSocket: join, then one handler per message type (``docs/protocol.md``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from townhall import errors
from townhall.auth import tokens
from townhall.auth.permissions import CAPTION
from townhall.rooms.captions import Caption, parse_language
from townhall.rooms.participant import Participant
from townhall.rooms.room import LiveRoom
from townhall.server.wire import close_for, error_message

if TYPE_CHECKING:
    from townhall.server.app import Services

from townhall.server.keys import SERVICES

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
MAX_NAME = 64
MAX_LAYOUT_ENTRIES = 256
MAX_VIDEO_SIZE = 16384


class WebSocketOutbox:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])


def _text(message: dict[str, Any], name: str, limit: int, *, strip: bool = True) -> str:
    value = message.get(name)
    if not isinstance(value, str):
        raise errors.BadRequest(f"{name} must be a string")
    if strip:
        value = value.strip()
    if not value or len(value) > limit:
        raise errors.BadRequest(f"{name} must be 1 to {limit} characters")
    return value


def _flag(message: dict[str, Any], name: str) -> bool:
    value = message.get(name)
    if not isinstance(value, bool):
        raise errors.BadRequest(f"{name} must be true or false")
    return value


#: The largest request ``id``: what a page's JavaScript counts exactly.
MAX_REQUEST_ID = 2**53 - 1


def _request_id(message: dict[str, Any]) -> int | None:
    """The ``id`` a request carries for its reply and its ``error`` to echo, if any."""
    value = message.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 0 <= value <= MAX_REQUEST_ID:
        raise errors.BadRequest(f"id must be a whole number from 0 to {MAX_REQUEST_ID}")
    return value


async def receive_message(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    """The next message, or None when the socket closed; malformed input raises."""
    msg = await ws.receive()
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    if msg.type == WSMsgType.ERROR:
        # aiohttp has already closed the socket (1009 for an oversized message).
        logger.info("websocket error: %s", msg.data)
        return None
    if msg.type != WSMsgType.TEXT:
        raise errors.BadRequest("messages must be JSON text")
    try:
        message = json.loads(msg.data)
    except ValueError:
        raise errors.BadRequest("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise errors.BadRequest("message has no type")
    return message


class Session:
    def __init__(self, services: Services, ws: web.WebSocketResponse) -> None:
        self.services = services
        self.ws = ws
        self.outbox = WebSocketOutbox(ws)
        self.room: LiveRoom | None = None
        self.participant: Participant | None = None
        self.left = False
        self._handlers: dict[str, Callable[[LiveRoom, Participant, dict[str, Any]],
                                           Awaitable[None]]] = {
            "publish": self._publish,
            "publish-lost": self._publish_lost,
            "subscribe-answer": self._subscribe_answer,
            "media": self._media,
            "layout": self._layout,
            "chat": self._chat,
            "hand": self._hand,
            "mute": self._mute,
            "remove": self._remove,
            "lock": self._lock,
            "leave": self._leave,
            "ping": self._ping,
            **self._caption_handlers(),
            **self._receiving_handlers(),
        }

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self._receive(), JOIN_TIMEOUT)
        except TimeoutError:
            await self.outbox.close(4408, "join timeout")
            return
        except errors.TownhallError as exc:
            await self.outbox.close(*close_for(exc))
            return
        if first is None:
            return
        try:
            await self._join(first)
        except errors.TownhallError as exc:
            logger.info("join refused: %s", exc)
            await self.outbox.close(*close_for(exc))
            return
        while not self.ws.closed:
            try:
                message = await self._receive()
            except errors.TownhallError as exc:
                await self.outbox.close(*close_for(exc))
                return
            if message is None:
                return
            await self._dispatch(message)

    async def _receive(self) -> dict[str, Any] | None:
        return await receive_message(self.ws)

    async def _join(self, message: dict[str, Any]) -> None:
        if message["type"] != "join":
            raise errors.BadRequest("the first message must be join")
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise errors.Unauthorized("token missing")
        grant = tokens.verify(self.services.secret, token, time.time())
        if "join" not in grant.permissions:
            raise errors.Forbidden(f"role {grant.role!r} cannot join a meeting")
        name = _text(message, "name", MAX_NAME)
        resume = message.get("resume")
        if resume is not None and not isinstance(resume, str):
            raise errors.BadRequest("resume must be a string")
        # The captions worker joins meetings that are going on; it never starts one.
        room = await self.services.registry.get(
            grant.room_id, open_meeting=CAPTION not in grant.permissions)
        participant, resumed = await room.join(grant, name, resume, self.outbox)
        self.room, self.participant = room, participant
        await room.welcome(participant, resumed)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        room, participant = self.room, self.participant
        assert room is not None and participant is not None
        handler = self._handlers.get(kind)
        request_id = None
        try:
            request_id = _request_id(message)
            if handler is None:
                raise errors.UnknownMessage(f"unknown message type: {kind[:40]!r}")
            await handler(room, participant, message)
        except errors.TownhallError as exc:
            logger.debug("request %s failed: %s", kind[:40], exc)
            await self.outbox.send(error_message(exc, kind[:40], request_id))

    async def close(self) -> None:
        """Always runs when the socket ends, however it ended."""
        if self.room is not None and self.participant is not None and not self.left \
                and self.participant.outbox is self.outbox:
            await self.room.disconnected(self.participant)

    # -- handlers, one per message type ----------------------------------------------------------

    async def _publish(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        sdp = _text(message, "sdp", self.services.config.max_message_size, strip=False)
        tracks = message.get("tracks")
        if not isinstance(tracks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("mid"), str)
            and isinstance(t.get("source"), str) for t in tracks
        ):
            raise errors.BadRequest("tracks must be a list of {mid, source}")
        restart = "restart" in message and _flag(message, "restart")
        answer = await room.publish(p, sdp, {t["mid"]: t["source"] for t in tracks}, restart)
        reply: dict[str, Any] = {"type": "publish-answer", "sdp": answer}
        if restart:
            reply["restart"] = True
        if "id" in message:  # checked in _dispatch
            reply["id"] = message["id"]
        await self.outbox.send(reply)

    async def _publish_lost(self, room: LiveRoom, p: Participant,
                            message: dict[str, Any]) -> None:
        await room.publishing_lost(p)

    async def _subscribe_answer(self, room: LiveRoom, p: Participant,
                                message: dict[str, Any]) -> None:
        sdp = _text(message, "sdp", self.services.config.max_message_size, strip=False)
        connection = message.get("connection")
        if connection is not None and (type(connection) is not int or connection < 1):
            raise errors.BadRequest("connection must be a positive whole number")
        await room.subscribe_answer(p, sdp, connection)

    async def _media(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.set_media(p, _text(message, "source", 20), _flag(message, "enabled"))

    async def _layout(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        consumers = message.get("consumers")
        if not isinstance(consumers, dict) or len(consumers) > MAX_LAYOUT_ENTRIES:
            raise errors.BadRequest(
                f"consumers must be an object of at most {MAX_LAYOUT_ENTRIES} entries")
        sizes: dict[str, tuple[int, int]] = {}
        for mid, size in consumers.items():
            if not isinstance(size, dict):
                raise errors.BadRequest("each consumer needs {width, height}")
            width, height = size.get("width"), size.get("height")
            if not (isinstance(width, int) and isinstance(height, int)) or \
                    isinstance(width, bool) or isinstance(height, bool) or \
                    not (0 <= width <= MAX_VIDEO_SIZE and 0 <= height <= MAX_VIDEO_SIZE):
                raise errors.BadRequest(
                    f"width and height must be whole numbers from 0 to {MAX_VIDEO_SIZE}")
            sizes[str(mid)[:16]] = (width, height)
        room.layout(p, sizes)

    async def _chat(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.chat(p, _text(message, "text", self.services.config.max_chat_length))

    async def _hand(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.hand(p, _flag(message, "raised"))

    async def _mute(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.mute(p, _text(message, "participant", 64))

    async def _remove(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.remove(p, _text(message, "participant", 64))

    async def _lock(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.lock(p, _flag(message, "locked"))

    async def _leave(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        self.left = True
        await room.leave(p)
        await self.outbox.close(1000, "left")

    async def _ping(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await self.outbox.send({"type": "pong"})

    # -- captions --------------------------------------------------------------------------------

    def _caption_handlers(self) -> dict[str, Callable[[LiveRoom, Participant, dict[str, Any]],
                                                      Awaitable[None]]]:
        return {
            "captions": self._captions,
            "caption-language": self._caption_language,
            "caption": self._caption,
        }

    async def _captions(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        await room.captions.set_enabled(p, _flag(message, "enabled"))

    async def _caption_language(self, room: LiveRoom, p: Participant,
                                message: dict[str, Any]) -> None:
        await room.captions.set_language(p, parse_language(message))

    async def _caption(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        if not p.can(CAPTION):
            raise errors.Forbidden("only the captions worker can send captions")
        await room.captions.publish(p, Caption.parse(message))

    # -- receiving preferences: audio-only, pins, last-N ------------------------------------------

    def _receiving_handlers(self) -> dict[str, Callable[[LiveRoom, Participant, dict[str, Any]],
                                                        Awaitable[None]]]:
        return {
            "receive": self._receive_preferences,
            "receive-lost": self._receive_lost,
            "pin": self._pin,
            "last-n": self._last_n,
        }

    async def _receive_preferences(self, room: LiveRoom, p: Participant,
                                   message: dict[str, Any]) -> None:
        await room.set_receive(p, _flag(message, "video"))

    async def _receive_lost(self, room: LiveRoom, p: Participant,
                            message: dict[str, Any]) -> None:
        connection = message.get("connection")
        if type(connection) is not int or connection < 1:
            raise errors.BadRequest("connection must be a positive whole number")
        await room.receiving_lost(p, connection)

    async def _pin(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        pinned = message.get("participants")
        if not isinstance(pinned, list) or not all(
                isinstance(i, str) and 0 < len(i) <= 64 for i in pinned):
            raise errors.BadRequest("participants must be a list of participant ids")
        await room.pin(p, pinned)

    async def _last_n(self, room: LiveRoom, p: Participant, message: dict[str, Any]) -> None:
        n = message.get("n")
        if not isinstance(n, int) or isinstance(n, bool):
            raise errors.BadRequest("n must be a whole number")
        await room.set_last_n(p, n)


async def handle(request: web.Request) -> web.WebSocketResponse:
    services: Services = request.app[SERVICES]
    ws = web.WebSocketResponse(max_msg_size=services.config.max_message_size, heartbeat=20)
    await ws.prepare(request)
    session = Session(services, ws)
    try:
        await session.run()
    except Exception:
        logger.exception("session failed")
        await session.outbox.close(1011, "internal error")
    finally:
        await session.close()
    return ws
