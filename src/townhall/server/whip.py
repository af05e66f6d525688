"""WHIP (RFC 9725) and WHEP: standard tools publish into and play out of a meeting over HTTP.

``POST /whip/{room}`` takes an SDP offer of audio and video and makes its sender a participant of
the meeting; ``POST /whep/{room}/{participant}`` and ``POST /whep/{room}`` (the current speaker)
take a receive-only offer and answer with that participant's microphone and camera. Each POST
creates a **resource** at the ``Location`` it returns; ``DELETE`` on it ends the session. All ICE
candidates are in the answer (aiortc gathers them first), so ``PATCH`` (trickle ICE, ICE restart)
is answered 405. See ``docs/api.md``, "WHIP and WHEP".

A resource is the participant's :class:`~townhall.rooms.participant.Outbox`: messages meant for a
page are dropped, and ``close()`` (the meeting closed, a host removed the participant) ends it. A
task watches each resource every :data:`WATCH_INTERVAL` seconds: it ends the resource when its
connection fails or never comes up, and moves a WHEP viewer's consumers to the producers it should
show now (the speaker changed, the participant published again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from townhall import beat, errors
from townhall.rooms.participant import Participant
from townhall.server.api import grant_of
from townhall.server.keys import SERVICES
from townhall.server.wire import http_error
from townhall.sfu.router import Router
from townhall.sfu.transport import Codec, Slot, Transport, parse_sdp

if TYPE_CHECKING:
    from townhall.auth.tokens import Grant
    from townhall.rooms.room import LiveRoom
    from townhall.server.app import Services

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

SDP = "application/sdp"
MAX_NAME = 64
#: On the routers' beat (``townhall.beat``): a multiple of their tick adds no wake-up.
WATCH_INTERVAL = 0.2
#: A resource whose connection is not up this long after the answer is ended.
CONNECT_TIMEOUT = 30.0
#: Codecs a WHEP answer uses when the participant shown does not publish that kind yet.
DEFAULT_CODECS = {
    "audio": Codec("audio/opus", 48000, 0, 2),
    "video": Codec("video/VP8", 90000, 0),
}
#: The source shown on each kind of a WHEP answer's slots.
SOURCE_OF_KIND = {"audio": "microphone", "video": "camera"}

_COLLECTION_METHODS = "OPTIONS, POST"
_RESOURCE_METHODS = "OPTIONS, DELETE"
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Accept-Patch, Link",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http(handler: Handler) -> Handler:
    """Typed errors become ``{"error": ...}`` responses with CORS headers (and a Bearer
    challenge for 401); successful responses get the CORS headers too."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except errors.TownhallError as exc:
            # The pattern, not the path: a resource's id is its capability.
            logger.info("%s %s refused: %s", request.method,
                        request.match_info.route.resource.canonical
                        if request.match_info.route.resource else "?", exc)
            response = http_error(exc)
            if isinstance(exc, errors.Unauthorized):
                response.headers["WWW-Authenticate"] = 'Bearer realm="townhall"'
        response.headers.update(_CORS)
        return response

    return wrapped


def _status(status: int, code: str, message: str, allow: str = "") -> web.Response:
    """An error with a status that has no typed error (405, 415), in the same shape."""
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    if allow:
        response.headers["Allow"] = allow
    return response


# -- resources ---------------------------------------------------------------------------------


