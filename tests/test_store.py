"""The store against SQLite, and against a throwaway PostgreSQL cluster where one can be started."""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from townhall.errors import BadRequest, Conflict, NotFound
from townhall.store import CaptionRecord, ChatRecord, MeetingRecord, RoomRecord, Store
from townhall.store.models import Base
from townhall.store.store import MIGRATIONS

T0 = 1_700_000_000.0

# -- databases ---------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL cluster in a temporary directory, reached on a unix socket only."""

    PORT = 54329

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="townhall-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.run_as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        data = self.root / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        options = f"-k {self.root} -c listen_addresses='' -p {self.PORT} -F"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
            "-l", str(self.root / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            pg_ctl = str(self.bindir / "pg_ctl")
            self._run(pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=str(self.root), port=self.PORT, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@/{name}?host={self.root}&port={self.PORT}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'townhall[postgres]')")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser to start PostgreSQL as another user")
    server = Postgres(Path(found[-1]).parent)
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = server.root / "log"
        detail = log.read_text()[-2000:] if log.exists() else getattr(exc, "stderr", b"")
        server.stop()
        pytest.fail(f"could not start PostgreSQL: {exc}\n{detail!s}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'townhall.sqlite3'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = Store.open(url)
    yield store
    store.close()


async def _meeting(store: Store, name: str = "Board", at: float = T0) -> MeetingRecord:
    room = await store.create_room(name)
    return await store.start_meeting(room.id, at)


# -- rooms -------------------------------------------------------------------------------


async def test_created_room_is_found_by_id_and_by_name(store: Store) -> None:
    room = await store.create_room("  Board of the union  ")
    assert room.name == "Board of the union"
    assert len(room.id) == 32 and int(room.id, 16) >= 0
    assert room.locked is False
    assert await store.get_room(room.id) == room
    assert await store.find_room(room.id) == room
    assert await store.find_room("Board of the union") == room


async def test_room_creation_time_defaults_to_now_and_can_be_given(store: Store) -> None:
    before = time.time()
    assert before - 1 <= (await store.create_room("now")).created_at <= time.time() + 1
    assert (await store.create_room("then", at=T0)).created_at == T0


async def test_room_name_already_taken_is_a_conflict(store: Store) -> None:
    await store.create_room("Board")
    with pytest.raises(Conflict) as info:
        await store.create_room(" Board ")
    assert str(info.value) == "room 'Board' already exists"
    assert [r.name for r in await store.list_rooms()] == ["Board"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "two\nlines"])
async def test_room_name_empty_too_long_or_with_control_characters_is_refused(
    store: Store, name: str
) -> None:
    with pytest.raises(BadRequest, match="room name"):
        await store.create_room(name)
    assert await store.list_rooms() == []


async def test_room_name_of_one_hundred_characters_is_accepted(store: Store) -> None:
    assert (await store.create_room("й" * 100)).name == "й" * 100


async def test_rooms_are_listed_by_name(store: Store) -> None:
    for name in ("Charlie", "Alpha", "Bravo"):
        await store.create_room(name)
    assert [r.name for r in await store.list_rooms()] == ["Alpha", "Bravo", "Charlie"]


async def test_unknown_room_is_not_found_everywhere(store: Store) -> None:
    missing = uuid.uuid4().hex
    for call in (
        store.get_room(missing),
        store.find_room("nobody's room"),
        store.set_locked(missing, True),
        store.delete_room(missing),
        store.start_meeting(missing, T0),
        store.meetings_of(missing),
    ):
        with pytest.raises(NotFound, match=r"^unknown room$"):
            await call


async def test_locking_a_room_is_kept(store: Store) -> None:
    room = await store.create_room("Board")
    assert (await store.set_locked(room.id, True)).locked is True
    assert (await store.get_room(room.id)).locked is True
    await store.set_locked(room.id, False)
    assert (await store.get_room(room.id)).locked is False


async def test_deleting_a_room_deletes_its_meetings_attendance_and_chat(store: Store) -> None:
    meeting = await _meeting(store, "Board")
    kept = await _meeting(store, "Other")
    await store.record_join(meeting.id, "p1", "Ann", "host", T0 + 1)
    await store.add_chat(meeting.id, "p1", "Ann", "hello", T0 + 2)
    await store.add_chat(kept.id, "p9", "Zoe", "still here", T0 + 2)

    await store.delete_room(meeting.room_id)

    assert [r.name for r in await store.list_rooms()] == ["Other"]
    with pytest.raises(NotFound, match=r"^unknown meeting$"):
        await store.get_meeting(meeting.id)
    with pytest.raises(NotFound):
        await store.chat(meeting.id)
    assert [c.text for c in await store.chat(kept.id)] == ["still here"]
    assert await store.create_room("Board")  # the name is free again


