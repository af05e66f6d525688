"""The HTTP API: rooms, invite links, meeting records (``docs/api.md``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from townhall import errors
from townhall.auth import tokens
from townhall.auth.permissions import MEETING_ROLES, permissions_for
from townhall.languages import is_language
from townhall.minutes import transcript
from townhall.server.wire import http_error

if TYPE_CHECKING:
    from townhall.server.app import Services

from townhall.server.keys import SERVICES

routes = web.RouteTableDef()
MAX_BODY = 16 * 1024


def _services(request: web.Request) -> Services:
    services: Services = request.app[SERVICES]
    return services


def grant_of(request: web.Request) -> tokens.Grant:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("Authorization: Bearer <token> required")
    return tokens.verify(_services(request).secret, token.strip(), time.time())


def require(grant: tokens.Grant, permission: str, room_id: str | None = None) -> None:
    if "admin" in grant.permissions:
        return
    if room_id is not None and grant.room_id != room_id:
        raise errors.Forbidden("token is for another room")
    if permission not in grant.permissions:
        raise errors.Forbidden(f"role {grant.role!r} lacks the {permission!r} permission")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise errors.MessageTooLarge("request body too large")
    try:
        body = await request.json()
    except ValueError:
        raise errors.BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("body must be a JSON object")
    return body


def _room(record: Any) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "locked": record.locked,
            "captions": record.captions, "created_at": record.created_at}


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except errors.TownhallError as exc:
        return http_error(exc)


@routes.post("/api/rooms")
async def create_room(request: web.Request) -> web.Response:
    require(grant_of(request), "admin")
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise errors.BadRequest("name must be a string")
    record = await _services(request).store.create_room(name)
    return web.json_response(_room(record), status=201)


@routes.get("/api/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    require(grant_of(request), "admin")
    return web.json_response([_room(r) for r in await _services(request).store.list_rooms()])


@routes.get("/api/rooms/{room}")
async def get_room(request: web.Request) -> web.Response:
    room_id = request.match_info["room"]
    require(grant_of(request), "join", room_id)
    record = await _services(request).store.get_room(room_id)
    live = _services(request).registry.find(room_id)
    body = _room(record)
    body["participants"] = len(live.participants) if live is not None else 0
    return web.json_response(body)


@routes.patch("/api/rooms/{room}")
async def change_room(request: web.Request) -> web.Response:
    """Change a room's settings: ``{"captions": bool}``."""
    services = _services(request)
    room_id = request.match_info["room"]
    require(grant_of(request), "moderate", room_id)
    body = await _body(request)
    unknown = set(body) - {"captions"}
    if unknown:
        raise errors.BadRequest(f"cannot change {', '.join(sorted(unknown))}")
    record = await services.store.get_room(room_id)
    if "captions" in body:
        captions = body["captions"]
        if not isinstance(captions, bool):
            raise errors.BadRequest("captions must be true or false")
        record = await services.store.set_captions(room_id, captions)
        live = services.registry.find(room_id)
        if live is not None:
            await live.captions.apply(captions)
    return web.json_response(_room(record))


@routes.delete("/api/rooms/{room}")
async def delete_room(request: web.Request) -> web.Response:
    require(grant_of(request), "admin")
    room_id = request.match_info["room"]
    live = _services(request).registry.find(room_id)
    if live is not None:
        await live.close()
    await _services(request).store.delete_room(room_id)
    return web.Response(status=204)


@routes.post("/api/rooms/{room}/invites")
async def create_invite(request: web.Request) -> web.Response:
    services = _services(request)
    room_id = request.match_info["room"]
    grant = grant_of(request)
    require(grant, "invite", room_id)
    body = await _body(request)
    role = body.get("role")
    if role not in MEETING_ROLES:
        raise errors.BadRequest(f"role must be one of {', '.join(MEETING_ROLES)}")
    if "admin" not in grant.permissions and not permissions_for(role) <= grant.permissions | {
            "caption"}:
        raise errors.Forbidden(f"role {grant.role!r} cannot invite a {role}")
    ttl = body.get("ttl", services.config.invite_ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 60 <= ttl <= 365 * 24 * 3600:
        raise errors.BadRequest("ttl must be whole seconds from 60 to one year")
    record = await services.store.get_room(room_id)
    now = time.time()
    token = tokens.sign(services.secret, record.id, role, ttl, now)
    return web.json_response({
        "url": invite_url(_base_url(request), record.id, token),
        "token": token, "role": role, "expires_at": int(now) + ttl,
    }, status=201)


@routes.get("/api/rooms/{room}/meetings")
async def list_meetings(request: web.Request) -> web.Response:
    room_id = request.match_info["room"]
    require(grant_of(request), "moderate", room_id)
    meetings = await _services(request).store.meetings_of(room_id)
    return web.json_response([
        {"id": m.id, "room_id": m.room_id, "started_at": m.started_at, "ended_at": m.ended_at}
        for m in meetings
    ])


async def _meeting_for(request: web.Request) -> str:
    meeting = await _services(request).store.get_meeting(request.match_info["meeting"])
    require(grant_of(request), "moderate", meeting.room_id)
    return meeting.id


@routes.get("/api/meetings/{meeting}/attendance")
async def attendance(request: web.Request) -> web.Response:
    meeting_id = await _meeting_for(request)
    rows = await _services(request).store.attendance(meeting_id)
    return web.json_response([
        {"participant": r.participant_id, "name": r.name, "role": r.role,
         "joined_at": r.joined_at, "left_at": r.left_at} for r in rows
    ])


@routes.get("/api/meetings/{meeting}/chat")
async def chat(request: web.Request) -> web.Response:
    meeting_id = await _meeting_for(request)
    rows = await _services(request).store.chat(meeting_id)
    return web.json_response([
        {"id": r.id, "participant": r.participant_id, "name": r.name, "text": r.text, "at": r.at}
        for r in rows
    ])


@routes.get("/api/meetings/{meeting}/transcript")
async def meeting_transcript(request: web.Request) -> web.Response:
    """The meeting's final captions: ``?format=json`` (default) or ``vtt``, ``&language=``."""
    meeting_id = await _meeting_for(request)
    kind = request.query.get("format", "json")
    if kind not in transcript.FORMATS:
        raise errors.BadRequest(f"format must be one of {', '.join(transcript.FORMATS)}")
    language = request.query.get("language") or None
    if language is not None and not is_language(language):
        raise errors.BadRequest("language must be an ISO 639-1 code")
    store = _services(request).store
    meeting = await store.get_meeting(meeting_id)
    text = transcript.write(kind, meeting, await store.captions(meeting_id), language)
    return web.Response(text=text, content_type=transcript.CONTENT_TYPES[kind], charset="utf-8")


def _base_url(request: web.Request) -> str:
    """The configured public address, or else the one this request came in on."""
    config = _services(request).config
    if config.public_url:
        return config.base_url
    return f"{request.scheme}://{request.host}"


def invite_url(base_url: str, room_id: str, token: str) -> str:
    return f"{base_url}/r/{room_id}?t={token}"