class Resource:
    """One WHIP or WHEP session: a participant whose media was negotiated over HTTP."""

    kind = ""

    def __init__(self, room: LiveRoom) -> None:
        self.id = secrets.token_urlsafe(18)
        self.room = room
        self.participant: Participant | None = None
        self.ended = False
        self._task: asyncio.Task[None] | None = None

    @property
    def location(self) -> str:
        return f"/{self.kind}/{self.room.id}/resource/{self.id}"

    # Outbox: what the room sends a page is not for an HTTP client.
    async def send(self, message: dict[str, Any]) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        """The room let the participant go (meeting closed, removed by a host)."""
        await self.end(leave=False)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def end(self, leave: bool = True) -> None:
        """End the session; idempotent. With ``leave``, the participant leaves the meeting."""
        if self.ended:
            return
        self.ended = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        participant = self.participant
        if leave and participant is not None and \
                self.room.participants.get(participant.id) is participant:
            await self.room.leave(participant)
        await self._release()
        logger.info("room %s: %s session of %s ended", self.room.id, self.kind,
                    participant.id if participant is not None else "-")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        try:
            while True:
                await beat.sleep_to_next(WATCH_INTERVAL)
                participant = self.participant
                if participant is None or \
                        self.room.participants.get(participant.id) is not participant:
                    break
                transport = self._transport()
                if transport is None or transport.pc.connectionState in ("failed", "closed"):
                    logger.info("room %s: %s connection of %s lost", self.room.id, self.kind,
                                participant.id)
                    break
                if not transport.ready and loop.time() > deadline:
                    logger.info("room %s: %s connection of %s never came up", self.room.id,
                                self.kind, participant.id)
                    break
                if not self._follow():
                    break
        except Exception:
            logger.exception("room %s: %s watch failed", self.room.id, self.kind)
        await self.end()

    def _transport(self) -> Transport | None:
        raise NotImplementedError

    def _follow(self) -> bool:
        """Periodic work; False ends the session."""
        return True

    async def _release(self) -> None:
        pass


class WhipResource(Resource):
    """A participant publishing over WHIP; its transport belongs to the room like a page's."""

    kind = "whip"

    def _transport(self) -> Transport | None:
        transport = self.participant.publish_transport if self.participant else None
        return transport if isinstance(transport, Transport) else None


class WhepResource(Resource):
    """A participant receiving over WHEP: one transport, answered by the server, sending the
    microphone and camera of one participant (``target``) or of the current speaker."""

    kind = "whep"

    def __init__(self, room: LiveRoom, router: Router, target: str | None) -> None:
        super().__init__(room)
        self.router = router
        self.target = target
        #: Whom the viewer sees now (the target, or the speaker chosen last).
        self.showing: str | None = target
        self.transport: Transport | None = None
        self.slots: dict[str, Slot] = {}
        self.payload_types: dict[str, int] = {}
        self.consumers: dict[str, Any] = {}

    async def negotiate(self, offer: str) -> str:
        shown = self._shown()
        codecs = dict(DEFAULT_CODECS)
        if shown is not None:
            for kind, source in SOURCE_OF_KIND.items():
                producer = shown.producers.get(source)
                if producer is not None:
                    codecs[kind] = producer.codec
        assert self.participant is not None
        self.transport = self.router.create_transport(
            self.participant.id, f"{self.room.id}/{self.participant.id}/whep")
        self.transport.answer_as_dtls_server()
        answer, self.slots = await self.transport.answer_sending(offer, codecs)
        self.payload_types = {kind: slot.payload_type for kind, slot in self.slots.items()
                              if slot.payload_type is not None}
        self._follow()
        return answer

    def _transport(self) -> Transport | None:
        return self.transport

    def _shown(self) -> Participant | None:
        """The participant to show now; remembers the choice in ``showing``."""
        room = self.room
        if self.target is not None:
            return room.participants.get(self.target)
        me = self.participant

        def shows_camera(p: Participant) -> bool:
            producer = p.producers.get("camera")
            slot = self.slots.get("video")
            return p is not me and producer is not None and (
                slot is None or slot.codec.matches(producer.codec))

        current = room.participants.get(self.showing or "")
        candidates = [p for p in room.participants.values() if shows_camera(p)]
        speaking = [p for p in candidates if p.id in room.speaking]
        dominant = room.participants.get(room.active_speaker or "")
        if dominant is not None and dominant in candidates:
            chosen: Participant | None = dominant  # smoothed: see sfu/speaker.py
        elif current is not None and current in speaking:
            chosen = current
        elif speaking:
            chosen = speaking[0]
        elif current is not None and current in candidates:
            chosen = current
        else:
            chosen = candidates[0] if candidates else None
        if chosen is not None and chosen.id != self.showing:
            logger.debug("room %s: whep %s now shows %s", room.id,
                         me.id if me else "-", chosen.id)
            self.showing = chosen.id
        return chosen

    def _follow(self) -> bool:
        if self.transport is None:
            return True
        if self.router.owner_of(self.transport) is None:
            return False  # the transport closed
        shown = self._shown()
        if shown is None and self.target is not None:
            return False  # the participant this viewer asked for has left
        for kind, slot in self.slots.items():
            producer = shown.producers.get(SOURCE_OF_KIND[kind]) if shown is not None else None
            if producer is not None and (producer.closed or not slot.codec.matches(
                    producer.codec)):
                producer = None
            old = self.consumers.get(kind)
            if old is not None and not old.closed and old.producer is producer:
                continue
            if old is not None and not old.closed:
                self.router.close_consumer(old)
            if producer is None:
                continue
            self.transport.resume_outgoing(slot, self.payload_types[kind])
            self.consumers[kind] = self.router.consume_on(self.transport, slot, producer,
                                                          follows=old)
        return True

    async def _release(self) -> None:
        for consumer in self.consumers.values():
            self.router.close_consumer(consumer)
        self.consumers.clear()
        if self.transport is not None:
            await self.router.close_transport(self.transport)


