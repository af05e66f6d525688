"""The store: townhall's record of rooms, meetings, attendance, chat and captions.

:class:`Store` is the only way in. Its methods are coroutines; each runs one short synchronous
SQLAlchemy session in a worker thread (``asyncio.to_thread``), so the event loop never waits on
the database. They return frozen records from :mod:`townhall.store.records`.

SQLite (the default) runs in WAL mode, and every writing transaction starts with
``BEGIN IMMEDIATE``, so the server and the command line can write to the same file at once
without failing on a lock upgrade. PostgreSQL is used by URL (``postgresql+psycopg://...``).
Opening a store brings its schema up to date with the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, delete, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from townhall.errors import BadRequest, Conflict, NotFound
from townhall.store.models import Attendance, Caption, ChatMessage, Meeting, Room
from townhall.store.records import (
    AttendanceRecord,
    CaptionRecord,
    ChatRecord,
    MeetingRecord,
    RoomRecord,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ROOM_NAME = 100
#: Most speakers whose video a participant can receive at once.
MAX_LAST_N = 40
MIGRATIONS = Path(__file__).parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating, so two processes never both migrate.
_MIGRATION_LOCK = int.from_bytes(b"townhall", "big")
_WRITE = "townhall_write"
#: How long SQLite waits for another writer (the server or the command line), in seconds.
SQLITE_BUSY_TIMEOUT = 30.0


class Store:
    """Rooms, meetings, attendance, chat and captions, kept in SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})
        self._closed = False

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect to ``url`` and run the migrations; blocking, call before serving."""
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        connect_args: dict[str, Any] = {}
        if sqlite:
            if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
                raise BadRequest("the store needs an SQLite file, not an in-memory database")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not sqlite)
        if sqlite:
            _configure_sqlite(engine)
        store = cls(engine)
        try:
            store._migrate()
        except BaseException:
            engine.dispose()
            raise
        logger.info("store open: %s", parsed.render_as_string(hide_password=True))
        return store

    def close(self) -> None:
        """Close every connection; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._engine.dispose()

    def _migrate(self) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    async def _run(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        if self._closed:
            raise RuntimeError("store is closed")

        def work() -> T:
            with Session(self._writer if write else self._engine) as session, session.begin():
                return fn(session)

        return await asyncio.to_thread(work)

    # -- rooms ---------------------------------------------------------------------------

    async def create_room(self, name: str, at: float | None = None) -> RoomRecord:
        """A new, unlocked room; :class:`Conflict` if the name is taken.

        ``at`` is the creation time (default: now).
        """
        name = _room_name(name)
        room_id = uuid.uuid4().hex
        created_at = time.time() if at is None else at

        def fn(session: Session) -> RoomRecord:
            room = Room(id=room_id, name=name, created_at=created_at, locked=False)
            session.add(room)
            session.flush()
            return _room(room)

        try:
            room = await self._run(fn, write=True)
        except IntegrityError:
            raise Conflict(f"room {name!r} already exists") from None
        logger.info("room %s created", room.id)
        return room

    async def get_room(self, room_id: str) -> RoomRecord:
        def fn(session: Session) -> RoomRecord:
            return _room(_get_room(session, room_id))

        return await self._run(fn)

    async def find_room(self, name_or_id: str) -> RoomRecord:
        """The room with this id or, failing that, this name."""

        def fn(session: Session) -> RoomRecord:
            room = session.get(Room, name_or_id)
            if room is None:
                room = session.scalars(
                    select(Room).where(Room.name == name_or_id.strip())
                ).one_or_none()
            if room is None:
                raise NotFound("unknown room")
            return _room(room)

        return await self._run(fn)

    async def list_rooms(self) -> list[RoomRecord]:
        """Every room, by name."""

        def fn(session: Session) -> list[RoomRecord]:
            return [_room(r) for r in session.scalars(select(Room).order_by(Room.name))]

        return await self._run(fn)

    async def set_locked(self, room_id: str, locked: bool) -> RoomRecord:
        def fn(session: Session) -> RoomRecord:
            room = _get_room(session, room_id)
            room.locked = locked
            session.flush()
            return _room(room)

        return await self._run(fn, write=True)

    async def set_last_n(self, room_id: str, last_n: int) -> RoomRecord:
        if not 1 <= last_n <= MAX_LAST_N:
            raise BadRequest(f"last_n must be between 1 and {MAX_LAST_N}")

        def fn(session: Session) -> RoomRecord:
            room = _get_room(session, room_id)
            room.last_n = last_n
            session.flush()
            return _room(room)

        return await self._run(fn, write=True)

    async def set_captions(self, room_id: str, enabled: bool) -> RoomRecord:
        def fn(session: Session) -> RoomRecord:
            room = _get_room(session, room_id)
            room.captions = enabled
            session.flush()
            return _room(room)

        return await self._run(fn, write=True)

    async def delete_room(self, room_id: str) -> None:
        """Delete a room with its meetings, attendance, chat and captions."""

        def fn(session: Session) -> None:
            _get_room(session, room_id)
            meetings = select(Meeting.id).where(Meeting.room_id == room_id)
            session.execute(delete(Caption).where(Caption.meeting_id.in_(meetings)))
            session.execute(delete(ChatMessage).where(ChatMessage.meeting_id.in_(meetings)))
            session.execute(delete(Attendance).where(Attendance.meeting_id.in_(meetings)))
            session.execute(delete(Meeting).where(Meeting.room_id == room_id))
            session.execute(delete(Room).where(Room.id == room_id))

        await self._run(fn, write=True)
        logger.info("room %s deleted", room_id)

    # -- meetings ------------------------------------------------------------------------

    async def start_meeting(self, room_id: str, at: float) -> MeetingRecord:
        def fn(session: Session) -> MeetingRecord:
            _get_room(session, room_id)
            meeting = Meeting(id=uuid.uuid4().hex, room_id=room_id, started_at=at, ended_at=None)
            session.add(meeting)
            session.flush()
            return _meeting(meeting)

        meeting = await self._run(fn, write=True)
        logger.info("meeting %s started in room %s", meeting.id, room_id)
        return meeting

    async def end_meeting(self, meeting_id: str, at: float) -> MeetingRecord:
        """End a meeting; anyone still present leaves at ``at``. Ending it again changes nothing."""

        def fn(session: Session) -> MeetingRecord:
            meeting = _get_meeting(session, meeting_id)
            if meeting.ended_at is None:
                meeting.ended_at = at
                session.execute(
                    update(Attendance)
                    .where(Attendance.meeting_id == meeting_id, Attendance.left_at.is_(None))
                    .values(left_at=at)
                )
                session.flush()
            return _meeting(meeting)

        meeting = await self._run(fn, write=True)
        logger.info("meeting %s ended", meeting_id)
        return meeting

    async def current_meeting(self, room_id: str) -> MeetingRecord | None:
        """The room's latest meeting that has not ended, to resume it after a restart."""

        def fn(session: Session) -> MeetingRecord | None:
            meeting = session.scalars(
                select(Meeting)
                .where(Meeting.room_id == room_id, Meeting.ended_at.is_(None))
                .order_by(Meeting.started_at.desc(), Meeting.id)
                .limit(1)
            ).one_or_none()
            return None if meeting is None else _meeting(meeting)

        return await self._run(fn)

    async def get_meeting(self, meeting_id: str) -> MeetingRecord:
        def fn(session: Session) -> MeetingRecord:
            return _meeting(_get_meeting(session, meeting_id))

        return await self._run(fn)

    async def meetings_of(self, room_id: str) -> list[MeetingRecord]:
        """The room's meetings, oldest first."""

        def fn(session: Session) -> list[MeetingRecord]:
            _get_room(session, room_id)
            rows = session.scalars(
                select(Meeting).where(Meeting.room_id == room_id).order_by(Meeting.started_at)
            )
            return [_meeting(m) for m in rows]

        return await self._run(fn)

    # -- attendance ----------------------------------------------------------------------

    async def record_join(
        self, meeting_id: str, participant_id: str, name: str, role: str, at: float
    ) -> AttendanceRecord:
        def fn(session: Session) -> AttendanceRecord:
            _get_meeting(session, meeting_id)
            row = Attendance(
                meeting_id=meeting_id,
                participant_id=participant_id,
                name=name,
                role=role,
                joined_at=at,
                left_at=None,
            )
            session.add(row)
            session.flush()
            return _attendance(row)

        return await self._run(fn, write=True)

    async def record_leave(self, meeting_id: str, participant_id: str, at: float) -> None:
        """Close the participant's open attendance row; nothing happens if none is open."""

        def fn(session: Session) -> int:
            result = session.execute(
                update(Attendance)
                .where(
                    Attendance.meeting_id == meeting_id,
                    Attendance.participant_id == participant_id,
                    Attendance.left_at.is_(None),
                )
                .values(left_at=at)
            )
            return int(getattr(result, "rowcount", 0))

        if not await self._run(fn, write=True):
            logger.debug("no open attendance of %s in meeting %s", participant_id, meeting_id)

    async def attendance(self, meeting_id: str) -> list[AttendanceRecord]:
        """Every join of the meeting, in order; a participant who rejoined has several rows."""

        def fn(session: Session) -> list[AttendanceRecord]:
            _get_meeting(session, meeting_id)
            rows = session.scalars(
                select(Attendance)
                .where(Attendance.meeting_id == meeting_id)
                .order_by(Attendance.joined_at, Attendance.id)
            )
            return [_attendance(a) for a in rows]

        return await self._run(fn)

    async def close_open_attendance(self, at: float) -> int:
        """On server start: rows a crash left open get ``left_at = at``. Returns how many."""

        def fn(session: Session) -> int:
            result = session.execute(
                update(Attendance).where(Attendance.left_at.is_(None)).values(left_at=at)
            )
            return int(getattr(result, "rowcount", 0))

        count = await self._run(fn, write=True)
        if count:
            logger.info("closed %d attendance rows left open", count)
        return count

    # -- chat ----------------------------------------------------------------------------

    async def add_chat(
        self, meeting_id: str, participant_id: str, name: str, text: str, at: float
    ) -> ChatRecord:
        def fn(session: Session) -> ChatRecord:
            _get_meeting(session, meeting_id)
            message = ChatMessage(
                meeting_id=meeting_id, participant_id=participant_id, name=name, text=text, at=at
            )
            session.add(message)
            session.flush()
            return _chat(message)

        return await self._run(fn, write=True)

    async def chat(self, meeting_id: str) -> list[ChatRecord]:
        """The meeting's chat, oldest first."""

        def fn(session: Session) -> list[ChatRecord]:
            _get_meeting(session, meeting_id)
            rows = session.scalars(
                select(ChatMessage)
                .where(ChatMessage.meeting_id == meeting_id)
                .order_by(ChatMessage.id)
            )
            return [_chat(c) for c in rows]

        return await self._run(fn)

    # -- captions ------------------------------------------------------------------------

    async def add_caption(
        self,
        meeting_id: str,
        participant_id: str,
        name: str,
        utterance: str,
        start: float,
        end: float,
        language: str,
        text: str,
        translations: dict[str, str],
    ) -> tuple[CaptionRecord, bool]:
        """Store the final caption of one utterance of ``participant_id``.

        Returns the stored record and whether it is new: a caption for an utterance already
        stored in this meeting (a worker resending after a reconnect) is not stored again, and
        the first one is returned.
        """

        def find(session: Session) -> Caption | None:
            return session.scalars(
                select(Caption).where(
                    Caption.meeting_id == meeting_id,
                    Caption.participant_id == participant_id,
                    Caption.utterance == utterance,
                )
            ).one_or_none()

        def fn(session: Session) -> tuple[CaptionRecord, bool]:
            _get_meeting(session, meeting_id)
            existing = find(session)
            if existing is not None:
                return _caption(existing), False
            caption = Caption(
                meeting_id=meeting_id, participant_id=participant_id, name=name,
                utterance=utterance, start=start, end=end, language=language, text=text,
                translations=dict(translations),
            )  # fmt: skip
            session.add(caption)
            session.flush()
            return _caption(caption), True

        def found(session: Session) -> tuple[CaptionRecord, bool]:
            existing = find(session)
            if existing is None:
                raise Conflict("caption could not be stored")
            return _caption(existing), False

        try:
            return await self._run(fn, write=True)
        except IntegrityError:  # the same utterance stored at the same moment by another writer
            return await self._run(found)

    async def captions(self, meeting_id: str) -> list[CaptionRecord]:
        """The meeting's final captions in the order they were spoken."""

        def fn(session: Session) -> list[CaptionRecord]:
            _get_meeting(session, meeting_id)
            rows = session.scalars(
                select(Caption)
                .where(Caption.meeting_id == meeting_id)
                .order_by(Caption.start, Caption.id)
            )
            return [_caption(c) for c in rows]

        return await self._run(fn)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, and ``BEGIN IMMEDIATE`` for writing transactions."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event below say when a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _room_name(name: str) -> str:
    if not isinstance(name, str):
        raise BadRequest("room name must be a string")
    name = name.strip()
    if not 1 <= len(name) <= MAX_ROOM_NAME:
        raise BadRequest(f"room name must be 1 to {MAX_ROOM_NAME} characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise BadRequest("room name must not contain control characters")
    return name


def _get_room(session: Session, room_id: str) -> Room:
    room = session.get(Room, room_id)
    if room is None:
        raise NotFound("unknown room")
    return room


def _get_meeting(session: Session, meeting_id: str) -> Meeting:
    meeting = session.get(Meeting, meeting_id)
    if meeting is None:
        raise NotFound("unknown meeting")
    return meeting


def _time(value: float) -> float:
    """``value`` as it reads back from the database: to the microsecond."""
    return datetime.fromtimestamp(value, tz=UTC).timestamp()


def _maybe_time(value: float | None) -> float | None:
    return None if value is None else _time(value)


def _room(row: Room) -> RoomRecord:
    return RoomRecord(
        id=row.id, name=row.name, created_at=_time(row.created_at), locked=bool(row.locked),
        last_n=int(row.last_n), captions=bool(row.captions),
    )


def _meeting(row: Meeting) -> MeetingRecord:
    return MeetingRecord(
        id=row.id,
        room_id=row.room_id,
        started_at=_time(row.started_at),
        ended_at=_maybe_time(row.ended_at),
    )


def _attendance(row: Attendance) -> AttendanceRecord:
    return AttendanceRecord(
        id=row.id,
        meeting_id=row.meeting_id,
        participant_id=row.participant_id,
        name=row.name,
        role=row.role,
        joined_at=_time(row.joined_at),
        left_at=_maybe_time(row.left_at),
    )


def _chat(row: ChatMessage) -> ChatRecord:
    return ChatRecord(
        id=row.id,
        meeting_id=row.meeting_id,
        participant_id=row.participant_id,
        name=row.name,
        text=row.text,
        at=_time(row.at),
    )


def _caption(row: Caption) -> CaptionRecord:
    return CaptionRecord(
        id=row.id,
        meeting_id=row.meeting_id,
        participant_id=row.participant_id,
        name=row.name,
        utterance=row.utterance,
        start=_time(row.start),
        end=_time(row.end),
        language=row.language,
        text=row.text,
        translations=dict(row.translations),
    )
