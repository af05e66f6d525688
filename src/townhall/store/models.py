"""SQLAlchemy models of the stored record: rooms, meetings, attendance, chat and captions.

Times are ``timestamp with time zone`` columns holding UTC; the rest of townhall sees them as float
unix seconds through :class:`UnixTime`. Changing a model needs a new migration in
``migrations/versions``; ``tests/test_store.py`` fails while the two disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UnixTime(TypeDecorator[float]):
    """Float unix seconds in Python, an aware UTC timestamp in the database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.fromtimestamp(value, tz=UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite keeps no zone; we only ever write UTC.
            value = value.replace(tzinfo=UTC)
        return value.timestamp()


class Base(DeclarativeBase):
    pass


class Room(Base):
    __tablename__ = "rooms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[float] = mapped_column(UnixTime())
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: How many recent speakers' video each participant receives (besides what they pin).
    last_n: Mapped[int] = mapped_column(Integer, default=6, server_default="6")
    #: Whether the room's speech is captioned.
    captions: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Meeting(Base):
    __tablename__ = "meetings"
    __table_args__ = (Index("ix_meetings_room_id_started_at", "room_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id", ondelete="CASCADE"))
    started_at: Mapped[float] = mapped_column(UnixTime())
    ended_at: Mapped[float | None] = mapped_column(UnixTime())


class Attendance(Base):
    __tablename__ = "attendance"
    __table_args__ = (
        Index("ix_attendance_meeting_id_participant_id", "meeting_id", "participant_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meeting_id: Mapped[str] = mapped_column(ForeignKey("meetings.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    joined_at: Mapped[float] = mapped_column(UnixTime())
    left_at: Mapped[float | None] = mapped_column(UnixTime())


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (Index("ix_chat_messages_meeting_id", "meeting_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meeting_id: Mapped[str] = mapped_column(ForeignKey("meetings.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(UnixTime())


class Caption(Base):
    """One final caption: what a speaker said in one utterance, with its translations."""

    __tablename__ = "captions"
    __table_args__ = (
        # A worker that resends a final after reconnecting must not store it twice.
        UniqueConstraint("meeting_id", "participant_id", "utterance",
                         name="uq_captions_meeting_id_participant_id_utterance"),
        Index("ix_captions_meeting_id_start", "meeting_id", "start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meeting_id: Mapped[str] = mapped_column(ForeignKey("meetings.id", ondelete="CASCADE"))
    #: The speaker.
    participant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    utterance: Mapped[str] = mapped_column(String(128))
    start: Mapped[float] = mapped_column(UnixTime())
    end: Mapped[float] = mapped_column(UnixTime())
    #: ISO 639-1 code of the speech.
    language: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)
    #: ISO 639-1 code → the text in that language.
    translations: Mapped[dict[str, str]] = mapped_column(JSON)