# -- requests ----------------------------------------------------------------------------------


def _services(request: web.Request) -> Services:
    services: Services = request.app[SERVICES]
    return services


def _grant(request: web.Request, permission: str) -> Grant:
    """The token's grant for the room in the path: 401 without a valid token, 403 for another
    room or a role without ``permission``."""
    grant = grant_of(request)
    if grant.room_id != request.match_info["room"]:
        raise errors.Forbidden("token is for another room")
    if permission not in grant.permissions:
        raise errors.Forbidden(f"role {grant.role!r} lacks the {permission!r} permission")
    return grant


async def _offer(request: web.Request) -> str | web.Response:
    """The SDP offer in the body, or a 415 response."""
    if request.content_type != SDP:
        return _status(415, "unsupported-media-type", f"the body must be {SDP}")
    limit = _services(request).config.max_message_size
    if request.content_length is not None and request.content_length > limit:
        raise errors.MessageTooLarge("offer too large")
    try:
        body = await request.read()
        text = body.decode("utf-8")
    except (web.HTTPRequestEntityTooLarge, UnicodeDecodeError):
        raise errors.BadRequest("the offer must be UTF-8 SDP within the size limit") from None
    if not text.strip().startswith("v=0"):
        raise errors.BadRequest("malformed SDP: it must start with v=0")
    return text


def _name(request: web.Request, default: str) -> str:
    name = request.query.get("name", "").strip()
    if len(name) > MAX_NAME:
        raise errors.BadRequest(f"name must be at most {MAX_NAME} characters")
    return name or default


def _created(resource: Resource, answer: str) -> web.Response:
    return web.Response(status=201, text=answer, content_type=SDP, headers={
        "Location": resource.location,
    })


def _published_tracks(offer: str) -> dict[str, str]:
    """mid → source for the first audio (microphone) and first video (camera) section sent."""
    tracks: dict[str, str] = {}
    for media in parse_sdp(offer).media:
        source = SOURCE_OF_KIND.get(media.kind)
        if source is None or source in tracks.values() or \
                media.direction not in ("sendonly", "sendrecv"):
            continue
        if not media.rtp.muxId:
            raise errors.BadRequest("malformed SDP: every media section needs a=mid")
        tracks[media.rtp.muxId] = source
    if not tracks:
        raise errors.BadRequest("the offer sends no audio or video")
    return tracks


@routes.post("/whip/{room}")
@_http
async def whip_post(request: web.Request) -> web.StreamResponse:
    grant = _grant(request, "publish")
    offer = await _offer(request)
    if isinstance(offer, web.Response):
        return offer
    tracks = _published_tracks(offer)
    room = await _services(request).registry.get(grant.room_id)
    resource = WhipResource(room)
    participant, _ = await room.join(grant, _name(request, "WHIP publisher"), None, resource)
    resource.participant = participant
    try:
        # The publish transport is made here rather than by the room, to answer as DTLS server.
        transport = room.router.create_transport(participant.id,
                                                 f"{room.id}/{participant.id}/whip")
        transport.answer_as_dtls_server()
        participant.publish_transport = transport
        answer = await room.publish(participant, offer, tracks)
    except BaseException:
        await resource.end()
        raise
    resource.start()
    logger.info("room %s: participant %s publishes over WHIP", room.id, participant.id)
    return _created(resource, answer)


