"""Typed errors become wire errors here, and only here.

A request on a WebSocket that fails without ending the session gets an ``error`` message; a failure
that ends it closes the socket with a code and a reason (``docs/protocol.md``). HTTP requests get a
status and ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from townhall import errors

#: (error class, wire code, HTTP status, WebSocket close code); the first match wins.
_TABLE: tuple[tuple[type[errors.TownhallError], str, int, int], ...] = (
    (errors.MessageTooLarge, "bad-request", 413, 1009),
    (errors.BadRequest, "bad-request", 400, 4400),
    (errors.Unauthorized, "unauthorized", 401, 4401),
    (errors.Forbidden, "forbidden", 403, 4403),
    (errors.NotFound, "not-found", 404, 4404),
    (errors.Conflict, "conflict", 409, 4409),
)


def _lookup(error: errors.TownhallError) -> tuple[str, int, int]:
    for kind, code, status, close in _TABLE:
        if isinstance(error, kind):
            return code, status, close
    return "internal", 500, 1011


def error_message(error: errors.TownhallError, request: str | None,
                  request_id: int | None = None) -> dict[str, Any]:
    """The ``error`` for a failed request (``request``: its type; ``request_id``: the ``id`` it
    carried, echoed so that the sender can tell which of its requests failed)."""
    message: dict[str, Any] = {"type": "error", "code": _lookup(error)[0],
                               "message": str(error), "request": request}
    if request_id is not None:
        message["id"] = request_id
    return message


def close_for(error: errors.TownhallError) -> tuple[int, str]:
    """The WebSocket close code and reason for an error that ends a session."""
    code, _status, close = _lookup(error)
    message = str(error)
    if isinstance(error, errors.MessageTooLarge):
        return close, "message too large"
    if isinstance(error, errors.Removed | errors.RoomLocked):
        return close, message
    reason = f"{code.replace('-', ' ')}: {message}"
    return close, reason[:120]


def http_error(error: errors.TownhallError) -> web.Response:
    code, status, _close = _lookup(error)
    return web.json_response({"error": {"code": code, "message": str(error)}}, status=status)
