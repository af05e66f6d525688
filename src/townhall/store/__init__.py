"""The stored record: SQLAlchemy models, Alembic migrations and the :class:`Store` API."""

from townhall.store.records import (
    AttendanceRecord,
    CaptionRecord,
    ChatRecord,
    MeetingRecord,
    RoomRecord,
)
from townhall.store.store import Store

__all__ = [
    "AttendanceRecord", "CaptionRecord", "ChatRecord", "MeetingRecord", "RoomRecord", "Store",
]
