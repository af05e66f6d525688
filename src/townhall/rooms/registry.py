"""The live rooms of this server, opened on first join and dropped when their meeting ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from townhall.errors import NotFound
from townhall.rooms.media import MediaRouter
from townhall.rooms.room import LiveRoom

if TYPE_CHECKING:
    from townhall.store import Store

logger = logging.getLogger(__name__)


class RoomRegistry:
    def __init__(
        self,
        store: Store,
        router_factory: Callable[[str], MediaRouter],
        reconnect_grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._router_factory = router_factory
        self._grace = reconnect_grace
        self._clock = clock
        self._rooms: dict[str, LiveRoom] = {}
        self._lock = asyncio.Lock()
        #: one event per watcher of the live rooms (the captions worker's control sockets)
        self._watchers: set[asyncio.Event] = set()

    async def get(self, room_id: str, open_meeting: bool = True) -> LiveRoom:
        """The live room, opening it (and its meeting) if nobody is in it yet.

        With ``open_meeting`` false a room without a live meeting is :class:`NotFound`.
        """
        async with self._lock:
            room = self._rooms.get(room_id)
            if room is not None:
                return room
            if not open_meeting:
                raise NotFound("the room has no meeting now")
            record = await self.store.get_room(room_id)
            meeting = await self.store.current_meeting(room_id)
            if meeting is None:
                meeting = await self.store.start_meeting(room_id, self._clock())
            room = LiveRoom(record, meeting, self.store, self._router_factory(room_id),
                            self._grace, self._dropped, self._clock)
            self._rooms[room_id] = room
            room.captions.on_change = self.changed
            logger.info("room %s: meeting %s open", room_id, meeting.id)
            self.changed()
            return room

    def find(self, room_id: str) -> LiveRoom | None:
        return self._rooms.get(room_id)

    def _dropped(self, room: LiveRoom) -> None:
        if self._rooms.get(room.id) is room:
            del self._rooms[room.id]
            self.changed()

    # -- watching the live rooms -----------------------------------------------------------

    def watch(self) -> asyncio.Event:
        """An event set whenever a meeting starts or ends or a live room's captions change."""
        event = asyncio.Event()
        self._watchers.add(event)
        return event

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)

    def changed(self) -> None:
        for event in self._watchers:
            event.set()

    @property
    def rooms(self) -> list[LiveRoom]:
        return list(self._rooms.values())

    async def close(self) -> None:
        """Server shutdown: rooms stop, their meetings continue after a restart."""
        for room in list(self._rooms.values()):
            await room.shutdown()