# -- meetings ----------------------------------------------------------------------------


async def test_current_meeting_is_the_latest_one_not_ended(store: Store) -> None:
    room = await store.create_room("Board")
    assert await store.current_meeting(room.id) is None
    first = await store.start_meeting(room.id, T0)
    second = await store.start_meeting(room.id, T0 + 100)
    assert await store.current_meeting(room.id) == second
    await store.end_meeting(second.id, T0 + 200)
    assert await store.current_meeting(room.id) == first
    await store.end_meeting(first.id, T0 + 300)
    assert await store.current_meeting(room.id) is None


async def test_current_meeting_belongs_to_its_own_room(store: Store) -> None:
    meeting = await _meeting(store, "Board")
    other = await store.create_room("Other")
    assert await store.current_meeting(other.id) is None
    assert await store.current_meeting(meeting.room_id) == meeting


async def test_ending_a_meeting_twice_keeps_the_first_end(store: Store) -> None:
    meeting = await _meeting(store)
    ended = await store.end_meeting(meeting.id, T0 + 60)
    assert ended.ended_at == T0 + 60
    assert (await store.end_meeting(meeting.id, T0 + 999)).ended_at == T0 + 60
    assert (await store.get_meeting(meeting.id)).ended_at == T0 + 60


async def test_meetings_of_a_room_come_oldest_first(store: Store) -> None:
    room = await store.create_room("Board")
    later = await store.start_meeting(room.id, T0 + 500)
    earlier = await store.start_meeting(room.id, T0)
    assert await store.meetings_of(room.id) == [earlier, later]


async def test_unknown_meeting_is_not_found_everywhere(store: Store) -> None:
    missing = uuid.uuid4().hex
    for call in (
        store.get_meeting(missing),
        store.end_meeting(missing, T0),
        store.record_join(missing, "p1", "Ann", "host", T0),
        store.attendance(missing),
        store.add_chat(missing, "p1", "Ann", "hi", T0),
        store.chat(missing),
    ):
        with pytest.raises(NotFound, match=r"^unknown meeting$"):
            await call


# -- attendance --------------------------------------------------------------------------


async def test_leaving_closes_only_the_open_row_of_that_participant(store: Store) -> None:
    meeting = await _meeting(store)
    await store.record_join(meeting.id, "p1", "Ann", "host", T0 + 1)
    await store.record_join(meeting.id, "p2", "Boris", "listener", T0 + 2)
    await store.record_leave(meeting.id, "p1", T0 + 10)
    await store.record_join(meeting.id, "p1", "Ann", "host", T0 + 20)  # came back

    rows = await store.attendance(meeting.id)
    assert [(r.participant_id, r.joined_at, r.left_at) for r in rows] == [
        ("p1", T0 + 1, T0 + 10),
        ("p2", T0 + 2, None),
        ("p1", T0 + 20, None),
    ]
    assert [(r.name, r.role) for r in rows] == [
        ("Ann", "host"),
        ("Boris", "listener"),
        ("Ann", "host"),
    ]

    await store.record_leave(meeting.id, "p1", T0 + 30)
    rows = await store.attendance(meeting.id)
    assert [r.left_at for r in rows] == [T0 + 10, None, T0 + 30]


async def test_leaving_without_an_open_row_changes_nothing(store: Store) -> None:
    meeting = await _meeting(store)
    joined = await store.record_join(meeting.id, "p1", "Ann", "host", T0)
    await store.record_leave(meeting.id, "p1", T0 + 5)
    await store.record_leave(meeting.id, "p1", T0 + 50)
    await store.record_leave(meeting.id, "stranger", T0 + 50)
    assert await store.attendance(meeting.id) == [dataclasses.replace(joined, left_at=T0 + 5)]


async def test_ending_a_meeting_makes_everyone_still_present_leave(store: Store) -> None:
    meeting = await _meeting(store)
    await store.record_join(meeting.id, "p1", "Ann", "host", T0)
    await store.record_join(meeting.id, "p2", "Boris", "speaker", T0)
    await store.record_leave(meeting.id, "p2", T0 + 5)
    await store.end_meeting(meeting.id, T0 + 60)
    assert [r.left_at for r in await store.attendance(meeting.id)] == [T0 + 60, T0 + 5]


