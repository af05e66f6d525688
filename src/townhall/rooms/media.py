"""How rooms see the SFU: the few operations a meeting needs, as ``typing.Protocol``s.

``rooms/`` never imports ``sfu/``; ``server/`` hands a room a router that fits these protocols.
"""

from __future__ import annotations

from typing import Any, Protocol


class MediaProducer(Protocol):
    id: str
    owner: str
    source: str
    kind: str
    paused: bool

    def set_paused(self, paused: bool) -> None: ...


class MediaConsumer(Protocol):
    id: str
    paused: bool

    @property
    def producer(self) -> Any: ...

    @property
    def mid(self) -> str | None: ...

    @property
    def forwarding(self) -> bool:
        """Not paused, and given a layer by the router's bandwidth allocation."""

    def set_paused(self, paused: bool, reason: str) -> None: ...


class MediaRouter(Protocol):
    def create_transport(self, owner: str, name: str = "") -> Any: ...

    async def publish(
        self, transport: Any, offer: str, sources: dict[str, str]
    ) -> tuple[str, list[Any], list[Any]]: ...

    def consume(self, transport: Any, producer: Any) -> Any: ...

    def close_consumer(self, consumer: Any) -> None: ...

    def set_layout(self, consumer: Any, width: int, height: int) -> None: ...

    def check_sent_layers(self) -> None: ...

    async def subscribe_offer(self, transport: Any) -> str: ...

    async def subscribe_answer(self, transport: Any, answer: str) -> None: ...

    async def close_transport(self, transport: Any) -> None: ...

    def set_video_paused(self, transport: Any, reason: str, paused: bool) -> None: ...

    def video_paused(self, transport: Any) -> bool: ...

    def low_bandwidth(self, transport: Any) -> bool: ...

    async def close(self) -> None: ...
