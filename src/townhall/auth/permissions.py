"""Named permission sets, one per role.

A token carries a role; the role names a fixed set of permissions. Meeting roles (``host``,
``speaker``, ``listener``, ``caption``) are held by participants; ``admin`` is held by whoever runs
the server and is used for the room API, never to join a meeting.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from townhall.errors import BadRequest

JOIN = "join"
PUBLISH = "publish"
CHAT = "chat"
RAISE_HAND = "raise-hand"
#: Mute or remove others, lock the room.
MODERATE = "moderate"
#: Make invite links for the room.
INVITE = "invite"
#: Publish captions.
CAPTION = "caption"
#: Create and delete rooms.
ADMIN = "admin"

PERMISSIONS: frozenset[str] = frozenset(
    {JOIN, PUBLISH, CHAT, RAISE_HAND, MODERATE, INVITE, CAPTION, ADMIN}
)

ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "host": frozenset({JOIN, PUBLISH, CHAT, RAISE_HAND, MODERATE, INVITE}),
        "speaker": frozenset({JOIN, PUBLISH, CHAT, RAISE_HAND}),
        "listener": frozenset({JOIN, CHAT, RAISE_HAND}),
        "caption": frozenset({JOIN, CAPTION}),
        "admin": frozenset({ADMIN, INVITE}),
    }
)

#: Roles a participant can hold in a meeting, in order of decreasing power.
MEETING_ROLES: tuple[str, ...] = ("host", "speaker", "listener", "caption")


def permissions_for(role: str) -> frozenset[str]:
    """The permissions of ``role``; :class:`~townhall.errors.BadRequest` for an unknown role."""
    try:
        return ROLES[role]
    except (KeyError, TypeError):
        raise BadRequest(f"unknown role: {role!r}") from None
