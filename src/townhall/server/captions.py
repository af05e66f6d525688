"""The captions worker's control socket, ``GET /ws/captions`` (``docs/protocol.md``).

The worker opens it with ``hello`` and a worker token (role ``caption``, room ``*``). The server
answers with ``rooms``: every live room with captions on, each with a fresh short-lived
participant token (role ``caption``) to join it through ``/ws``, and a renewed worker token for the
next time the worker connects. It sends ``rooms`` again whenever that list changes (a room's
captions turned on or off, a meeting starting or ending) and every :data:`RENEW_EVERY` seconds,
so the tokens the worker holds never run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from townhall import errors
from townhall.auth import tokens
from townhall.auth.permissions import CAPTION
from townhall.server.keys import SERVICES
from townhall.server.session import JOIN_TIMEOUT, WebSocketOutbox, receive_message
from townhall.server.wire import close_for, error_message

if TYPE_CHECKING:
    from townhall.server.app import Services

logger = logging.getLogger(__name__)

#: Lifetime of the worker token handed out in every ``rooms``, in seconds.
WORKER_TOKEN_TTL = 3600
#: Lifetime of a room token: long enough to join, and to resume within.
ROOM_TOKEN_TTL = 600
#: ``rooms`` is sent at least this often, in seconds, with fresh tokens.
RENEW_EVERY = 300.0


def worker_token(secret: bytes, ttl: int, now: float) -> str:
    """A token for a captions worker: role ``caption`` for every room."""
    return tokens.sign(secret, tokens.ANY_ROOM, "caption", ttl, now)


def rooms_message(services: Services, now: float) -> dict[str, Any]:
    """Every live room with captions on, each with a token to join it, and a new worker token."""
    rooms = [
        {"id": room.id, "name": room.name,
         "token": tokens.sign(services.secret, room.id, "caption", ROOM_TOKEN_TTL, now)}
        for room in services.registry.rooms if room.captions.enabled
    ]  # fmt: skip
    return {"type": "rooms", "rooms": rooms,
            "token": worker_token(services.secret, WORKER_TOKEN_TTL, now)}


class WorkerControl:
    """One worker's control socket."""

    def __init__(self, services: Services, ws: web.WebSocketResponse) -> None:
        self.services = services
        self.ws = ws
        self.outbox = WebSocketOutbox(ws)

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(receive_message(self.ws), JOIN_TIMEOUT)
            if first is None:
                return
            self._hello(first)
        except TimeoutError:
            await self.outbox.close(4408, "hello timeout")
            return
        except errors.TownhallError as exc:
            logger.info("captions worker refused: %s", exc)
            await self.outbox.close(*close_for(exc))
            return
        logger.info("captions worker connected")
        changed = self.services.registry.watch()
        reader = asyncio.ensure_future(self._read())
        try:
            while not reader.done():
                changed.clear()
                await self.outbox.send(rooms_message(self.services, time.time()))
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait({reader, waiter}, timeout=RENEW_EVERY,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            self.services.registry.unwatch(changed)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            logger.info("captions worker disconnected")

    def _hello(self, message: dict[str, Any]) -> None:
        if message["type"] != "hello":
            raise errors.BadRequest("the first message must be hello")
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise errors.Unauthorized("token missing")
        grant = tokens.verify(self.services.secret, token, time.time())
        if CAPTION not in grant.permissions or grant.room_id != tokens.ANY_ROOM:
            raise errors.Forbidden("a captions worker token is needed")

    async def _read(self) -> None:
        """Answers ``ping``; returns when the socket closes or sends something malformed."""
        while not self.ws.closed:
            try:
                message = await receive_message(self.ws)
            except errors.TownhallError as exc:
                await self.outbox.close(*close_for(exc))
                return
            if message is None:
                return
            kind = message["type"]
            if kind == "ping":
                await self.outbox.send({"type": "pong"})
            else:
                error = errors.UnknownMessage(f"unknown message type: {kind[:40]!r}")
                await self.outbox.send(error_message(error, kind[:40]))


async def handle(request: web.Request) -> web.WebSocketResponse:
    services: Services = request.app[SERVICES]
    ws = web.WebSocketResponse(max_msg_size=services.config.max_message_size, heartbeat=20)
    await ws.prepare(request)
    control = WorkerControl(services, ws)
    try:
        await control.run()
    except Exception:
        logger.exception("captions control socket failed")
        await control.outbox.close(1011, "internal error")
    return ws
