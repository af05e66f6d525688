"""Signed, expiring tokens that carry a room and a role.

A token is two base64url parts without padding, joined by a dot::

    base64url(payload JSON) "." base64url(HMAC-SHA256(secret, first part))

The payload is ``{"r": room id or "*", "o": role, "e": expiry in unix seconds, "i": token id}``.
``"*"`` stands for every room and goes with the ``admin`` role. The clock is always passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass

from townhall.auth.permissions import permissions_for
from townhall.errors import BadRequest, TownhallError, Unauthorized

#: The room id of a token that is valid for every room (admin tokens).
ANY_ROOM = "*"
TOKEN_ID_BYTES = 8
#: Longest token ``verify`` looks at; anything longer is malformed.
MAX_TOKEN_LENGTH = 1024

_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Grant:
    """What a valid token allows."""

    room_id: str
    role: str
    token_id: str
    expires_at: int

    @property
    def permissions(self) -> frozenset[str]:
        return permissions_for(self.role)


def sign(secret: bytes, room_id: str, role: str, ttl: int, now: float) -> str:
    """A token for ``role`` in ``room_id``, valid for ``ttl`` seconds from ``now``."""
    permissions_for(role)
    if ttl <= 0:
        raise BadRequest(f"ttl must be positive, not {ttl}")
    if not room_id:
        raise BadRequest("room id must not be empty")
    payload = {
        "r": room_id,
        "o": role,
        "e": math.floor(now) + ttl,
        "i": secrets.token_hex(TOKEN_ID_BYTES),
    }
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_b64encode(_mac(secret, body))}"


def verify(secret: bytes, token: str, now: float) -> Grant:
    """The grant of ``token``, or :class:`~townhall.errors.Unauthorized`.

    The messages are exactly ``token malformed``, ``token signature invalid`` and
    ``token expired``, checked in that order: a forged token never reveals whether it expired.
    """
    if (
        not isinstance(token, str)
        or len(token) > MAX_TOKEN_LENGTH
        or _TOKEN_SHAPE.fullmatch(token) is None
    ):
        raise Unauthorized("token malformed")
    body, signature = token.split(".")
    try:
        _b64decode(signature)
    except ValueError:
        raise Unauthorized("token malformed") from None
    # Compare the text, not the decoded bytes, so that each token has one spelling.
    if not hmac.compare_digest(signature, _b64encode(_mac(secret, body))):
        raise Unauthorized("token signature invalid")
    try:
        grant = _parse(body)
    except (ValueError, TownhallError):
        # Only reachable with a valid signature, i.e. a bug in whatever signed it.
        raise Unauthorized("token malformed") from None
    if now >= grant.expires_at:
        raise Unauthorized("token expired")
    return grant


def _parse(body: str) -> Grant:
    payload = json.loads(_b64decode(body))
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    room_id, role, expires_at, token_id = (payload.get(k) for k in ("r", "o", "e", "i"))
    if not (isinstance(room_id, str) and room_id):
        raise ValueError("bad room")
    if not isinstance(role, str):
        raise ValueError("bad role")
    permissions_for(role)
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise ValueError("bad expiry")
    if not isinstance(token_id, str):
        raise ValueError("bad token id")
    return Grant(room_id=room_id, role=role, token_id=token_id, expires_at=expires_at)


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
