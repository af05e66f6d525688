"""A participant: one person's session in a meeting, and the channel to their page."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

SOURCES = ("microphone", "camera", "screen")


class Outbox(Protocol):
    """Where messages to a participant's page go (the WebSocket session)."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False)
class Participant:
    id: str
    name: str
    role: str
    permissions: frozenset[str]
    token_id: str
    outbox: Outbox | None
    resume: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hand: bool = False
    muted_by_host: bool = False
    connected: bool = True
    #: source → whether the page has it switched on
    enabled: dict[str, bool] = field(default_factory=dict)
    publish_transport: Any = None
    subscribe_transport: Any = None
    #: source → producer
    producers: dict[str, Any] = field(default_factory=dict)
    #: producer id → consumer
    consumers: dict[str, Any] = field(default_factory=dict)
    grace: asyncio.TimerHandle | None = None
    # subscribe negotiation: one offer in flight at a time
    offer_pending: bool = False
    offer_wanted: bool = False
    #: The number of the receiving connection now in use (0: none yet); each new subscribe
    #: transport gets the next one, so the page knows to answer on a new connection and an
    #: answer meant for a lost one is recognised.
    subscribe_connection: int = 0
    # receiving preferences (``receive``, ``pin``) and the last ``forwarding`` sent
    receive_video: bool = True
    pins: frozenset[str] = frozenset()
    forwarded: tuple[tuple[str, ...], bool] | None = None

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def publishing(self, source: str) -> bool:
        producer = self.producers.get(source)
        return producer is not None and not producer.paused

    def describe(self, speaking: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "permissions": sorted(self.permissions),
            "audio": self.publishing("microphone"),
            "video": self.publishing("camera"),
            "screen": self.publishing("screen"),
            "hand": self.hand,
            "muted_by_host": self.muted_by_host,
            "speaking": self.id in speaking,
            "connected": self.connected,
        }

    async def send(self, message: dict[str, Any]) -> None:
        if self.outbox is not None and self.connected:
            await self.outbox.send(message)