async def test_attendance_left_open_by_a_crash_is_closed_on_start(store: Store) -> None:
    first = await _meeting(store, "Board")
    second = await _meeting(store, "Other")
    await store.record_join(first.id, "p1", "Ann", "host", T0)
    await store.record_join(first.id, "p2", "Boris", "listener", T0)
    await store.record_leave(first.id, "p2", T0 + 5)
    await store.record_join(second.id, "p3", "Vera", "speaker", T0)

    assert await store.close_open_attendance(T0 + 99) == 2

    assert [r.left_at for r in await store.attendance(first.id)] == [T0 + 99, T0 + 5]
    assert [r.left_at for r in await store.attendance(second.id)] == [T0 + 99]
    assert await store.close_open_attendance(T0 + 200) == 0


# -- chat --------------------------------------------------------------------------------


async def test_chat_comes_back_in_the_order_it_was_written(store: Store) -> None:
    meeting = await _meeting(store)
    other = await _meeting(store, "Other")
    first = await store.add_chat(meeting.id, "p1", "Ann", "Привіт, усім 👋", T0 + 1)
    await store.add_chat(other.id, "p9", "Zoe", "elsewhere", T0 + 1)
    second = await store.add_chat(meeting.id, "p2", "Boris", "x" * 4000, T0 + 1)
    assert first == ChatRecord(first.id, meeting.id, "p1", "Ann", "Привіт, усім 👋", T0 + 1)
    assert second.id > first.id
    assert await store.chat(meeting.id) == [first, second]


# -- the record survives -----------------------------------------------------------------


async def test_everything_written_is_there_after_reopening(url: str) -> None:
    store = Store.open(url)
    room = await store.create_room("Board", at=T0)
    await store.set_locked(room.id, True)
    meeting = await store.start_meeting(room.id, T0 + 1)
    joined = await store.record_join(meeting.id, "p1", "Ann", "host", T0 + 2)
    message = await store.add_chat(meeting.id, "p1", "Ann", "kept", T0 + 3)
    store.close()

    store = Store.open(url)
    try:
        assert await store.list_rooms() == [RoomRecord(room.id, "Board", T0, True)]
        assert await store.current_meeting(room.id) == meeting
        assert await store.attendance(meeting.id) == [joined]
        assert await store.chat(meeting.id) == [message]
    finally:
        store.close()


async def test_times_read_back_exactly_as_they_were_returned(store: Store) -> None:
    at = T0 + 0.1234567  # finer than the database keeps
    meeting = await _meeting(store, at=at)
    assert abs(meeting.started_at - at) < 1e-6
    assert await store.get_meeting(meeting.id) == meeting
    message = await store.add_chat(meeting.id, "p1", "Ann", "hi", at)
    assert await store.chat(meeting.id) == [message]


async def test_two_stores_on_one_database_write_at_the_same_time(url: str) -> None:
    server, command_line = Store.open(url), Store.open(url)
    try:
        meeting = await _meeting(server)
        await asyncio.gather(
            *(server.add_chat(meeting.id, "p1", "Ann", f"s{i}", T0 + i) for i in range(20)),
            *(command_line.create_room(f"room {i}") for i in range(20)),
            *(command_line.record_join(meeting.id, f"p{i}", "X", "host", T0) for i in range(20)),
        )
        assert len(await command_line.chat(meeting.id)) == 20
        assert len(await server.list_rooms()) == 21
        assert await server.close_open_attendance(T0 + 1) == 20
    finally:
        server.close()
        command_line.close()


async def test_closed_store_refuses_work_and_closing_again_is_harmless(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="store is closed"):
        await store.list_rooms()


def test_migrations_describe_the_same_schema_as_the_models(url: str) -> None:
    Store.open(url).close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_opening_twice_migrates_once_and_keeps_the_version(url: str) -> None:
    Store.open(url).close()
    Store.open(url).close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            newest = max(p.stem.split("_")[0] for p in (MIGRATIONS / "versions").glob("0*.py"))
            assert MigrationContext.configure(conn).get_current_revision() == newest
    finally:
        engine.dispose()


