"""Typed errors of townhall, mapped to wire errors in one place (``server/wire.py``).

    TownhallError
    ├── BadRequest           malformed input: JSON, SDP, fields of the wrong type
    │   ├── MessageTooLarge  a WebSocket message over the configured limit
    │   └── UnknownMessage   a message type the server does not know
    ├── Unauthorized         missing, forged or expired token
    ├── Forbidden            the token's role lacks the permission
    │   ├── RoomLocked       the room is locked to new participants
    │   └── Removed          a host removed this participant
    ├── NotFound             unknown room, meeting, participant or resource
    ├── Conflict             the request clashes with the current state
    │   └── MediaClosed      the media connection it needs has closed (ICE gave up, say)
    └── CaptionsError        the captions engine cannot start or run: a missing or invalid model,
                             a model that cannot be downloaded, a broken translation engine
"""

from __future__ import annotations


class TownhallError(Exception):
    """Base of every error townhall reports to a caller."""


class BadRequest(TownhallError):
    pass


class MessageTooLarge(BadRequest):
    pass


class UnknownMessage(BadRequest):
    pass


class Unauthorized(TownhallError):
    pass


class Forbidden(TownhallError):
    pass


class RoomLocked(Forbidden):
    pass


class Removed(Forbidden):
    pass


class NotFound(TownhallError):
    pass


class Conflict(TownhallError):
    pass


class MediaClosed(Conflict):
    pass


class CaptionsError(TownhallError):
    """The captions engine cannot load or run; the message says what to fix."""