async def _whep(request: web.Request, target: str | None) -> web.StreamResponse:
    grant = _grant(request, "join")
    offer = await _offer(request)
    if isinstance(offer, web.Response):
        return offer
    if not any(m.kind in SOURCE_OF_KIND and m.direction in ("recvonly", "sendrecv")
               for m in parse_sdp(offer).media):
        raise errors.BadRequest("the offer receives no audio or video")
    services = _services(request)
    if target is None:
        room = await services.registry.get(grant.room_id)
    else:
        await services.store.get_room(grant.room_id)  # 404 for an unknown room
        found = services.registry.find(grant.room_id)
        if found is None or target not in found.participants:
            raise errors.NotFound("unknown participant")
        room = found
    router = room.router
    if not isinstance(router, Router):
        raise errors.Conflict("this room's media router cannot serve WHEP")
    resource = WhepResource(room, router, target)
    participant, _ = await room.join(grant, _name(request, "WHEP viewer"), None, resource)
    resource.participant = participant
    try:
        answer = await resource.negotiate(offer)
    except BaseException:
        await resource.end()
        raise
    resource.start()
    logger.info("room %s: participant %s receives %s over WHEP", room.id, participant.id,
                target or "the current speaker")
    return _created(resource, answer)


@routes.post("/whep/{room}")
@_http
async def whep_speaker_post(request: web.Request) -> web.StreamResponse:
    return await _whep(request, None)


@routes.post("/whep/{room}/{participant}")
@_http
async def whep_participant_post(request: web.Request) -> web.StreamResponse:
    return await _whep(request, request.match_info["participant"])


def _resource(request: web.Request, kind: str) -> Resource:
    room = _services(request).registry.find(request.match_info["room"])
    wanted = request.match_info["id"]
    if room is not None:
        for participant in room.participants.values():
            outbox = participant.outbox
            if isinstance(outbox, Resource) and outbox.kind == kind and not outbox.ended \
                    and secrets.compare_digest(outbox.id.encode(), wanted.encode()):
                return outbox
    raise errors.NotFound(f"unknown {kind.upper()} resource")


async def _delete(request: web.Request, kind: str) -> web.StreamResponse:
    _grant(request, "join")
    resource = _resource(request, kind)
    await resource.end()
    return web.Response(status=200)


@routes.delete("/whip/{room}/resource/{id}")
@_http
async def whip_delete(request: web.Request) -> web.StreamResponse:
    return await _delete(request, "whip")


@routes.delete("/whep/{room}/resource/{id}")
@_http
async def whep_delete(request: web.Request) -> web.StreamResponse:
    return await _delete(request, "whep")


@routes.patch("/whip/{room}/resource/{id}")
@routes.patch("/whep/{room}/resource/{id}")
@_http
async def patch(request: web.Request) -> web.StreamResponse:
    return _status(405, "method-not-allowed",
                   "trickle ICE and ICE restarts are not supported: all candidates are in the "
                   "answer", allow=_RESOURCE_METHODS)


def _options(methods: str) -> Handler:
    async def options(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers={
            "Allow": methods,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "86400",
        })

    return _http(options)


routes.route("OPTIONS", "/whip/{room}")(_options(_COLLECTION_METHODS))
routes.route("OPTIONS", "/whep/{room}")(_options(_COLLECTION_METHODS))
routes.route("OPTIONS", "/whep/{room}/{participant}")(_options(_COLLECTION_METHODS))
routes.route("OPTIONS", "/whip/{room}/resource/{id}")(_options(_RESOURCE_METHODS))
routes.route("OPTIONS", "/whep/{room}/resource/{id}")(_options(_RESOURCE_METHODS))