def test_sqlite_store_is_created_with_its_directory_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "townhall.sqlite3"
    Store.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_sqlite_is_refused_because_nothing_would_survive() -> None:
    with pytest.raises(BadRequest, match="in-memory"):
        Store.open("sqlite://")


async def test_room_settings_default_to_six_speakers_and_captions_off_and_survive_reopening(
    url: str,
) -> None:
    store = Store.open(url)
    room = await store.create_room("settings")
    assert (room.last_n, room.captions) == (6, False)
    await store.set_last_n(room.id, 9)
    await store.set_captions(room.id, True)
    with pytest.raises(BadRequest, match="last_n must be between 1 and 40"):
        await store.set_last_n(room.id, 0)
    store.close()
    reopened = Store.open(url)
    room = await reopened.get_room(room.id)
    assert (room.last_n, room.captions) == (9, True)
    reopened.close()


# -- captions ----------------------------------------------------------------------------


async def test_final_captions_come_back_in_the_order_they_were_spoken_with_translations(
    store: Store,
) -> None:
    meeting = await _meeting(store)
    other = await _meeting(store, "Other")
    later, created = await store.add_caption(
        meeting.id, "p2", "Борис", "w-2", T0 + 5.25, T0 + 7.5, "ru", "Добрый день",
        {"en": "Good afternoon", "uk": "Добрий день"},
    )  # fmt: skip
    assert created
    await store.add_caption(other.id, "p9", "Zoe", "w-1", T0, T0 + 1, "en", "elsewhere", {})
    earlier, _ = await store.add_caption(
        meeting.id, "p1", "Ann", "w-1", T0 + 1, T0 + 2.5, "en", "Hello <everyone> & all", {}
    )
    assert later == CaptionRecord(
        later.id, meeting.id, "p2", "Борис", "w-2", T0 + 5.25, T0 + 7.5, "ru", "Добрый день",
        {"en": "Good afternoon", "uk": "Добрий день"},
    )  # fmt: skip
    assert await store.captions(meeting.id) == [earlier, later]


async def test_a_resent_final_caption_is_stored_once_and_the_first_one_is_kept(
    store: Store,
) -> None:
    meeting = await _meeting(store)
    first, created = await store.add_caption(
        meeting.id, "p1", "Ann", "u-7", T0, T0 + 1, "en", "first", {}
    )
    again, created_again = await store.add_caption(
        meeting.id, "p1", "Ann", "u-7", T0, T0 + 1.2, "en", "resent", {"ru": "снова"}
    )
    assert (created, created_again) == (True, False)
    assert again == first
    _, created_other = await store.add_caption(
        meeting.id, "p2", "Boris", "u-7", T0, T0 + 1, "en", "same id, other speaker", {}
    )
    assert created_other
    assert [c.text for c in await store.captions(meeting.id)] == [
        "first", "same id, other speaker"
    ]


async def test_the_same_utterance_stored_at_once_from_two_stores_is_kept_once(url: str) -> None:
    one, two = Store.open(url), Store.open(url)
    try:
        meeting = await _meeting(one)
        results = await asyncio.gather(*(
            store.add_caption(meeting.id, "p1", "Ann", "u-1", T0, T0 + 1, "en", "hi", {})
            for store in (one, two, one, two)
        ))
        assert sorted(created for _, created in results) == [False, False, False, True]
        assert len({record.id for record, _ in results}) == 1
        assert len(await two.captions(meeting.id)) == 1
    finally:
        one.close()
        two.close()


async def test_captions_of_an_unknown_meeting_are_not_found(store: Store) -> None:
    missing = uuid.uuid4().hex
    with pytest.raises(NotFound, match=r"^unknown meeting$"):
        await store.add_caption(missing, "p1", "Ann", "u", T0, T0 + 1, "en", "hi", {})
    with pytest.raises(NotFound, match=r"^unknown meeting$"):
        await store.captions(missing)


async def test_captions_survive_reopening_and_go_with_their_room(url: str) -> None:
    store = Store.open(url)
    meeting = await _meeting(store)
    caption, _ = await store.add_caption(
        meeting.id, "p1", "Ann", "u-1", T0, T0 + 1, "uk", "Привіт", {"en": "Hi"}
    )
    store.close()
    store = Store.open(url)
    try:
        assert await store.captions(meeting.id) == [caption]
        await store.delete_room(meeting.room_id)
    finally:
        store.close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM captions")).scalar_one() == 0
    finally:
        engine.dispose()
